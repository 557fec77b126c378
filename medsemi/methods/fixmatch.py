"""FixMatch (Sohn et al., NeurIPS 2020) made dense: confidence-masked per-pixel pseudo-labels, weak -> strong.

The SSL4MIS FixMatch scripts are not the reference (ssl4mis.md §2.1): their "threshold" zeroes the
unconfident probabilities before the argmax, so unconfident pixels are trained towards a class instead of
being ignored. Here an unconfident pixel contributes nothing, and the masked loss is divided by the number
of all pixels (vit_ssl.md §3.1), so images with few confident pixels weigh less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, MethodContext, MethodOptions, StudentMethod, register_method
from medsemi.methods.pseudo_labels import PseudoLoss, confident_labels, pseudo_label_loss, strong_images


def random_dihedral(batch_size: int, square: bool) -> tuple[Tensor, Tensor]:
    """Per-sample rot90 count (0..3; only 0 or 2 when the last two axes differ) and flip flag."""
    k = torch.randint(0, 4, (batch_size,))
    return (k if square else k - k % 2), torch.rand(batch_size) < 0.5


def apply_dihedral(x: Tensor, k: Tensor, flip: Tensor) -> Tensor:
    """Rotate sample i by k_i quarter turns in the last two axes, then flip its last axis where flip_i.

    Works for images (B, C, ...), label maps and confidence maps (B, ...) alike, so a strong view and its
    pseudo-label map get exactly the same transform (exact: no interpolation).
    """
    rotated = torch.stack([torch.rot90(sample, int(turns), dims=(-2, -1)) for sample, turns in zip(x, k, strict=True)])
    return torch.where(flip.to(x.device).view(-1, *[1] * (x.dim() - 1)), rotated.flip(-1), rotated)


@dataclass
class FixMatchOptions(MethodOptions):
    threshold: float = 0.95
    unsup_weight: float = 1.0
    unsup_loss: PseudoLoss = "ce"
    strong_geometry: Literal["none", "dihedral"] = "none"


@register_method("fixmatch")
class FixMatch(StudentMethod):
    """One student: its weak-view argmax (where max-prob >= threshold) supervises its strong view.

    Labeled, weak and strong images go through one forward, as in FixMatch (shared BN statistics).
    `strong_geometry: dihedral` adds a random rot90/flip to the strong view and applies the same one to
    the pseudo-label map and mask.
    """

    Options = FixMatchOptions
    needs_strong_view = True

    def __init__(self, options: FixMatchOptions, context: MethodContext) -> None:
        super().__init__(options, context)

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_l, n_u = batch.image_l.shape[0], batch.image_u.shape[0]
        strong = strong_images(batch)
        if o.strong_geometry == "dihedral":
            k, flip = random_dihedral(n_u, strong.shape[-1] == strong.shape[-2])
            strong = apply_dihedral(strong, k, flip)
        logits = self.student(torch.cat([batch.image_l, batch.image_u, strong]))
        labels, confidence = confident_labels(logits[n_l : n_l + n_u])
        if o.strong_geometry == "dihedral":
            labels, confidence = apply_dihedral(labels, k, flip), apply_dihedral(confidence, k, flip)
        mask = (confidence >= o.threshold).float()
        self.log("mask_ratio", mask.mean())
        return {
            "supervised": ce_dice_loss(logits[:n_l], batch.label_l),
            "unsupervised": o.unsup_weight * pseudo_label_loss(logits[n_l + n_u :], labels, mask, o.unsup_loss),
        }
