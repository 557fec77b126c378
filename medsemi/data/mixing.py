"""Copy-paste mixing of two image batches with one binary mask (BCP, CutMix and their confidence-aware kin).

Convention (BCP's): a mask M is 1 where a mixed pixel comes from the *base* image and 0 inside the pasted
box, so `mixed = base * M + patch * (1 - M)`. The same mask mixes images, class maps and confidence maps,
and the two region masks it returns are what region-weighted losses need (e.g. ground truth outside the
box at weight 1, pseudo-labels inside it at weight alpha).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def box_mask(
    batch_size: int,
    spatial_shape: Sequence[int],
    beta: float | Tensor,
    *,
    per_sample: bool = False,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, *spatial) float mask: 0 inside one box, 1 elsewhere; 2D and 3D alike.

    The box side along each axis is `int(size * beta)` and its start is uniform in [0, size - side)
    (BCP's `generate_mask` / `context_mask`: 170x170 of 256x256, 74x74x53 of 112x112x80 for beta = 2/3).
    By default one box is shared by the whole batch, as BCP draws it; `per_sample` draws one box per sample
    (CutMix), and then `beta` may be a (B,) tensor of per-sample side ratios. Random numbers come from the
    CPU generator (the global one unless given), so the draw does not depend on the device.
    """
    sizes = torch.tensor(list(spatial_shape), dtype=torch.float64)
    ratios = torch.as_tensor(beta, dtype=torch.float64).reshape(-1, 1)
    boxes = batch_size if per_sample else 1
    if ratios.shape[0] not in (1, boxes):
        raise ValueError(f"box_mask: {ratios.shape[0]} side ratios for {boxes} box(es)")
    if ((ratios < 0) | (ratios > 1)).any():
        raise ValueError(f"box_mask: side ratio must lie in [0, 1], got {beta}")
    sides = (sizes * ratios + 1e-9).floor().expand(boxes, -1)  # int(size * beta), robust to 59.999...
    slack = sizes - sides
    starts = (torch.rand(boxes, len(sizes), generator=generator, dtype=torch.float64) * slack).floor()
    inside = torch.ones(boxes, *spatial_shape, dtype=torch.bool, device=device)
    for axis, size in enumerate(spatial_shape):
        coords = torch.arange(size, device=device)
        start = starts[:, axis : axis + 1].to(device)
        along = (coords >= start) & (coords < start + sides[:, axis : axis + 1].to(device))
        view = [boxes] + [1] * len(spatial_shape)
        view[axis + 1] = size
        inside &= along.view(view)
    return (~inside).float().expand(batch_size, *spatial_shape).contiguous()


def paste(base: Tensor, patch: Tensor, mask: Tensor) -> Tensor:
    """`base` where mask is 1, `patch` where it is 0; a (B, *spatial) mask also serves (B, C, *spatial) ones.

    Selection (not blending) keeps integer class maps integer and copies every pixel exactly.
    """
    keep = mask.bool()
    if base.dim() == mask.dim() + 1:
        keep = keep.unsqueeze(1)
    return torch.where(keep, base, patch)


@dataclass
class Source:
    """One side of a mix: images (B, C, *spatial), optional class map (B, *spatial), per-pixel confidence."""

    image: Tensor
    target: Tensor | None = None
    confidence: Tensor | None = None


@dataclass
class Mixed:
    """A mixed batch and where its pixels came from.

    base_region: (B, *spatial) float, 1 where the pixel comes from the base source (the mask itself);
    patch_region is its complement. target / confidence are mixed only when both sources have them.
    """

    image: Tensor
    target: Tensor | None
    confidence: Tensor | None
    base_region: Tensor

    @property
    def patch_region(self) -> Tensor:
        return 1.0 - self.base_region


def copy_paste(base: Source, patch: Source, mask: Tensor) -> Mixed:
    """Paste `patch` into `base` where `mask` is 0; images, targets and confidences share the one mask."""

    def both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        return None if a is None or b is None else paste(a, b, mask)

    return Mixed(
        image=paste(base.image, patch.image, mask),
        target=both(base.target, patch.target),
        confidence=both(base.confidence, patch.confidence),
        base_region=mask.to(base.image.dtype),
    )
