"""`medsemi data example KIND PATH`: small nnU-Net folders to follow docs/how-to/own-data.md with, as files.

- png: OCT-like 2D B-scans, grey 8-bit PNG. Each subject's scan is cut into side-by-side patches (several
  cases per patient, listed case by case in `patients`), with a known up direction: dark vitreous on top, a
  bright layer, a grey one, a darker one below, boundaries wavy left to right. The pixel size is declared
  (`spacing` in micrometres), as a PNG cannot store it.
- nifti: 3D volumes (the LA-like blobs of medsemi.data.synthetic) of different sizes, one spacing, written
  with a rotated, offset affine, one case per patient.

Both hold annotated training cases, unannotated ones (imagesUnlabeled/) and annotated test cases. Every
subject is drawn from its own generator seeded by (seed, role, index), like the synthetic datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from medsemi.data.cases import DataError
from medsemi.data.nnunet import FOLDERS
from medsemi.data.synthetic import ROLE_CODES, blob_volume, smooth_field

PNG_SUBJECTS = {"train": 8, "unlabeled": 4, "test": 2}
PNG_PATCHES, PNG_SIZE = 4, 64
PNG_SPACING_UM = [3.9, 11.7]
"""Rows (axial) x columns (lateral) of a typical spectral-domain OCT B-scan, in micrometres."""
LAYERS = {"vitreous": 0.08, "upper": 0.85, "middle": 0.45, "lower": 0.25}
NIFTI_CASES = {"train": 6, "unlabeled": 4, "test": 2}
NIFTI_SPACING = (0.8, 0.8, 2.0)


def _empty_folder(root: Path) -> Path:
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not an empty folder; the example is written into a new one")
    root.mkdir(parents=True, exist_ok=True)
    return root


def oct_scan(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A B-scan (H, W) float in [0, 1] and its layer label: class k from the k-th boundary down, boundaries
    at smoothly varying depths, speckle-like noise; the top is always the dark vitreous."""
    depths = np.sort(rng.uniform([0.2, 0.35, 0.55], [0.3, 0.5, 0.7]))
    rows = np.arange(height, dtype=np.float32)[:, None]
    label = np.zeros((height, width), dtype=np.uint8)
    for k, depth in enumerate(depths, start=1):
        boundary = height * (depth + 0.06 * smooth_field(rng, (width,)))
        label[rows >= boundary[None, :]] = k
    means = np.array(list(LAYERS.values()), dtype=np.float32) + rng.uniform(-0.04, 0.04, len(LAYERS))
    image = ndimage.gaussian_filter(means[label], 0.8) * rng.gamma(8.0, 1 / 8.0, (height, width))
    return np.clip(image, 0, 1).astype(np.float32), label


def write_png_example(root: Path | str, seed: int = 0) -> Path:
    """The png example (module doc) in `root`, which must be new or empty."""
    root = _empty_folder(Path(root))
    patients = {}
    for role, count in PNG_SUBJECTS.items():
        images, labels = FOLDERS[role]
        for index in range(count):
            subject = f"{role}{index:02d}"
            rng = np.random.default_rng([seed, ROLE_CODES[role], index])
            scan, label = oct_scan(rng, PNG_SIZE, PNG_SIZE * PNG_PATCHES)
            for patch in range(PNG_PATCHES):
                case = f"{subject}_patch{patch}"
                patients[case] = subject
                columns = slice(patch * PNG_SIZE, (patch + 1) * PNG_SIZE)
                _save_png(root / images / f"{case}_0000.png", np.round(scan[:, columns] * 255).astype(np.uint8))
                if labels is not None:
                    _save_png(root / labels / f"{case}.png", label[:, columns])
    meta = {
        "name": "ExampleOCT",
        "labels": {name: k for k, name in enumerate(LAYERS)},
        "channel_names": {"0": "OCT"},
        "file_ending": ".png",
        "spacing": PNG_SPACING_UM,
        "spacing_unit": "um",
        "patients": patients,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_nifti_example(
    root: Path | str, seed: int = 0, spacings: list[tuple[float, float, float]] | None = None
) -> Path:
    """The nifti example (module doc) in `root`, which must be new or empty. `spacings`: one voxel size per
    case (training, unlabeled, test cases in that order) instead of NIFTI_SPACING for all."""
    root = _empty_folder(Path(root))
    total = sum(NIFTI_CASES.values())
    if spacings is not None and len(spacings) != total:
        raise DataError(f"the nifti example has {total} cases, got {len(spacings)} spacings")
    number = 0
    for role, count in NIFTI_CASES.items():
        images, labels = FOLDERS[role]
        for index in range(count):
            rng = np.random.default_rng([seed, ROLE_CODES[role], index])
            size = (int(rng.integers(36, 45)), int(rng.integers(36, 45)), int(rng.integers(18, 23)))
            image, label = blob_volume(rng, size)
            spacing = NIFTI_SPACING if spacings is None else spacings[number]
            affine = _affine(rng, spacing)
            case = f"case{number:02d}"
            number += 1
            (root / images).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(image, affine), root / images / f"{case}_0000.nii.gz")
            if labels is not None:
                (root / labels).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(label, affine), root / labels / f"{case}.nii.gz")
    meta = {"name": "ExampleBlobs", "labels": {"background": 0, "blob": 1}, "channel_names": {"0": "MRI"}}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii.gz"}, indent=1))
    return root


def _affine(rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel sizes `spacing`, a random rotation about z and a random origin: as scanners write them."""
    angle = rng.uniform(-0.3, 0.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


EXAMPLES = {"png": write_png_example, "nifti": write_nifti_example}
