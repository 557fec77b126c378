"""Bring-your-own data: an nnU-Net-v2-style folder, plus `imagesUnlabeled/` for the scans nobody annotated.

    ROOT/dataset.json                 labels {name: int}, channel_names {"0": name, ...}, file_ending
                                      (optional: patients {case: patient}, name; PNG/TIFF: spacing,
                                      spacing_unit)
    ROOT/imagesTr/<case>_0000<ext>    one file per channel (_0001, ... for more); RGB PNG/TIFF is one file
    ROOT/labelsTr/<case><ext>         integer class map, same grid as the image
    ROOT/imagesUnlabeled/<case>_0000<ext>   optional: unannotated scans (the unlabeled pool)
    ROOT/imagesTs/ + labelsTs/        optional: annotated test cases (imagesTs alone is not loaded)

Arrays keep the file's axis order (NIfTI: X, Y, Z; no reorientation), channels first; spacing and affine come
from the NIfTI header, so `write_prediction` puts a mask back exactly on the input grid. A NIfTI whose third
axis has length 1 is a 2D image. PNG/TIFF images become (C, H, W) float32 in [0, 1] with no affine, and the
spacing dataset.json declares (converted to mm), or none: unknown, so no millimetre metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
from PIL import Image

from medsemi.data.cases import Case, Dataset, DatasetInfo
from medsemi.data.io import (
    COLOUR_MODES,
    NIFTI_ENDINGS,
    RASTER_ENDINGS,
    DataFileError,
    ProblemLog,
    Source,
    carve_last_patients,
    checked_label,
    existing_dir,
    has_ending,
    read_channels,
    read_file,
    same_geometry,
)
from medsemi.data.registry import register_dataset

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
FOLDERS = {
    "train": ("imagesTr", "labelsTr"),
    "test": ("imagesTs", "labelsTs"),
    "unlabeled": ("imagesUnlabeled", None),
}


SPACING_UNITS = {"mm": 1.0, "um": 1e-3, "µm": 1e-3, "cm": 10.0}
"""dataset.json `spacing_unit`s, as millimetres per unit (spacing is kept in mm)."""


@dataclass
class Meta:
    """What dataset.json says; `spacing` (PNG/TIFF only) in mm."""

    name: str
    class_names: list[str]
    channel_names: list[str]
    ending: str
    patients: dict[str, str] = field(default_factory=dict)
    spacing: tuple[float, ...] | None = None


def read_meta(path: Path) -> Meta:
    try:
        meta = json.loads(path.read_text())
    except OSError as error:
        raise DataFileError(path, f"cannot read dataset.json ({error.strerror or error})") from error
    except json.JSONDecodeError as error:
        raise DataFileError(path, f"invalid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise DataFileError(path, "dataset.json must hold a JSON object")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataFileError(path, 'missing "labels": {"background": 0, "<class>": 1, ...}')
    if any(isinstance(value, bool) or not isinstance(value, int) for value in labels.values()):
        raise DataFileError(path, "labels must map names to single integers (region-based labels are not supported)")
    if "ignore" in labels:
        raise DataFileError(path, 'the nnU-Net "ignore" label is not supported')
    if sorted(labels.values()) != list(range(len(labels))) or len(labels) < 2:
        raise DataFileError(path, f"label values must be consecutive 0..K-1 with K >= 2, got {sorted(labels.values())}")
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataFileError(path, 'missing "channel_names": {"0": "<name>", ...}')
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS + RASTER_ENDINGS:
        raise DataFileError(path, f"file_ending {ending!r} not supported; use one of {NIFTI_ENDINGS + RASTER_ENDINGS}")
    patients = meta.get("patients", {})
    if not isinstance(patients, dict):
        raise DataFileError(path, 'patients must map case ids to patient ids: {"<case>": "<patient>"}')
    return Meta(
        name=str(meta.get("name", path.parent.name)),
        class_names=[name for name, _ in sorted(labels.items(), key=lambda item: item[1])],
        channel_names=[str(channels[key]) for key in sorted(channels, key=int)],
        ending=ending,
        patients={str(case): str(patient) for case, patient in patients.items()},
        spacing=_declared_spacing(path, meta, ending),
    )


def _declared_spacing(path: Path, meta: dict, ending: str) -> tuple[float, ...] | None:
    """PNG/TIFF pixel size from `spacing` [rows, columns] and `spacing_unit` (mm, um, cm; default mm), in mm.
    NIfTI files carry their own in the header, so declaring one there is refused rather than ignored."""
    if "spacing" not in meta:
        if "spacing_unit" in meta:
            raise DataFileError(path, "spacing_unit without spacing: declare the pixel size, e.g. [0.01, 0.01]")
        return None
    if ending in NIFTI_ENDINGS:
        raise DataFileError(path, "spacing is for PNG/TIFF data; NIfTI files keep their voxel size in the header")
    spacing, unit = meta["spacing"], meta.get("spacing_unit", "mm")
    valid = isinstance(spacing, list) and len(spacing) == 2
    if not valid or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in spacing):
        raise DataFileError(path, f"spacing must be two positive numbers [rows, columns], got {spacing!r}")
    if unit not in SPACING_UNITS:
        raise DataFileError(path, f"spacing_unit {unit!r} is not one of {', '.join(SPACING_UNITS)}")
    return tuple(float(v) * SPACING_UNITS[unit] for v in spacing)


def case_ids(folder: Path, meta: Meta, log: ProblemLog) -> list[str]:
    """Cases of an images folder, sorted: the ids of the `_0000` files; misnamed image files are problems."""
    ids = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if not has_ending(name, NIFTI_ENDINGS + RASTER_ENDINGS):
            continue
        match = CHANNEL_FILE.match(name[: -len(meta.ending)]) if name.endswith(meta.ending) else None
        if match is None:
            problem = f"not named <case>_<4-digit channel>{meta.ending} (the dataset.json file_ending)"
            log.report(DataFileError(path, problem))
        elif match["channel"] == "0000":
            ids.append(match["case"])
    return ids


def _probe(path: Path, meta: Meta) -> tuple[int, int, int]:
    """(files per case, channels, spatial dims) from one `_0000` file's header, without reading its pixels."""
    n = len(meta.channel_names)
    try:
        if has_ending(path, NIFTI_ENDINGS):
            shape = nib.load(path).shape
            return n, n, 2 if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1) else len(shape)
        with Image.open(path) as image:
            rgb = image.mode in COLOUR_MODES
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise DataFileError(path, f"unreadable image file ({error})") from error
    if rgb and n not in (1, 3):
        raise DataFileError(path, f"is an RGB image but dataset.json lists {n} channels (use 3, or one 'RGB')")
    return (1, 3, 2) if rgb else (n, n, 2)


def read_case(
    image_paths: list[Path],
    label_path: Path | None,
    case_id: str,
    patient: str,
    info: DatasetInfo,
    declared_spacing: tuple[float, ...] | None = None,
) -> Case:
    """One case; `declared_spacing` stands for the spacing a PNG/TIFF file cannot store."""
    missing = [path for path in image_paths if not path.is_file()]
    if missing:
        raise DataFileError(missing[0], f"missing channel file of case {case_id!r} (dataset.json lists the channels)")
    image = read_channels(image_paths)
    channels, dims = image.array.shape[0], image.array.ndim - 1
    if (channels, dims) != (info.in_channels, info.spatial_dims):
        raise DataFileError(
            image_paths[0],
            f"image is {dims}D with {channels} channel(s) but the first training case is "
            f"{info.spatial_dims}D with {info.in_channels}",
        )
    label = None
    if label_path is not None:
        if not label_path.is_file():
            raise DataFileError(label_path, f"missing label file for image {image_paths[0].name}")
        raw = read_file(label_path, label=True)
        label = checked_label(label_path, raw.array, image.array.shape[1:], info.class_names)
        if not same_geometry(raw, image):
            raise DataFileError(
                label_path,
                f"spacing/affine differ from the image's (label spacing {raw.spacing}, image {image.spacing})",
            )
    spacing = image.spacing if image.spacing is not None else declared_spacing
    return Case(case_id, patient, image.array, label, spacing, image.affine, source=image_paths[0])


def _cases(
    images: Path,
    labels: Path | None,
    ids: list[str],
    meta: Meta,
    files: int,
    info: DatasetInfo,
    log: ProblemLog,
) -> Iterator[Case]:
    for case_id in ids:
        paths = [images / f"{case_id}_{channel:04d}{meta.ending}" for channel in range(files)]
        label_path = labels / f"{case_id}{meta.ending}" if labels is not None else None
        patient = meta.patients.get(case_id, case_id)
        case = log.attempt(read_case, paths, label_path, case_id, patient, info, meta.spacing)
        if case is not None:
            yield case


def _check_patients(path: Path, meta: Meta, cases: list[str], log: ProblemLog) -> None:
    """`patients` maps case ids exactly: an entry that names no case (a pattern, a prefix, a typo) is a
    problem, and a case left out, once some are listed, is warned about: it becomes a patient of its own, so
    a budget or val_from_train could put it on the other side from its siblings."""
    if not meta.patients:
        return
    known = set(cases)
    strangers = sorted(set(meta.patients) - known)
    if strangers:
        problem = (
            f"patients names {len(strangers)} id(s) that are no case, e.g. {strangers[:3]}: list every case id "
            "exactly (no patterns or prefixes)"
        )
        log.report(DataFileError(path, problem))
    missing = [case for case in cases if case not in meta.patients]
    if missing:
        log.warn(path, f"patients leaves out {len(missing)} case(s), e.g. {missing[:3]}: each is its own patient")


def scan(root: Path | None, log: ProblemLog, val_from_train: int = 0) -> Source:
    root = existing_dir(root, "nnunet")
    meta = read_meta(root / "dataset.json")
    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    for folder in (images_tr, labels_tr):
        if not folder.is_dir():
            raise DataFileError(folder, "folder not found (an nnU-Net folder has imagesTr/ and labelsTr/)")
    ids = {}
    for role, (images, labels) in FOLDERS.items():
        present = (root / images).is_dir() and (labels is None or (root / labels).is_dir())
        ids[role] = case_ids(root / images, meta, log) if present else []
    if not ids["train"]:
        raise DataFileError(images_tr, f"no training images named <case>_0000{meta.ending}")
    for role in ("train", "test"):  # a label whose image is missing would be dropped without a word
        images, labels = FOLDERS[role]
        known = set(ids[role])
        for path in sorted((root / labels).iterdir()) if (root / labels).is_dir() else []:
            if path.name.endswith(meta.ending) and path.name[: -len(meta.ending)] not in known:
                problem = f"label without an image (expected {images}/<case>_0000{meta.ending})"
                log.report(DataFileError(path, problem))
    _check_patients(root / "dataset.json", meta, [name for names in ids.values() for name in names], log)
    files, channels, dims = _probe(images_tr / f"{ids['train'][0]}_0000{meta.ending}", meta)
    info = DatasetInfo(meta.name, meta.class_names, spatial_dims=dims, in_channels=channels)
    patient_of = {case_id: meta.patients.get(case_id, case_id) for case_id in ids["train"]}
    ids["train"], ids["val"] = carve_last_patients(ids["train"], patient_of, val_from_train)
    folders = {**FOLDERS, "val": FOLDERS["train"]}
    roles = {
        role: _cases(root / images, root / labels if labels else None, ids[role], meta, files, info, log)
        for role, (images, labels) in folders.items()
    }
    return Source(info, roles, root, log.warnings)


@register_dataset("nnunet")
def nnunet(root: Path | None, val_from_train: int = 0) -> Dataset:
    """`val_from_train=k` moves the cases of the LAST k training patients (sorted case order) into `val`."""
    return scan(root, ProblemLog(), val_from_train).load()
