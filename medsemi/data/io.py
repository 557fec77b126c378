"""File-level reading and writing shared by every reader, so each file problem is reported one way.

A reader's `scan(root, log, ...)` returns a `Source` whose roles are lazy iterators of `Case`. Loading a
dataset drains them and fails on the first bad file; `medsemi data check` drains the same iterators with a
collecting `ProblemLog`, keeps no arrays, and so reports every bad file at once. One code path means "check
passes" and "loading succeeds" cannot disagree.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import h5py
import nibabel as nib
import numpy as np
from PIL import Image

from medsemi.data.cases import Case, DataError, DataFileError, Dataset, DatasetInfo

T = TypeVar("T")

ROLES = ("train", "val", "test", "unlabeled")
NIFTI_ENDINGS = (".nii.gz", ".nii")
RASTER_ENDINGS = (".png", ".tif", ".tiff")
AFFINE_TOLERANCE = 1e-4
SPACING_SPREAD = 0.01
"""3D voxel sizes that differ by more than 1 % on an axis are mixed spacings (header rounding is not)."""
INTENSITY_LIMIT = 1e10
"""No scanner writes larger values; their squares summed over a batch (variances, MSE losses) overflow
float32, so training would turn them into inf/NaN."""
COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "HSV", "LAB")  # PIL modes read as 3-channel RGB images
GREY_ALPHA_MODES = ("LA", "La", "PA")


class ProblemLog:
    """Where readers send per-file errors: raised at once when loading, collected when checking a folder."""

    def __init__(self, collect: bool = False) -> None:
        self.collect = collect
        self.errors: list[DataError] = []
        self.warnings: list[tuple[Path, str]] = []

    def report(self, error: DataError) -> None:
        if not self.collect:
            raise error
        self.errors.append(error)

    def warn(self, path: Path, message: str) -> None:
        """Something to say about the data that is not wrong in itself: kept for loading and checking."""
        self.warnings.append((Path(path), message))

    def attempt(self, function: Callable[..., T], *args: object) -> T | None:
        """`function(*args)`, or None after recording its DataError (collecting mode only)."""
        try:
            return function(*args)
        except DataError as error:
            self.report(error)
            return None


@dataclass
class Source:
    """A dataset folder before its pixels are read: info plus lazy cases per role (train/val/test/...), and
    the reader's warnings about the folder."""

    info: DatasetInfo
    roles: dict[str, Iterable[Case]] = field(default_factory=dict)
    root: Path | None = None
    warnings: list[tuple[Path, str]] = field(default_factory=list)

    def load(self) -> Dataset:
        """Every case, read; the first problem raised; the reader's and the cross-case warnings warned."""
        cases = {role: list(self.roles.get(role, ())) for role in ROLES}
        checks = CrossCaseChecks(self.info, self.root)
        for role, role_cases in cases.items():
            for case in role_cases:
                checks.add(role, case)
        for error in checks.problems():
            raise error
        for where, message in [*self.warnings, *checks.warnings()]:
            warnings.warn(f"{where}: {message}", stacklevel=2)
        return Dataset(info=self.info, root=self.root, **cases)


TRAINING_ROLES = ("train", "unlabeled")
EVALUATION_ROLES = ("val", "test")


@dataclass
class _Seen:
    """What the cross-case checks keep of a case: no arrays, only its names and its image's digest."""

    role: str
    case_id: str
    patient: str
    where: Path | str
    digest: str


class CrossCaseChecks:
    """What no single file shows, checked on a whole dataset: a case id in two roles, an evaluation (val/test)
    image identical to a training image, an evaluation case of a training patient (all three leak training
    data into the evaluation), and as warnings a declared class that occurs in no label (legitimate in a
    subset) and 3D volumes of different voxel spacings (medsemi does not resample). Fed one case at a time,
    so `medsemi data check` keeps no arrays."""

    def __init__(self, info: DatasetInfo, root: Path | None) -> None:
        self.info, self.root = info, root
        self.seen: list[_Seen] = []
        self.voxels = np.zeros(info.num_classes, dtype=np.int64)
        self.labeled = 0
        self.spacings: set[tuple[float, ...]] = set()

    def add(self, role: str, case: Case) -> None:
        image = np.ascontiguousarray(case.image)
        digest = hashlib.blake2b(f"{image.shape}{image.dtype.str}".encode(), digest_size=16)
        digest.update(image.data)
        where = case.source if case.source is not None else case.case_id
        self.seen.append(_Seen(role, case.case_id, case.patient, where, digest.hexdigest()))
        if case.spacing is not None and len(case.spacing) == 3:
            self.spacings.add(tuple(case.spacing))
        if case.label is not None:
            self.labeled += 1
            self.voxels += np.bincount(case.label.ravel(), minlength=self.info.num_classes)[: self.info.num_classes]

    def problems(self) -> list[DataError]:
        """One error per offending case, naming its file and the training case it repeats."""
        first_of_id: dict[str, _Seen] = {}
        training_images: dict[str, _Seen] = {}
        training_patients: dict[str, _Seen] = {}
        for item in self.seen:
            if item.role in TRAINING_ROLES:
                training_images.setdefault(item.digest, item)
                training_patients.setdefault(item.patient, item)
        errors: list[DataError] = []
        for item in self.seen:
            other = first_of_id.setdefault(item.case_id, item)
            if other.role != item.role:
                errors.append(
                    _file_error(item, f"case id {item.case_id!r} is also a {other.role} case ({other.where})")
                )
            elif item.role in EVALUATION_ROLES and item.digest in training_images:
                twin = training_images[item.digest]
                problem = f"{item.role} image is identical to {twin.role} case {twin.case_id!r} ({twin.where})"
                errors.append(_file_error(item, problem))
            elif item.role in EVALUATION_ROLES and item.patient in training_patients:
                twin = training_patients[item.patient]
                problem = (
                    f"{item.role} case {item.case_id!r} is of patient {item.patient!r}, who is also a {twin.role} "
                    f"patient (case {twin.case_id!r}): one patient must be in training or evaluation, not both"
                )
                errors.append(_file_error(item, problem))
        return errors

    def warnings(self) -> list[tuple[Path, str]]:
        """(folder, message) per declared class that no label holds (none when nothing is labeled), and one
        when 3D spacings differ by more than SPACING_SPREAD on an axis."""
        where = self.root if self.root is not None else Path(self.info.name)
        found = []
        if self.spacings:
            low, high = np.min(list(self.spacings), axis=0), np.max(list(self.spacings), axis=0)
            if (high > low * (1 + SPACING_SPREAD)).any():
                ranges = " x ".join(f"{a:.3g}..{b:.3g}" for a, b in zip(low, high, strict=True))
                found.append(
                    (
                        where,
                        f"the volumes have different voxel spacings ({ranges} mm): medsemi neither resamples nor "
                        "reorients, so a network sees one structure at different sizes in voxels; resample every "
                        "scan to one spacing first (docs/reference/dataset-format.md, 3D scans)",
                    )
                )
        if not self.labeled:
            return found
        return found + [
            (where, f"declared class {k} {name!r} occurs in no label of the {self.labeled} labeled cases")
            for k, name in enumerate(self.info.class_names)
            if self.voxels[k] == 0
        ]


def _file_error(item: _Seen, problem: str) -> DataError:
    return DataFileError(item.where, problem) if isinstance(item.where, Path) else DataError(f"{item.where}: {problem}")


def existing_dir(root: Path | str | None, dataset: str) -> Path:
    if root is None:
        raise DataError(f"dataset {dataset!r} needs a folder: set data.root")
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(root, f"dataset folder for {dataset!r} not found")
    return root


def checked_splits(splits: tuple[str, ...] | list[str], allowed: tuple[str, ...], dataset: str) -> tuple[str, ...]:
    unknown = sorted(set(splits) - set(allowed))
    if unknown:
        raise DataError(f"data.options.splits: unknown {dataset} splits {unknown}; choose from {list(allowed)}")
    return tuple(splits)


def read_list(path: Path) -> list[str]:
    """One id per line (SSL4MIS/UA-MT list files); blank lines ignored, duplicates rejected."""
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise DataFileError(path, f"cannot read list file ({error.strerror or error})") from error
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataFileError(path, f"duplicate entries {duplicates[:5]}")
    return names


def limited(items: list[T], limit: int | None) -> list[T]:
    """The first `limit` items (all when None): quick tests read a prefix of a list, never a sample of it."""
    if limit is not None and limit < 1:
        raise DataError(f"data.options.limit must be >= 1 or null, got {limit!r}")
    return items if limit is None else items[:limit]


def carve_last_patients(ids: list[str], patient_of: dict[str, str], count: int) -> tuple[list[str], list[str]]:
    """Split ids into (kept, carved): carved = every id of the LAST `count` distinct patients, so a budget
    that takes the first N patients never meets the carved validation set (option `val_from_train`)."""
    patients = list(dict.fromkeys(patient_of[name] for name in ids))
    if isinstance(count, bool) or not isinstance(count, int) or not (count == 0 or 0 < count < len(patients)):
        raise DataError(
            f"data.options.val_from_train must be an integer in 0..{len(patients) - 1} "
            f"(there are {len(patients)} training patients), got {count!r}"
        )
    carved = set(patients[len(patients) - count :])
    return [name for name in ids if patient_of[name] not in carved], [
        name for name in ids if patient_of[name] in carved
    ]


def read_h5(path: Path, keys: tuple[str, ...] = ("image", "label")) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataFileError(path, "file not found")
    try:
        with h5py.File(path, "r") as file:
            missing = [key for key in keys if key not in file]
            if missing:
                raise DataFileError(path, f"no {missing} dataset in the HDF5 file (found: {sorted(file.keys())})")
            return {key: file[key][()] for key in keys}
    except OSError as error:
        raise DataFileError(path, f"unreadable or corrupt HDF5 file ({error})") from error


def checked_values(path: Path, image: np.ndarray) -> np.ndarray:
    """The image, if its values are finite and small enough that training's squares and sums stay finite."""
    if not np.isfinite(image).all():
        raise DataFileError(path, "image contains NaN or infinite values")
    peak = float(np.abs(image).max()) if image.size else 0.0
    if peak > INTENSITY_LIMIT:
        raise DataFileError(
            path,
            f"image intensities reach {peak:.3g}, beyond +-{INTENSITY_LIMIT:g}: training would overflow to "
            "inf/NaN; rescale the image",
        )
    return image


def checked_image(path: Path, image: np.ndarray, spatial_dims: int) -> np.ndarray:
    """float32 with `spatial_dims` axes and finite, bounded values."""
    if image.ndim != spatial_dims:
        raise DataFileError(path, f"expected a {spatial_dims}D image, got shape {image.shape}")
    return checked_values(path, np.asarray(image, dtype=np.float32))


def checked_label(path: Path, label: np.ndarray, spatial_shape: tuple[int, ...], class_names: list[str]) -> np.ndarray:
    """A class map of the image's spatial shape, values in 0..K-1, as uint8 (int64 past 256 classes)."""
    if tuple(label.shape) != tuple(spatial_shape):
        raise DataFileError(path, f"label shape {tuple(label.shape)} differs from image shape {tuple(spatial_shape)}")
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            raise DataFileError(path, "label holds non-integer values")
    elif label.dtype.kind not in "iu":
        raise DataFileError(path, f"label has non-numeric dtype {label.dtype}")
    num_classes = len(class_names)
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        bad_values = [int(value) for value in bad[:10]]
        hint = " (masks must hold class indices, not 0/255)" if 255 in bad_values else ""
        raise DataFileError(
            path,
            f"label values {bad_values} are outside the declared classes 0..{num_classes - 1} "
            f"({', '.join(class_names)}){hint}",
        )
    return label.astype(np.uint8 if num_classes <= 256 else np.int64, copy=False)


def has_ending(path: Path | str, endings: tuple[str, ...]) -> bool:
    return str(path).lower().endswith(endings)


@dataclass
class Raw:
    """One image or label file as stored (file axis order): images (C, *spatial), labels (*spatial); geometry
    (spacing in mm, 4x4 affine) when the format has it, else no spacing (unknown) and no affine."""

    array: np.ndarray
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None


def read_nifti(path: Path, label: bool = False) -> Raw:
    """Voxel array in the file's axis order (no reorientation), zooms as spacing; a singleton 3rd axis
    makes it 2D. Images get a leading channel axis (one file per channel), labels do not."""
    if not path.is_file():
        raise DataFileError(path, "file not found")
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj) if label else image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise DataFileError(path, f"unreadable or corrupt NIfTI file ({error})") from error
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        raise DataFileError(path, f"expected a 2D or 3D NIfTI (one file per channel), got shape {array.shape}")
    zooms = tuple(float(zoom) for zoom in _stored_pixdim(path, image)[: array.ndim])
    if not all(np.isfinite(zoom) and zoom > 0 for zoom in zooms):
        raise DataFileError(path, f"voxel size (header pixdim) {zooms} must be positive; fix the header")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or np.linalg.matrix_rank(affine[:3, : array.ndim]) < array.ndim:
        raise DataFileError(path, "the header's affine is singular (e.g. all zero): voxels have no position in space")
    return Raw(array if label else array[None], zooms, affine)


def _stored_pixdim(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    """The voxel sizes as the file stores them: nibabel's loaded header silently turns 0 into 1 and drops signs."""
    with nib.openers.ImageOpener(path) as handle:
        header = type(image.header).from_fileobj(handle, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


def read_raster(path: Path, label: bool = False) -> Raw:
    """PNG/TIFF. Images: (C, H, W) float32, 8-bit / 16-bit integers scaled to [0, 1], RGBA and palette -> RGB.
    Labels: (H, W) single-channel class indices (palette PNGs give their indices)."""
    if not path.is_file():
        raise DataFileError(path, "file not found")
    try:
        with Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                raise DataFileError(path, "multi-page images are not supported (use NIfTI for volumes)")
            if not label and opened.mode in COLOUR_MODES + GREY_ALPHA_MODES:
                opened = opened.convert("L" if opened.mode in GREY_ALPHA_MODES else "RGB")
            array = np.asarray(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataFileError(path, f"unreadable or corrupt image file ({error})") from error
    if label:
        if array.ndim != 2:
            raise DataFileError(
                path, f"a label must be a single-channel image of class indices, got shape {array.shape}"
            )
        return Raw(array, None, None)
    if array.dtype.kind in "ui":
        scale = {1: 255.0, 2: 65535.0}.get(array.dtype.itemsize, 1.0)
        array = array.astype(np.float32) / scale
    array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    return Raw(np.ascontiguousarray(array, dtype=np.float32), None, None)


def read_file(path: Path, label: bool = False) -> Raw:
    if has_ending(path, NIFTI_ENDINGS):
        return read_nifti(path, label)
    if has_ending(path, RASTER_ENDINGS):
        return read_raster(path, label)
    raise DataFileError(path, f"unsupported file type (supported: {', '.join(NIFTI_ENDINGS + RASTER_ENDINGS)})")


def read_channels(paths: list[Path]) -> Raw:
    """Stack one file per channel (or one RGB file) into (C, *spatial); all must share shape and geometry."""
    first = read_file(paths[0])
    arrays = [first.array]
    for path in paths[1:]:
        raw = read_file(path)
        if raw.array.shape[1:] != first.array.shape[1:]:
            raise DataFileError(
                path, f"shape {raw.array.shape[1:]} differs from {paths[0].name}'s {first.array.shape[1:]}"
            )
        if not same_geometry(first, raw):
            raise DataFileError(path, f"spacing/affine differ from {paths[0].name}'s")
        arrays.append(raw.array)
    image = np.concatenate(arrays) if len(arrays) > 1 else first.array
    return Raw(checked_values(paths[0], image), first.spacing, first.affine)


def same_geometry(a: Raw, b: Raw) -> bool:
    if a.affine is None or b.affine is None:
        return a.affine is None and b.affine is None
    return bool(np.allclose(a.affine, b.affine, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE)) and bool(
        np.allclose(a.spacing, b.spacing, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE)
    )


def load_image(paths: Path | list[Path], case_id: str | None = None) -> Case:
    """An unlabeled Case from standalone files (one per channel, or one RGB file): `medsemi predict`."""
    paths = [Path(path) for path in ([paths] if isinstance(paths, str | Path) else paths)]
    raw = read_channels(paths)
    case_id = case_id or strip_ending(paths[0].name)
    return Case(case_id, case_id, raw.array, None, raw.spacing, raw.affine, source=paths[0])


def strip_ending(name: str) -> str:
    for ending in NIFTI_ENDINGS + RASTER_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def write_prediction(case: Case, labels: np.ndarray, path: Path | str) -> Path:
    """Write a label map in the case's own grid: NIfTI with the case's affine (and the source file's
    qform/sform codes and units) or PNG/TIFF; the extension of `path` picks the format."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != case.spatial_shape:
        raise ValueError(f"prediction shape {labels.shape} differs from case {case.case_id}'s {case.spatial_shape}")
    dtype = np.uint8 if labels.size == 0 or labels.max() < 256 else np.int16
    path.parent.mkdir(parents=True, exist_ok=True)
    if has_ending(path, RASTER_ENDINGS):
        if labels.ndim != 2 or dtype is not np.uint8:
            raise ValueError(f"{path}: PNG/TIFF masks must be 2D with fewer than 256 classes")
        Image.fromarray(labels.astype(np.uint8)).save(path)
        return path
    if not has_ending(path, NIFTI_ENDINGS):
        raise ValueError(f"{path}: write .nii.gz, .nii, .png or .tif")
    source = nib.load(case.source) if case.source is not None and has_ending(case.source, NIFTI_ENDINGS) else None
    data = labels.astype(dtype)
    if source is not None and len(source.shape) == 3 and data.ndim == 2:
        data = data[:, :, None]
    spacing = case.spacing or (1.0,) * labels.ndim
    affine = case.affine if case.affine is not None else np.diag([*spacing, *[1.0] * (4 - len(spacing))])
    image = nib.Nifti1Image(data, affine)
    codes = (0, 0) if source is None else (int(source.header["qform_code"]), int(source.header["sform_code"]))
    if any(codes):
        image.set_qform(affine, code=codes[0])
        image.set_sform(affine, code=codes[1])
        image.header.set_xyzt_units(*source.header.get_xyzt_units())
    nib.save(image, path)
    return path
