"""Whole-case inference: volume-wise 2D (SSL4MIS/BCP ACDC test) and N-D sliding window (UA-MT/BCP LA test).

Every function returns softmax probabilities (K, *spatial) at the input's resolution, on the network's
device; the caller takes the argmax (or thresholds). The network is already on its device and in eval mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

Interpolation = Literal["nearest", "bilinear"]


def _device(net: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(net.parameters(), None)
    return fallback if parameter is None else parameter.device


@lru_cache(maxsize=256)
def _zoom_indices(size_in: int, size_out: int) -> tuple[int, ...]:
    """Source index of each output pixel of `scipy.ndimage.zoom(order=0)`, the resize the papers use.

    Read off scipy itself (zooming an index ramp), so rounding at half-pixels matches it bit for bit.
    """
    ramp = np.arange(size_in, dtype=np.float64)
    return tuple(int(i) for i in ndimage.zoom(ramp, size_out / size_in, order=0))


def resize_2d(x: Tensor, size: Sequence[int], mode: Interpolation) -> Tensor:
    """Resize the last two axes: "nearest" = scipy order-0 zoom (papers), "bilinear" = half-pixel bilinear."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    if mode == "nearest":
        rows = torch.tensor(_zoom_indices(x.shape[-2], size[0]), device=x.device)
        cols = torch.tensor(_zoom_indices(x.shape[-1], size[1]), device=x.device)
        return x.index_select(-2, rows).index_select(-1, cols)
    raise ValueError(f"unknown interpolation {mode!r}; use 'nearest' or 'bilinear'")


@torch.no_grad()
def predict_slices(
    net: nn.Module,
    volume: Tensor,
    patch_size: Sequence[int],
    batch_size: int = 16,
    interpolation: Interpolation = "nearest",
    resize_back: Interpolation = "nearest",
) -> Tensor:
    """(C, D, H, W) volume -> (K, D, H, W) probabilities, slice by slice through a 2D network.

    Each slice is resized to `patch_size` (`interpolation`), run through the net (`batch_size` slices per
    forward), soft-maxed and resized back (`resize_back`). The defaults are the papers' (SSL4MIS `val_2D`,
    BCP `test_ACDC`): order-0 zoom in, order-0 zoom back. They zoom the argmax back; zooming the probabilities
    back with the same nearest-pixel map is identical after argmax, so probabilities are returned either way.
    """
    _, depth, height, width = volume.shape
    slices = volume.to(_device(net, volume.device), torch.float32).movedim(1, 0)
    chunks = []
    for start in range(0, depth, batch_size):
        batch = resize_2d(slices[start : start + batch_size], patch_size, interpolation)
        probs = torch.softmax(net(batch).float(), dim=1)
        chunks.append(resize_2d(probs, (height, width), resize_back))
    return torch.cat(chunks).movedim(0, 1)


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """UA-MT's window origins on one axis: every `stride`, the last one flush with the end."""
    count = math.ceil((size - patch) / stride) + 1
    return [min(stride * i, size - patch) for i in range(count)]


def _symmetric_pad(pads: Sequence[int]) -> list[int]:
    """UA-MT's zero padding (low side = pad // 2) in F.pad's last-axis-first order."""
    return [n for pad in reversed(pads) for n in (pad // 2, pad - pad // 2)]


@torch.no_grad()
def sliding_window(
    net: nn.Module,
    image: Tensor,
    patch_size: Sequence[int],
    stride: Sequence[int],
    num_classes: int | None = None,
    batch_size: int = 1,
) -> Tensor:
    """(C, *spatial) -> (K, *spatial) probabilities averaged over overlapping windows, any number of dims.

    As UA-MT/BCP `test_single_case`: axes shorter than the patch are zero-padded symmetrically (and cropped
    back), windows start every `stride` with the last flush with the end, softmax outputs are summed and
    divided by the per-voxel window count. `batch_size` windows go through the net per forward; K is read
    from the first output when `num_classes` is None.
    """
    dims = len(patch_size)
    if image.dim() != dims + 1 or len(stride) != dims:
        raise ValueError(f"image {tuple(image.shape)}, patch {patch_size} and stride {stride} disagree on dims")
    image = image.to(_device(net, image.device), torch.float32)
    shape = image.shape[1:]
    pads = [max(p - n, 0) for n, p in zip(shape, patch_size, strict=True)]
    padded = F.pad(image, _symmetric_pad(pads)) if any(pads) else image
    padded_shape = padded.shape[1:]
    axes = [window_starts(n, p, s) for n, p, s in zip(padded_shape, patch_size, stride, strict=True)]
    boxes = [
        tuple(slice(o, o + p) for o, p in zip(origin, patch_size, strict=True)) for origin in itertools.product(*axes)
    ]
    count = torch.zeros(padded_shape, device=image.device)
    score: Tensor | None = None
    for first in range(0, len(boxes), batch_size):
        group = boxes[first : first + batch_size]
        logits = net(torch.stack([padded[(slice(None), *box)] for box in group]))
        if score is None:
            score = torch.zeros((num_classes or logits.shape[1], *padded_shape), device=image.device)
        for box, prob in zip(group, torch.softmax(logits.float(), dim=1), strict=True):
            score[(slice(None), *box)] += prob
            count[box] += 1
    assert score is not None
    crop = tuple(slice(pad // 2, pad // 2 + n) for pad, n in zip(pads, shape, strict=True))
    return (score / count)[(slice(None), *crop)]


@torch.no_grad()
def predict_case(
    net: nn.Module,
    image: Tensor,
    spatial_dims: int,
    patch_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    batch_size: int = 16,
) -> Tensor:
    """(C, *spatial) -> (K, *spatial) probabilities by the protocol that fits the net and the image.

    2D net on a (C, D, H, W) volume: `predict_slices` (slices resized to `patch_size`, or kept as they are).
    Net and image of equal dims: the whole image in one forward when `patch_size` is None, else a sliding
    window (a single padded window when the image fits in the patch; default stride = half the patch).
    """
    image_dims = image.dim() - 1
    if spatial_dims == 2 and image_dims == 3:
        return predict_slices(net, image, patch_size or image.shape[-2:], batch_size=batch_size)
    if spatial_dims != image_dims:
        raise ValueError(f"a {spatial_dims}D network cannot predict a {image_dims}D image")
    if patch_size is None:
        device = _device(net, image.device)
        return torch.softmax(net(image.to(device, torch.float32).unsqueeze(0)).float(), dim=1)[0]
    stride = stride or [max(p // 2, 1) for p in patch_size]
    return sliding_window(net, image, patch_size, stride, batch_size=batch_size)


def flip_subsets(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of `dims`, the empty one (no flip) first: the 2 ** len(dims) test-time mirrorings."""
    return [subset for count in range(len(dims) + 1) for subset in itertools.combinations(dims, count)]


def tta_flips(predict_fn: Callable[[Tensor], Tensor], image: Tensor, dims: Sequence[int]) -> Iterator[Tensor]:
    """Probabilities for every combination of flips over `dims` (spatial axes, 0 = first), flipped back.

    The first is the unflipped prediction; 2 ** len(dims) in all (nnU-Net-style mirroring). Their mean is a
    test-time-augmented prediction, their spread an uncertainty estimate. Yielded one at a time, so a caller
    that accumulates holds one full-volume probability map besides its sum, not 2 ** len(dims).
    """
    for subset in flip_subsets(dims):
        axes = [d + 1 for d in subset]
        probs = predict_fn(image.flip(axes) if axes else image)
        yield probs.flip(axes) if axes else probs
