"""Loss terms and schedules shared by the methods; each Dice variant is named for what it computes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, *spatial) integer map -> (B, C, *spatial) float one-hot."""
    return F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()


def soft_dice_loss(
    probs: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    smooth: float = 1e-5,
    squared_denominator: bool = True,
    include_background: bool = True,
) -> Tensor:
    """SSL4MIS/V-Net Dice: per class over the whole batch at once, mean over classes.

    1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s) with `squared_denominator`, else sum(p) + sum(t).
    probs: (B, C, *spatial) softmax; target: (B, *spatial) class indices or (B, C, *spatial) soft targets;
    mask: optional (B, *spatial) weights applied to both prediction and target.
    """
    num_classes = probs.shape[1]
    target = one_hot(target, num_classes) if target.dim() == probs.dim() - 1 else target
    if mask is not None:
        weight = mask.unsqueeze(1).to(probs.dtype)
        probs, target = probs * weight, target * weight
    reduce_dims = [0, *range(2, probs.dim())]
    intersection = (probs * target).sum(reduce_dims)
    if squared_denominator:
        denominator = (probs * probs).sum(reduce_dims) + (target * target).sum(reduce_dims)
    else:
        denominator = probs.sum(reduce_dims) + target.sum(reduce_dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    losses = 1 - dice
    return (losses if include_background else losses[1:]).mean()


def per_sample_dice_loss(probs: Tensor, target: Tensor, mask: Tensor | None = None, *, smooth: float = 1e-5) -> Tensor:
    """SS-Net/BCP `mask_DiceLoss` (their LA code): Dice per sample and per class, then the mean of both.

    1 - mean_{n,c} (2 sum_i p t m + s) / (sum_i (p + t) m + s): linear denominators, background included.
    probs: (B, C, *spatial) softmax; target: class indices or one-hot; mask: optional (B, *spatial) weights.
    """
    target = one_hot(target, probs.shape[1]) if target.dim() == probs.dim() - 1 else target
    weight = 1.0 if mask is None else mask.unsqueeze(1).to(probs.dtype)
    dims = list(range(2, probs.dim()))
    intersection = (probs * target * weight).sum(dims)
    union = ((probs + target) * weight).sum(dims)
    return 1 - ((2 * intersection + smooth) / (union + smooth)).mean()


def masked_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Pixel-wise CE; with a mask, the mask-weighted sum divided by the number of pixels (not the mask sum)."""
    per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    return per_pixel.mean() if mask is None else (per_pixel * mask).mean()


def ce_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The SSL4MIS supervised loss: 0.5 * (CE + Dice)."""
    return 0.5 * (F.cross_entropy(logits, target.long()) + soft_dice_loss(logits.softmax(1), target))


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    return F.mse_loss(student_logits.softmax(1), teacher_logits.softmax(1))


def entropy_map(probs: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-pixel entropy (natural log) of (B, C, *spatial) probabilities."""
    return -(probs * torch.log(probs + eps)).sum(1)


def distillation_kl(student_logits: Tensor, teacher_probs: Tensor, temperature: float) -> Tensor:
    """Hinton KD, dense: T^2 KL(teacher || softmax(student / T)), summed over classes, mean over pixels.

    Every pixel is one sample (`reduction="batchmean"` on the (B*H*W, C) matrix, as CDMA computes it).
    teacher_probs: (B, C, *spatial) already temperature-softened targets; detach them to distil one way.
    """
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_student, teacher_probs, reduction="none").sum(1)
    return kl.mean() * temperature**2


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2), t = current / length clipped to [0, 1] (Laine & Aila)."""
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(step: int, max_weight: float, rampup_epochs: float, iterations_per_epoch: int) -> float:
    """SSL4MIS ramp: max_weight * sigmoid_rampup(step // iterations_per_epoch, rampup_epochs)."""
    return max_weight * sigmoid_rampup(step // iterations_per_epoch, rampup_epochs)
