"""ACDC in the SSL4MIS h5 layout: 2D training slices, whole validation/test volumes.

    ROOT/train_slices.list, val.list, test.list      one name per line
    ROOT/data/slices/<patient>_<frame>_slice_<k>.h5   image float32 (H, W), label (H, W)          (train)
    ROOT/data/<patient>_<frame>.h5                    image float32 (D, H, W), label (D, H, W)    (val, test)

Training cases keep `train_slices.list` order (the label budget takes the first N patients of it); both frames
of a patient share `patient`. The release stores no spacing, so spacing is 1.0 per axis (metrics in voxels).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medsemi.data.cases import Case, Dataset, DatasetInfo
from medsemi.data.io import (
    ProblemLog,
    Source,
    checked_image,
    checked_label,
    checked_splits,
    existing_dir,
    limited,
    read_h5,
    read_list,
)
from medsemi.data.registry import register_dataset

CLASS_NAMES = ["background", "RV", "Myo", "LV"]
SPLITS = ("train", "val", "test")
LISTS = {"train": "train_slices.list", "val": "val.list", "test": "test.list"}


def patient_of(name: str) -> str:
    """`patient099_frame01_slice_15` -> `patient099`."""
    return name.split("_")[0]


def read_case(path: Path, name: str, spatial_dims: int) -> Case:
    arrays = read_h5(path)
    image = checked_image(path, arrays["image"], spatial_dims)
    label = checked_label(path, arrays["label"], image.shape, CLASS_NAMES)
    return Case(name, patient_of(name), image[None], label, (1.0,) * spatial_dims, source=path)


def _cases(root: Path, split: str, log: ProblemLog, limit: int | None) -> Iterator[Case]:
    list_path = root / LISTS[split]
    names = log.attempt(read_list, list_path)
    folder, spatial_dims = (root / "data" / "slices", 2) if split == "train" else (root / "data", 3)
    for name in limited(names or [], limit):
        case = log.attempt(read_case, folder / f"{name}.h5", name, spatial_dims)
        if case is not None:
            yield case


def scan(
    root: Path | None, log: ProblemLog, splits: tuple[str, ...] | list[str] = SPLITS, limit: int | None = None
) -> Source:
    root = existing_dir(root, "acdc")
    splits = checked_splits(splits, SPLITS, "acdc")
    info = DatasetInfo("acdc", list(CLASS_NAMES), spatial_dims=2, in_channels=1)
    return Source(info, {split: _cases(root, split, log, limit) for split in splits}, root)


@register_dataset("acdc")
def acdc(root: Path | None, splits: tuple[str, ...] | list[str] = SPLITS, limit: int | None = None) -> Dataset:
    """`splits` loads only some of train/val/test; `limit` reads only the first N entries of each list (quick
    tests; not the paper protocol)."""
    return scan(root, ProblemLog(), splits, limit).load()
