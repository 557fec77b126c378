"""Batched, device-side augmentation: the reference recipes, and recipes composed in the config (`Recipe`,
`data.augment`), on whole batches of tensors.

The reference pipelines (SSL4MIS RandomGenerator, UA-MT RandomRotFlip/RandomCrop) augment one sample at a
time on CPU workers with scipy; the small networks then wait on data. Here every transform works on a
(B, C, *spatial) batch wherever it lives, and Python only draws the random parameters (from an explicit
`torch.Generator`, so a batch is reproducible) and groups samples by rot90 count (at most 4 groups).
`reference_acdc_sample` keeps the per-sample scipy path, to check that both give the same distribution and
for the throughput benchmark. A recipe also tells inference what training did: whether it cropped (sliding
window) or resized, and which axes it mirrored (the only test-time flips worth averaging).

Labels are (B, *spatial) integer maps and always move with nearest interpolation, so their values stay a
subset of the original classes.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

IDENTITY, ROT_FLIP, ROTATE = 0, 1, 2
"""The three branches of the ACDC recipe (values of `AcdcParams.branch`)."""

MAX_ANGLE = 20
"""SSL4MIS draws `np.random.randint(-20, 20)`: whole degrees in [-20, 20)."""


@lru_cache(maxsize=256)
def _zoom_index(n_in: int, n_out: int) -> Tensor:
    """Source index of each output position of scipy.ndimage.zoom(order=0) along one axis.

    scipy maps output k to input k * (n_in - 1) / (n_out - 1) (corners aligned) and rounds half up. For some
    size pairs float error puts the last coordinate just past n_in - 1 and scipy then writes its fill value 0
    into the last row; we clamp instead (no such pair for outputs 64, 128, 256 and inputs up to 400).
    """
    if n_out == 1 or n_in == n_out:
        return torch.arange(n_out) if n_in == n_out else torch.zeros(1, dtype=torch.long)
    coordinate = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
    return torch.floor(coordinate + 0.5).long().clamp_(max=n_in - 1)


def _nearest_resize(tensor: Tensor, size: Sequence[int], first_axis: int) -> Tensor:
    for axis, n_out in enumerate(size):
        dim = first_axis + axis
        if tensor.shape[dim] != n_out:
            tensor = tensor.index_select(dim, _zoom_index(tensor.shape[dim], n_out).to(tensor.device))
    return tensor


def resize(
    images: Tensor, labels: Tensor | None, size: Sequence[int], *, mode: str = "nearest"
) -> tuple[Tensor, Tensor | None]:
    """Resize (B, C, *spatial) images and (B, *spatial) labels to `size`.

    mode "nearest" is SSL4MIS's order-0 zoom for the image (exactly scipy's index map); "linear" is
    (bi/tri)linear with aligned corners, scipy's order-1 geometry. Labels are always nearest.
    """
    size = tuple(int(s) for s in size)
    if mode == "nearest":
        images = _nearest_resize(images, size, 2)
    elif mode == "linear":
        if tuple(images.shape[2:]) != size:
            kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
            images = F.interpolate(images, size=size, mode=kind, align_corners=True)
    else:
        raise ValueError(f"resize mode {mode!r} is not one of nearest, linear")
    return images, None if labels is None else _nearest_resize(labels, size, 1)


def _rot_flip_one(tensor: Tensor, k: Tensor, flip_axis: Tensor) -> Tensor:
    """rot90/flip of a (B, C, *spatial) tensor, grouped by k; odd k on a non-square plane resizes back."""
    if not bool(((k % 4) != 0).any() or (flip_axis >= 0).any()):
        return tensor
    out = tensor.clone()
    plane = tuple(tensor.shape[2:4])
    for turns in (1, 2, 3):
        index = torch.nonzero(k % 4 == turns).flatten().to(tensor.device)
        if index.numel():
            turned = torch.rot90(tensor.index_select(0, index), turns, dims=(2, 3))
            out.index_copy_(0, index, _nearest_resize(turned, plane, 2))
    for axis in (0, 1):
        index = torch.nonzero(flip_axis == axis).flatten().to(tensor.device)
        if index.numel():
            out.index_copy_(0, index, out.index_select(0, index).flip(2 + axis))
    return out


def rot_flip(images: Tensor, labels: Tensor | None, k: Tensor, flip_axis: Tensor) -> tuple[Tensor, Tensor | None]:
    """np.rot90(x, k[i]) in the first two spatial axes, then np.flip along spatial axis flip_axis[i].

    k and flip_axis are (B,) CPU integer tensors; flip_axis -1 means no flip. On a non-square plane an odd k
    is followed by a nearest resize back to the plane's shape, which is what the ACDC reference does (rotate,
    then zoom to the patch).
    """
    images = _rot_flip_one(images, k, flip_axis)
    if labels is not None:
        labels = _rot_flip_one(labels.unsqueeze(1), k, flip_axis).squeeze(1)
    return images, labels


def draw_rot_flip(n: int, generator: torch.Generator, *, square: bool = True) -> tuple[Tensor, Tensor]:
    """UA-MT RandomRotFlip parameters: k uniform in 0..3 (0 or 2 on a non-square plane, to keep the shape)
    and a flip along spatial axis 0 or 1, always applied."""
    k = torch.randint(0, 4, (n,), generator=generator)
    flip_axis = torch.randint(0, 2, (n,), generator=generator)
    return (k if square else k - k % 2), flip_axis


def la_augment(images: Tensor, labels: Tensor | None, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """UA-MT/BCP LA recipe on crops: rot90 by k in the (X, Y) plane, then a flip along X or Y.

    The reference rotates the whole volume before RandomCrop; a uniform crop followed by the rotation has the
    same distribution (the padding is symmetric and swaps with the axes). Also serves 2D crops (pathology).
    """
    square = images.shape[2] == images.shape[3]
    k, flip_axis = draw_rot_flip(images.shape[0], generator, square=square)
    return rot_flip(images, labels, k, flip_axis)


def rotate(
    images: Tensor,
    labels: Tensor | None,
    angles: Tensor,
    source_sizes: Tensor | None = None,
    scales: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """scipy.ndimage.rotate(x, angle, order=0, reshape=False) on a (B, C, H, W) batch (angles (B,) degrees).

    Rotation about the centre (n - 1) / 2 with nearest interpolation for image and label. Output pixels whose
    source position falls outside [0, n - 1] are 0, even where rounding would land inside, as scipy's
    mode="constant" does; the result equals scipy's up to float ties (~1e-5 of the pixels).
    source_sizes (B, 2): when the batch was resized from images of these (H, W), rotate as the reference
    does in the source frame (a rotation there is a rotation plus shear in the resized frame).
    scales (B,): also zoom about the centre by these factors (> 1 enlarges, < 1 shrinks and pads with 0).
    """
    batch, _, height, width = images.shape
    sizes = torch.tensor([[height, width]] * batch) if source_sizes is None else source_sizes
    radians = angles.to(torch.float64) * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    half_w = ((sizes[:, 1].to(torch.float64) - 1) / 2).clamp(min=0.5)
    half_h = ((sizes[:, 0].to(torch.float64) - 1) / 2).clamp(min=0.5)
    # Normalised (x, y) of the output -> normalised source position: M^-1 R M with M = diag(half_w, half_h).
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * half_h / half_w
    theta[:, 1, 0], theta[:, 1, 1] = sin * half_w / half_h, cos
    if scales is not None:
        theta /= scales.to(torch.float64).view(-1, 1, 1)
    grid = F.affine_grid(theta.to(images.device, torch.float32), [batch, 1, height, width], align_corners=True)
    stacked = images if labels is None else torch.cat([images, labels.unsqueeze(1).to(images.dtype)], 1)
    moved = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=True)
    moved = moved * (grid.abs() <= 1).all(-1).unsqueeze(1).to(moved.dtype)
    if labels is None:
        return moved, None
    return moved[:, :-1], moved[:, -1].round().to(labels.dtype)


@dataclass(frozen=True)
class AcdcParams:
    """Per-sample draws of the ACDC recipe, (B,) CPU tensors: branch (IDENTITY / ROT_FLIP / ROTATE), rot90
    count k and flip axis (-1 unless ROT_FLIP), angle in degrees (0 unless ROTATE)."""

    branch: Tensor
    k: Tensor
    flip_axis: Tensor
    angle: Tensor


def draw_acdc_params(n: int, generator: torch.Generator, *, published_era: bool = True) -> AcdcParams:
    """SSL4MIS RandomGenerator draws for n samples.

    published_era: `if u1 > 0.5: rot_flip elif u2 > 0.5: rotate` (the code behind the published numbers:
    50% rot-flip, 25% rotation, 25% untouched); False: SSL4MIS HEAD after PR #100 (June 2025), an exact
    50/50 rot-flip / rotate split. Angles are whole degrees in [-20, 20) as `np.random.randint(-20, 20)`.
    """
    u1 = torch.rand(n, generator=generator)
    k, flip_axis = draw_rot_flip(n, generator)
    u2 = torch.rand(n, generator=generator)
    angle = torch.randint(-MAX_ANGLE, MAX_ANGLE, (n,), generator=generator).to(torch.float32)
    otherwise = torch.full((n,), ROTATE) if not published_era else torch.where(u2 > 0.5, ROTATE, IDENTITY)
    branch = torch.where(u1 > 0.5, ROT_FLIP, otherwise)
    flips = branch == ROT_FLIP
    return AcdcParams(
        branch=branch,
        k=torch.where(flips, k, 0),
        flip_axis=torch.where(flips, flip_axis, -1),
        angle=torch.where(branch == ROTATE, angle, 0.0),
    )


def apply_acdc(
    images: Tensor, labels: Tensor | None, params: AcdcParams, source_sizes: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Apply drawn ACDC parameters to a (B, C, H, W) batch; see `rotate` for source_sizes."""
    images, labels = rot_flip(images, labels, params.k, params.flip_axis)
    index = torch.nonzero(params.branch == ROTATE).flatten()
    if index.numel() == 0:
        return images, labels
    sizes = None if source_sizes is None else source_sizes[index]
    on_device = index.to(images.device)
    turned, turned_labels = rotate(
        images.index_select(0, on_device),
        None if labels is None else labels.index_select(0, on_device),
        params.angle[index],
        sizes,
    )
    images = images.index_copy(0, on_device, turned)
    if labels is not None and turned_labels is not None:
        labels = labels.index_copy(0, on_device, turned_labels)
    return images, labels


def acdc_augment(
    images: Tensor,
    labels: Tensor | None,
    generator: torch.Generator,
    *,
    published_era: bool = True,
    source_sizes: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The SSL4MIS ACDC RandomGenerator on a batch already resized to the patch (see `draw_acdc_params`).

    The reference rotates the native slice and then zooms it to the patch; pass the native (H, W) as
    source_sizes to rotate in that frame. What remains different is the order of the two nearest
    resamplings (resize then rotate here), which moves a few boundary pixels by one.
    """
    params = draw_acdc_params(images.shape[0], generator, published_era=published_era)
    return apply_acdc(images, labels, params, source_sizes)


def crop_padding(shape: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """UA-MT RandomCrop padding per axis: when any axis is <= the patch, every axis gets
    max((patch - size) // 2 + 3, 0) zeros on both sides (so an axis just above the patch can grow too)."""
    if all(s > p for s, p in zip(shape, patch_size, strict=True)):
        return [0] * len(shape)
    return [max((p - s) // 2 + 3, 0) for s, p in zip(shape, patch_size, strict=True)]


def pad_for_crop(volume: Tensor, label: Tensor | None, patch_size: Sequence[int]) -> tuple[Tensor, Tensor | None]:
    """Zero-pad a (C, *spatial) volume and its (*spatial) label as UA-MT RandomCrop does (label pad 0)."""
    pads = crop_padding(volume.shape[1:], patch_size)
    if not any(pads):
        return volume, label
    spec = [amount for pad in reversed(pads) for amount in (pad, pad)]
    volume = F.pad(volume, spec)
    return volume, None if label is None else F.pad(label, spec)


def random_crop(
    volumes: list[Tensor], labels: list[Tensor] | None, patch_size: Sequence[int], generator: torch.Generator
) -> tuple[Tensor, Tensor | None]:
    """Uniform random patches of (C, *spatial) volumes of any sizes, stacked to (B, C, *patch).

    Pads first (`pad_for_crop`); the start on each axis is uniform in [0, size - patch), excluding the last
    position exactly as UA-MT's `np.random.randint(0, size - patch)`.
    """
    patch = tuple(int(p) for p in patch_size)
    starts = torch.rand(len(volumes), len(patch), generator=generator, dtype=torch.float64)
    crops, label_crops = [], []
    for i, volume in enumerate(volumes):
        label = None if labels is None else labels[i]
        volume, label = pad_for_crop(volume, label, patch)
        ranges = [max(s - p, 1) for s, p in zip(volume.shape[1:], patch, strict=True)]
        window = tuple(
            slice(int(u * r), int(u * r) + p) for u, r, p in zip(starts[i].tolist(), ranges, patch, strict=True)
        )
        crops.append(volume[(slice(None), *window)])
        if label is not None:
            label_crops.append(label[window])
    return torch.stack(crops), torch.stack(label_crops) if labels is not None else None


@dataclass(frozen=True)
class StrongViewSpec:
    """Photometric strong-view settings; intensities are taken relative to each image's own [min, max].

    jitter_p, brightness, contrast, saturation, hue: ColorJitter(0.8, 0.8, 0.8, 0.2) as SSL4MIS FixMatch
    (standard augs) uses it, each component applied with probability jitter_p (saturation and hue on RGB
    only). gamma: nnU-Net's range. blur: Gaussian sigma as UniMatch/SimCLR. noise: standard deviation as a
    fraction of the image's range, drawn per image (SSL4MIS and MONAI use 0.1).
    """

    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    gamma_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.1)


_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _rand(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * _rand(n, generator)


def _maybe(n: int, p: float, values: Tensor, neutral: float, generator: torch.Generator) -> Tensor:
    """values where a Bernoulli(p) draw fires, else the neutral value (the transform is skipped)."""
    return torch.where(_rand(n, generator) < p, values, neutral)


def _factor(n: int, p: float, strength: float, generator: torch.Generator) -> Tensor:
    """ColorJitter factor uniform in [max(0, 1 - s), 1 + s] with probability p, else 1."""
    return _maybe(n, p, _uniform(n, (max(0.0, 1 - strength), 1 + strength), generator), 1.0, generator)


def _blend(image: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's _blend: factor * image + (1 - factor) * other, clamped to [0, 1]."""
    factor = _per_sample(factor, image)
    return (factor * image + (1 - factor) * other).clamp_(0, 1)


def _gray(images: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, *([1] * (images.dim() - 2)))
    return (images * weights).sum(1, keepdim=True)


def _hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by shift turns: a linear stand-in for an HSV hue shift."""
    matrix = _RGB_TO_YIQ.to(images.device, images.dtype)
    yiq = torch.einsum("ij,bj...->bi...", matrix, images)
    angle = _per_sample(shift * 2 * math.pi, yiq[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1] * cos - yiq[:, 2] * sin, yiq[:, 1] * sin + yiq[:, 2] * cos
    rotated = torch.stack([yiq[:, 0], i, q], 1)
    return torch.einsum("ij,bj...->bi...", torch.linalg.inv(matrix), rotated).clamp_(0, 1)


def _gaussian_blur(images: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (0: untouched); replicate padding keeps flat regions
    flat up to the border."""
    batch, channels = images.shape[:2]
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=sigma.device)
    safe = sigma.clamp(min=1e-6).unsqueeze(1)
    kernel = torch.exp(-0.5 * (offsets / safe) ** 2)
    kernel = torch.where((sigma > 0).unsqueeze(1), kernel, (offsets == 0).to(torch.float64))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)
    kernel = kernel.to(images.device, images.dtype)
    spatial = images.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    out = images.reshape(1, batch * channels, *images.shape[2:])
    for axis in range(spatial):
        shape = [batch * channels, 1] + [1] * spatial
        shape[2 + axis] = kernel.shape[1]
        pad = [0] * (2 * spatial)
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernel.view(shape), groups=batch * channels)
    return out.reshape(images.shape)


def strong_view(
    images: Tensor, generator: torch.Generator, rgb: bool = False, spec: StrongViewSpec | None = None
) -> Tensor:
    """Photometric strong view of a (B, C, *spatial) batch; geometry is untouched, so a pseudo-label map of
    the input applies to the output pixel for pixel.

    Each image is mapped to [0, 1] by its own min and max (ACDC is min-max scaled, LA z-scored: one rule for
    both), then, in this order: brightness (scale) and contrast (blend with the mean grey level), for RGB also
    saturation (blend with grey) and hue; gamma; Gaussian blur; Gaussian noise; clamp to [0, 1] and map back,
    so the output stays in the input's range. torchvision draws the jitter order at random; it is fixed here.
    All parameters come from `generator` (drawn on its device, then moved to the images').
    """
    spec = spec or StrongViewSpec()
    if rgb and images.shape[1] != 3:
        raise ValueError(f"rgb strong view needs 3 channels, got {images.shape[1]}")
    n = images.shape[0]
    if n == 0:
        return images.clone()
    dims = tuple(range(1, images.dim()))
    low, high = images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True)
    scale = (high - low).clamp(min=1e-8)
    x = (images - low) / scale
    x = (x * _per_sample(_factor(n, spec.jitter_p, spec.brightness, generator), x)).clamp_(0, 1)
    mean = _gray(x).mean(dim=dims, keepdim=True)
    x = _blend(x, mean, _factor(n, spec.jitter_p, spec.contrast, generator))
    if rgb:
        x = _blend(x, _gray(x), _factor(n, spec.jitter_p, spec.saturation, generator))
        x = _hue(x, _maybe(n, spec.jitter_p, _uniform(n, (-spec.hue, spec.hue), generator), 0.0, generator))
    gamma = _maybe(n, spec.gamma_p, _uniform(n, spec.gamma, generator), 1.0, generator)
    x = x ** _per_sample(gamma, x)
    sigma = _maybe(n, spec.blur_p, _uniform(n, spec.blur_sigma, generator), 0.0, generator)
    x = _gaussian_blur(x, sigma, spec.blur_sigma[1])
    std = _maybe(n, spec.noise_p, _uniform(n, spec.noise_std, generator), 0.0, generator)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    x = (x + noise * _per_sample(std, x)).clamp_(0, 1)
    return x * scale + low


ReferenceRecipe = Literal["acdc", "acdc_head", "la", "crop", "none"]
REFERENCES = typing.get_args(ReferenceRecipe)
"""acdc: SSL4MIS RandomGenerator as published (2D; slices resized to the patch). acdc_head: its June-2025
HEAD variant (50/50 rot-flip / rotation). la: UA-MT RandomCrop (zero padding) + RandomRotFlip, 2D or 3D.
crop: the same recipe under its generic name (2D images larger than the patch, e.g. pathology).
none: slices resized to the patch (2D) or random crops (3D), nothing else."""


@dataclass(frozen=True)
class Recipe:
    """A training augmentation, and what inference must know of it: whether it crops, which axes it mirrors.

    A reference recipe (`reference` set) runs its published draws exactly (tests/data/test_recipes.py pins
    its batches); its other fields describe it. A composed recipe, in this order: reach the patch (`crop`:
    random crops with UA-MT padding; otherwise 2D slices resized to it; None: resize in 2D, crop in 3D),
    rot90 (k uniform in 0..3 in the first two spatial axes, even only on a non-square patch), a mirror of
    each axis in `flip` with probability 1/2, rotation uniform in [-rotate, rotate] degrees and zoom uniform
    in `zoom` (2D, nearest, zero fill), then brightness / contrast / gamma / noise as `strong_view` does
    them (relative to each image's range). Each random component except rot90 and flips fires with
    probability `p`. Spatial axes count from 0 = the first (rows of a PNG: up-down; axis 1 left-right).
    """

    reference: str | None = None
    crop: bool | None = None
    rot90: bool = False
    flip: tuple[int, ...] = ()
    rotate: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    p: float = 0.5

    def crops(self, spatial_dims: int) -> bool:
        """Trained on random crops (so predicted by a sliding window), not on whole slices resized."""
        return spatial_dims == 3 or bool(self.crop)

    def mirrored_axes(self) -> tuple[int, ...]:
        """Spatial axes along which training showed mirrored images, the only flips worth averaging at test
        time: the flipped ones, and both in-plane axes when rot90 meets a flip of either (rot180 x flip0 =
        flip1)."""
        axes = set(self.flip)
        if self.rot90 and axes & {0, 1}:
            axes |= {0, 1}
        return tuple(sorted(axes))

    def intensity(self) -> StrongViewSpec | None:
        """The photometric part as a `strong_view` spec (grey-level transforms only), None when it has none."""
        if not (self.brightness or self.contrast or self.gamma != (1.0, 1.0) or self.noise):
            return None
        return StrongViewSpec(
            jitter_p=self.p,
            brightness=self.brightness,
            contrast=self.contrast,
            gamma_p=self.p if self.gamma != (1.0, 1.0) else 0.0,
            gamma=self.gamma,
            blur_p=0.0,
            blur_sigma=(0.0, 0.0),
            noise_p=self.p if self.noise else 0.0,
            noise_std=(0.0, self.noise),
        )


_REFERENCE_RECIPES = {
    "acdc": Recipe("acdc", crop=False, rot90=True, flip=(0, 1), rotate=MAX_ANGLE),
    "acdc_head": Recipe("acdc_head", crop=False, rot90=True, flip=(0, 1), rotate=MAX_ANGLE),
    "la": Recipe("la", crop=True, rot90=True, flip=(0, 1)),
    "crop": Recipe("crop", crop=True, rot90=True, flip=(0, 1)),
    "none": Recipe("none"),
}
COMPONENTS = ("crop", "rot90", "flip", "rotate", "zoom", "brightness", "contrast", "gamma", "noise", "p")


def recipe(spec: str | Mapping[str, Any] | Recipe, spatial_dims: int) -> Recipe:
    """The recipe `data.augment` names (a reference) or composes (a mapping of COMPONENTS), checked for
    `spatial_dims`; ValueError names the component and what it must be."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, str):
        if spec not in _REFERENCE_RECIPES:
            raise ValueError(
                f"data.augment must be one of {', '.join(REFERENCES)} or a mapping of components "
                f"({', '.join(COMPONENTS)}), got {spec!r}"
            )
        if spec.startswith("acdc") and spatial_dims != 2:
            raise ValueError(f"data.augment {spec!r} is a 2D recipe; use 'la' or 'none' for 3D data")
        return _REFERENCE_RECIPES[spec]
    if not isinstance(spec, Mapping):
        raise ValueError(f"data.augment must be a recipe name or a mapping of components, got {spec!r}")
    unknown = sorted(set(spec) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown data.augment component(s) {unknown}; known: {list(COMPONENTS)}")
    values = {key: _component(key, value, spatial_dims) for key, value in spec.items()}
    composed = Recipe(**values)
    if spatial_dims == 3 and composed.crop is False:
        raise ValueError("data.augment.crop must be true (or left out) for 3D data: volumes are always cropped")
    if spatial_dims == 3 and (composed.rotate or composed.zoom != (1.0, 1.0)):
        raise ValueError("data.augment rotate and zoom are 2D components; leave them out for 3D data")
    return composed


def _component(key: str, value: Any, spatial_dims: int) -> Any:
    def number(item: Any) -> bool:
        return isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)

    def positive_range() -> bool:
        pair = isinstance(value, list | tuple) and len(value) == 2 and all(map(number, value))
        return pair and 0 < value[0] <= value[1]

    checks: dict[str, tuple[bool, str]] = {
        "crop": (isinstance(value, bool), "true or false"),
        "rot90": (isinstance(value, bool), "true or false"),
        "flip": (
            isinstance(value, list | tuple)
            and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < spatial_dims for a in value)
            and len(set(value)) == len(value),
            f"a list of distinct spatial axes in 0..{spatial_dims - 1} (0 = rows: up-down in a PNG)",
        ),
        "rotate": (number(value) and 0 <= value <= 180, "a largest angle in degrees, in [0, 180]"),
        "zoom": (positive_range(), "[low, high] with 0 < low <= high"),
        "brightness": (number(value) and 0 <= value < 1, "in [0, 1)"),
        "contrast": (number(value) and 0 <= value < 1, "in [0, 1)"),
        "gamma": (positive_range(), "[low, high] with 0 < low <= high"),
        "noise": (number(value) and 0 <= value <= 1, "a largest noise sd as a fraction of the image range, in [0, 1]"),
        "p": (number(value) and 0 <= value <= 1, "a probability in [0, 1]"),
    }
    ok, expected = checks[key]
    if not ok:
        raise ValueError(f"data.augment.{key} must be {expected}, got {value!r}")
    if key == "flip":
        return tuple(value)
    if key in ("zoom", "gamma"):
        return (float(value[0]), float(value[1]))
    return value if isinstance(value, bool) else float(value)


def _transform_some(
    images: Tensor, labels: Tensor | None, chosen: Tensor, angles: Tensor, scales: Tensor
) -> tuple[Tensor, Tensor | None]:
    """`rotate` (with zoom) of the chosen samples only; the others stay untouched, not resampled."""
    index = torch.nonzero(chosen).flatten()
    if index.numel() == 0:
        return images, labels
    on_device = index.to(images.device)
    picked = None if labels is None else labels.index_select(0, on_device)
    moved, moved_labels = rotate(images.index_select(0, on_device), picked, angles[index], scales=scales[index])
    images = images.index_copy(0, on_device, moved)
    if labels is not None and moved_labels is not None:
        labels = labels.index_copy(0, on_device, moved_labels)
    return images, labels


def apply_recipe(
    recipe: Recipe, images: Tensor, labels: Tensor | None, generator: torch.Generator, source_sizes: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Augment a (B, C, *patch) batch; `source_sizes` are the native (H, W) of resized slices (ACDC rotates
    in that frame)."""
    if recipe.reference in ("acdc", "acdc_head"):
        era = recipe.reference == "acdc"
        return acdc_augment(images, labels, generator, published_era=era, source_sizes=source_sizes)
    if recipe.reference in ("la", "crop"):
        return la_augment(images, labels, generator)
    if recipe.reference == "none":
        return images, labels
    n = images.shape[0]
    if recipe.rot90:
        k, _ = draw_rot_flip(n, generator, square=images.shape[2] == images.shape[3])
        images, labels = rot_flip(images, labels, k, torch.full((n,), -1))
    for axis in recipe.flip:
        index = torch.nonzero(torch.rand(n, generator=generator) < 0.5).flatten().to(images.device)
        images = images.index_copy(0, index, images.index_select(0, index).flip(2 + axis))
        if labels is not None:
            labels = labels.index_copy(0, index, labels.index_select(0, index).flip(1 + axis))
    if recipe.rotate or recipe.zoom != (1.0, 1.0):
        fires = torch.rand(n, generator=generator) < recipe.p
        angles = torch.where(fires, (2 * torch.rand(n, generator=generator) - 1) * recipe.rotate, 0.0)
        fires = torch.rand(n, generator=generator) < recipe.p
        low, high = recipe.zoom
        scales = torch.where(fires, low + (high - low) * torch.rand(n, generator=generator), 1.0)
        images, labels = _transform_some(images, labels, (angles != 0) | (scales != 1), angles, scales)
    spec = recipe.intensity()
    if spec is not None:
        images = strong_view(images, generator, spec=spec)
    return images, labels


def reference_acdc_sample(
    image: np.ndarray, label: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """SSL4MIS RandomGenerator (published era) on one (H, W) slice, per sample on the CPU, with scipy.

    Draw order: u1 = rng.random(); if u1 > 0.5: k = rng.integers(0, 4), axis = rng.integers(0, 2), np.rot90
    then np.flip; else u2 = rng.random(); if u2 > 0.5: angle = rng.integers(-20, 20), ndimage.rotate
    (order=0, reshape=False) of image and label. Then zoom (order=0) of both to the patch size.
    (SSL4MIS draws u1, u2 with Python's `random` and the rest with NumPy; one generator here.)
    """
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image, label = np.flip(np.rot90(image, k), axis=axis), np.flip(np.rot90(label, k), axis=axis)
    elif rng.random() > 0.5:
        angle = int(rng.integers(-MAX_ANGLE, MAX_ANGLE))
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    factors = (patch_size[0] / image.shape[0], patch_size[1] / image.shape[1])
    image = ndimage.zoom(image, factors, order=0)
    label = ndimage.zoom(label, factors, order=0)
    return image.astype(np.float32), label.astype(np.uint8)
