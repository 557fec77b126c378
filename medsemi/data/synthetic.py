"""Synthetic phantoms, seeded: cardiac-like 2D short-axis stacks (4 classes) and 3D blobs (binary).

They run the whole pipeline in seconds (demo, unit tests) with the same shapes and roles as ACDC and LA;
they never stand in for a result on real data. Every patient is drawn from its own generator, seeded by
(seed, role, index), so a dataset is a pure function of its options and adding patients never changes the
existing ones.
Spacing is 1.0 per axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsemi.data.cases import Case, DataError, Dataset, DatasetInfo
from medsemi.data.registry import register_dataset

ROLE_CODES = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}
COUNT_OPTIONS = {
    "train": "n_train_patients",
    "val": "n_val",
    "test": "n_test",
    "unlabeled": "n_unlabeled_patients",
}
CARDIAC_CLASSES = ["background", "RV", "Myo", "LV"]
BLOB_CLASSES = ["background", "blob"]
Volume = tuple[np.ndarray, np.ndarray]


def smooth_field(rng: np.random.Generator, shape: Sequence[int], terms: int = 3) -> np.ndarray:
    """A smooth random field in [-1, 1]: a few low-frequency plane waves (bias fields, tissue texture)."""
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    field = np.zeros(tuple(shape), dtype=np.float32)
    for _ in range(terms):
        frequencies = rng.uniform(-1.5, 1.5, len(shape))
        phase = sum(f * axis for f, axis in zip(frequencies, axes, strict=True))
        field += np.cos(2 * np.pi * phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return field / terms


def _finish(
    rng: np.random.Generator,
    tissue: np.ndarray,
    blur: Sequence[float],
    bias_shape: Sequence[int],
    noise: float,
) -> np.ndarray:
    """Partial-volume blur, smooth multiplicative bias field (broadcast over `tissue`), Rician-like noise."""
    image = ndimage.gaussian_filter(tissue, blur)
    image *= np.exp(0.3 * smooth_field(rng, bias_shape))
    real = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def cardiac_stack(rng: np.random.Generator, size: Sequence[int], depth: int) -> Volume:
    """A short-axis stack from base to apex: LV cavity, myocardial ring with eccentric, wobbly walls, RV
    crescent wrapped on one side; everything shrinks towards the apex, where the RV vanishes.
    Image min-max scaled to [0, 1] per volume like ACDC, (D, H, W) float32; label (D, H, W) uint8."""
    height, width = size
    short = min(height, width)
    y, x = np.ogrid[0:height, 0:width]
    centre_y = height / 2 + rng.uniform(-0.08, 0.08) * height
    centre_x = width / 2 + rng.uniform(-0.08, 0.08) * width
    lv_radius = rng.uniform(0.10, 0.15) * short
    outer = lv_radius * (1 + rng.uniform(0.35, 0.55))
    theta, ratio = rng.uniform(0, np.pi), rng.uniform(0.75, 1.0)
    dy, dx = (y - centre_y).astype(np.float32), (x - centre_x).astype(np.float32)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ratio
    wobble = 1 + rng.uniform(0.0, 0.12) * np.sin(rng.integers(2, 4) * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt(u * u + v * v) / wobble
    z = np.linspace(0.0, 1.0, depth, dtype=np.float32)[:, None, None]
    shrink = 1 - 0.55 * z**1.5
    lv = rho < lv_radius * shrink
    heart = rho < outer * shrink
    direction = rng.uniform(0, 2 * np.pi)
    rv_scale = outer * shrink * (1 - 0.75 * z)
    offset = outer * shrink * 0.8
    cos, sin = np.cos(direction), np.sin(direction)
    rel_x, rel_y = dx - offset * cos, dy - offset * sin
    along, across = rel_x * cos + rel_y * sin, rel_y * cos - rel_x * sin
    thickness, length = rng.uniform(0.55, 0.75) * rv_scale, rng.uniform(1.3, 1.7) * rv_scale
    rv_shape = (along / thickness) ** 2 + (across / length) ** 2
    rv = (rv_shape < 1) & ~heart
    label = np.zeros(lv.shape, dtype=np.uint8)
    label[rv] = 1
    label[heart & ~lv] = 2
    label[lv] = 3
    body = (dy / (0.48 * height)) ** 2 + (dx / (0.48 * width)) ** 2 < 1
    means = np.array([0.25, 0.75, 0.3, 0.85], dtype=np.float32) + rng.uniform(-0.05, 0.05, 4).astype(np.float32)
    tissue = means[label] * body + 0.06 * smooth_field(rng, (height, width), terms=4) * body
    image = _finish(rng, tissue.astype(np.float32), (0, 0.8, 0.8), (height, width), noise=0.03)
    image = (image - image.min()) / (image.max() - image.min())
    return image.astype(np.float32), label


def blob_volume(rng: np.random.Generator, size: Sequence[int]) -> Volume:
    """An LA-like binary blob: a randomly rotated ellipsoid with a smooth angular deformation and two small
    attached lobes (veins). Image z-scored per volume like the UA-MT release, (X, Y, Z) float32."""
    shape = np.asarray(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij"), axis=-1)
    centre = shape / 2 + rng.uniform(-0.08, 0.08, 3) * shape
    radii = rng.uniform(0.18, 0.28, 3) * shape
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (grid - centre) @ rotation.astype(np.float32) / radii.astype(np.float32)
    distance = np.linalg.norm(local, axis=-1)
    unit = local / np.maximum(distance, 1e-6)[..., None]
    deformation = 1 + sum(
        rng.uniform(0.04, 0.1) * np.cos(unit @ rng.normal(0, 2.0, 3).astype(np.float32) + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    blob = distance < deformation
    for _ in range(2):
        direction = rng.normal(size=3)
        tip = centre + (direction / np.linalg.norm(direction)) @ rotation.T * radii
        blob |= np.linalg.norm((grid - tip) / (0.35 * radii), axis=-1) < 1
    label = blob.astype(np.uint8)
    tissue = np.where(blob, 0.8, 0.25).astype(np.float32) + 0.08 * smooth_field(rng, size, terms=4)
    image = _finish(rng, tissue, (1.0, 1.0, 1.0), size, noise=0.05)
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


def _generate(
    info: DatasetInfo, volume: Callable[[np.random.Generator], Volume], counts: dict[str, int], seed: int
) -> Dataset:
    """Each role's patients; 2D phantoms give one training case per slice and whole (1, D, H, W) volumes for
    val/test (as ACDC), 3D phantoms one case per volume. Unlabeled patients carry no label."""
    roles: dict[str, list[Case]] = {}
    for role, count in counts.items():
        minimum = 1 if role == "train" else 0
        if isinstance(count, bool) or not isinstance(count, int) or count < minimum:
            raise DataError(f"data.options.{COUNT_OPTIONS[role]} must be an integer >= {minimum}, got {count!r}")
        roles[role] = []
        for index in range(count):
            image, label = volume(np.random.default_rng([seed, ROLE_CODES[role], index]))
            patient = f"{role}{index:03d}"
            label = None if role == "unlabeled" else label
            if info.spatial_dims == 3 or role in ("val", "test"):
                roles[role].append(Case(patient, patient, image[None], label, (1.0,) * image.ndim))
                continue
            roles[role] += [
                Case(
                    f"{patient}_slice_{k}",
                    patient,
                    image[k][None],
                    None if label is None else label[k],
                    (1.0, 1.0),
                )
                for k in range(image.shape[0])
            ]
    return Dataset(info, **roles)


def _size(size: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if len(size) != spatial_dims or any(isinstance(n, bool) or not isinstance(n, int) or n < 16 for n in size):
        raise DataError(f"data.options.size must be {spatial_dims} integers >= 16, got {size!r}")
    return tuple(size)


@register_dataset("synthetic2d")
def synthetic2d(
    root: Path | None = None,
    n_train_patients: int = 10,
    n_val: int = 2,
    n_test: int = 2,
    n_unlabeled_patients: int = 0,
    size: Sequence[int] = (128, 128),
    depth: int = 8,
    seed: int = 0,
) -> Dataset:
    """ACDC-like: `depth` slices per patient (training cases are slices; val/test are (1, D, H, W) volumes).
    `root` is ignored."""
    size = _size(size, 2)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise DataError(f"data.options.depth must be an integer >= 1, got {depth!r}")
    info = DatasetInfo("synthetic2d", list(CARDIAC_CLASSES), spatial_dims=2, in_channels=1)
    counts = {"train": n_train_patients, "val": n_val, "test": n_test, "unlabeled": n_unlabeled_patients}
    return _generate(info, lambda rng: cardiac_stack(rng, size, depth), counts, seed)


@register_dataset("synthetic3d")
def synthetic3d(
    root: Path | None = None,
    n_train_patients: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    n_unlabeled_patients: int = 0,
    size: Sequence[int] = (64, 64, 48),
    seed: int = 0,
) -> Dataset:
    """LA-like: one (1, X, Y, Z) volume per patient. `root` is ignored."""
    size = _size(size, 3)
    info = DatasetInfo("synthetic3d", list(BLOB_CLASSES), spatial_dims=3, in_channels=1)
    counts = {"train": n_train_patients, "val": n_val, "test": n_test, "unlabeled": n_unlabeled_patients}
    return _generate(info, lambda rng: blob_volume(rng, size), counts, seed)
