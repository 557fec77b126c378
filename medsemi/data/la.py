"""LA (2018 Atrial Segmentation Challenge) in the UA-MT h5 layout: 3D volumes, binary labels.

    ROOT/train.list, test.list                             one case id per line (80 / 20)
    ROOT/2018LA_Seg_Training Set/<id>/mri_norm2.h5         image float32 (X, Y, Z), label {0, 1} (X, Y, Z)

The release stores no spacing; the challenge data are 0.625 mm isotropic, which is what `spacing` says.
There is no validation split: `val` is empty unless `val_from_train=k` moves the LAST k ids of train.list
into it (budgets take the first N ids, so the two never meet).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medsemi.data.cases import Case, Dataset, DatasetInfo
from medsemi.data.io import (
    ProblemLog,
    Source,
    carve_last_patients,
    checked_image,
    checked_label,
    checked_splits,
    existing_dir,
    limited,
    read_h5,
    read_list,
)
from medsemi.data.registry import register_dataset

CLASS_NAMES = ["background", "LA"]
SPLITS = ("train", "val", "test")
SPACING = (0.625, 0.625, 0.625)
VOLUMES = "2018LA_Seg_Training Set"
FILE = "mri_norm2.h5"


def read_case(path: Path, case_id: str) -> Case:
    arrays = read_h5(path)
    image = checked_image(path, arrays["image"], 3)
    label = checked_label(path, arrays["label"], image.shape, CLASS_NAMES)
    return Case(case_id, case_id, image[None], label, SPACING, source=path)


def _cases(root: Path, ids: list[str], log: ProblemLog) -> Iterator[Case]:
    for case_id in ids:
        case = log.attempt(read_case, root / VOLUMES / case_id / FILE, case_id)
        if case is not None:
            yield case


def scan(
    root: Path | None,
    log: ProblemLog,
    splits: tuple[str, ...] | list[str] = SPLITS,
    val_from_train: int = 0,
    limit: int | None = None,
) -> Source:
    root = existing_dir(root, "la")
    splits = checked_splits(splits, SPLITS, "la")
    train = log.attempt(read_list, root / "train.list") or []
    test = (log.attempt(read_list, root / "test.list") or []) if "test" in splits else []
    train, val = carve_last_patients(train, {case_id: case_id for case_id in train}, val_from_train)
    ids = {"train": train, "val": val, "test": test}
    info = DatasetInfo("la", list(CLASS_NAMES), spatial_dims=3, in_channels=1)
    return Source(info, {split: _cases(root, limited(ids[split], limit), log) for split in splits}, root)


@register_dataset("la")
def la(
    root: Path | None,
    splits: tuple[str, ...] | list[str] = SPLITS,
    val_from_train: int = 0,
    limit: int | None = None,
) -> Dataset:
    """`splits` loads only some of train/val/test (volumes are read only for those); `limit` reads only the
    first N ids of each split (quick tests; not the paper protocol)."""
    return scan(root, ProblemLog(), splits, val_from_train, limit).load()
