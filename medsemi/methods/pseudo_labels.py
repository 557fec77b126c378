"""Building blocks of the weak -> strong pseudo-label methods (fixmatch, semivit, semiformer).

A labeller (the student itself, an EMA teacher, one head of a dual-stream net) predicts the weak view, often in
eval mode; its per-pixel argmax, where confident, supervises the prediction of the strong view.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from torch import Tensor, nn

from medsemi.losses import masked_cross_entropy, soft_dice_loss
from medsemi.methods.base import Batch

PseudoLoss = Literal["ce", "ce_dice"]
PSEUDO_LOSSES = typing.get_args(PseudoLoss)


@contextmanager
def eval_mode(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run `module` in eval mode (BN running statistics, no dropout) and restore its mode afterwards."""
    was_training = module.training
    if enabled:
        module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def confident_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel (argmax class, max softmax probability) of detached logits."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, confidence


def strong_images(batch: Batch) -> Tensor:
    """The batch's strong view of its unlabeled images (made by the stream, medsemi.data.augment.strong_view)."""
    if batch.image_u_strong is None:
        raise ValueError("this method needs batch.image_u_strong (the stream's strong view) but it is missing")
    return batch.image_u_strong


def pseudo_label_loss(logits: Tensor, labels: Tensor, mask: Tensor, kind: str = "ce") -> Tensor:
    """Masked loss to hard pseudo-labels, normalised by all pixels.

    "ce": FixMatch's masked CE. "ce_dice": 0.5 * (masked CE + Dice over the confident pixels), the
    UniMatch ACDC loss (masked pixels are removed from both prediction and target of the Dice).
    """
    ce = masked_cross_entropy(logits, labels, mask)
    if kind == "ce":
        return ce
    if kind == "ce_dice":
        return 0.5 * (ce + soft_dice_loss(logits.softmax(1), labels, mask))
    raise ValueError(f"unknown pseudo-label loss {kind!r}; known: {PSEUDO_LOSSES}")
