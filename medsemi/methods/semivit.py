"""Semi-ViT (Cai et al., NeurIPS 2022) made dense: EMA teacher, masked pixels, probabilistic pseudo mixup.

vit_ssl.md §1 and §3.1-3.2. The EMA teacher (kept in eval mode, parameters and BN statistics averaged as
timm's ModelEma does) labels the weak view; the student learns on the strong view where the teacher's
max-probability reaches the threshold, with the masked loss divided by all pixels. Probabilistic pseudo
mixup pairs each strong image i with a random partner j and lets the more confident one dominate:
lambda_i = c_i / (c_i + c_j) with c the image's mean pixel confidence. In "cutmix" mode (default) a box of
area ~(1 - lambda_i) from j is pasted into i and every pixel keeps its source's pseudo-label and
confidence, so the mask thresholds the confidence carried with the pixel (§3.2, option 1); lambda_i is then
the exact kept share. "pixel_mixup" blends per pixel with lambda(x) = c_i(x) / (c_i(x) + c_j(x)) and masks
with max(c_i(x), c_j(x)) (§3.2, option 3; anatomically implausible images, an ablation). Mixed targets are
soft, with Semi-ViT's label smoothing. An optional supervised warm-start stage plays Semi-ViT's stage 2.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from medsemi.data.mixing import box_mask, paste
from medsemi.losses import ce_dice_loss, masked_cross_entropy, one_hot
from medsemi.methods.base import Batch, MethodContext, Stage, StudentTeacherMethod, TeacherUpdate, register_method
from medsemi.methods.options import TeacherEMAOptions, iterations
from medsemi.methods.pseudo_labels import confident_labels, eval_mode, strong_images

MixupMode = Literal["cutmix", "pixel_mixup", "none"]
MIXUP_MODES = typing.get_args(MixupMode)


@dataclass
class PseudoMix:
    """A pseudo-mixed strong batch.

    target: (B, K, *spatial) soft per-pixel targets; confidence: (B, *spatial) the confidence the mask
    thresholds; ratio: (B,) share of mixed image i that comes from image i itself; partner: (B,) index j.
    """

    image: Tensor
    target: Tensor
    confidence: Tensor
    ratio: Tensor
    partner: Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    return one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes


def probabilistic_pseudo_mixup(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    num_classes: int,
    *,
    mode: str = "cutmix",
    smoothing: float = 0.1,
    partner: Tensor | None = None,
) -> PseudoMix:
    """Mix sample i with `partner[i]` (a random permutation unless given); confidence sets the shares."""
    batch = images.shape[0]
    partner = torch.randperm(batch) if partner is None else partner.cpu()
    partner_on_device = partner.to(images.device)
    other_conf = confidence[partner_on_device]
    if mode == "cutmix":
        image_conf = confidence.flatten(1).mean(1).double().cpu()
        lam = image_conf / (image_conf + image_conf[partner]).clamp_min(1e-12)
        side = (1.0 - lam).clamp(0.0, 1.0).sqrt()
        keep = box_mask(batch, labels.shape[1:], side, per_sample=True, device=images.device)
        target = smooth_one_hot(paste(labels, labels[partner_on_device], keep), num_classes, smoothing)
        return PseudoMix(
            paste(images, images[partner_on_device], keep),
            target,
            paste(confidence, other_conf, keep),
            keep.flatten(1).mean(1),
            partner,
        )
    if mode == "pixel_mixup":
        lam = confidence / (confidence + other_conf).clamp_min(1e-12)
        weight = lam.unsqueeze(1)
        image = weight * images + (1 - weight) * images[partner_on_device]
        own = smooth_one_hot(labels, num_classes, smoothing)
        target = weight * own + (1 - weight) * own[partner_on_device]
        return PseudoMix(image, target, torch.maximum(confidence, other_conf), lam.flatten(1).mean(1), partner)
    raise ValueError(f"unknown pseudo mixup mode {mode!r}; known: {MIXUP_MODES}")


def soft_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-pixel CE to soft targets, masked, divided by the number of all pixels."""
    per_pixel = -(target * logits.log_softmax(1)).sum(1)
    return (per_pixel * mask).mean()


@dataclass
class SemiViTOptions(TeacherEMAOptions):
    ema_warmup: bool = True
    ema_buffers: bool = True
    teacher_eval_mode: bool = True
    threshold: float = 0.95
    unsup_weight: float = 1.0
    pseudo_mixup: MixupMode = "cutmix"
    label_smoothing: float = 0.1
    warmstart_iterations: int = iterations(0)


@register_method("semivit")
class SemiViT(StudentTeacherMethod):
    """Student + EMA teacher on the configured backbone (swin_unetr for the paper's ViT setting, or unet)."""

    Options = SemiViTOptions
    needs_strong_view = True
    retired_buffers = ("warming_up",)  # the stage comes from start_stage/resume_stage

    def __init__(self, options: SemiViTOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.warming_up = False

    def stages(self) -> list[Stage]:
        train = Stage("train", self.context.iterations)
        n = self.options.warmstart_iterations
        return [Stage("warmstart", n), train] if n > 0 else [train]

    def start_stage(self, stage: Stage, previous_best: dict[str, Tensor] | None) -> None:
        """The SSL stage starts student and teacher from the warm-start's best state (Semi-ViT stage 2->3)."""
        if stage.name == "train" and previous_best is not None:
            self.load_state_dict(previous_best)
            self.teacher.load_state_dict(self.student.state_dict())
        self.resume_stage(stage)

    def resume_stage(self, stage: Stage) -> None:
        self.warming_up = stage.name == "warmstart"

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_l = batch.image_l.shape[0]
        if self.warming_up:
            return {"supervised": ce_dice_loss(self.student(batch.image_l), batch.label_l)}
        with torch.no_grad(), eval_mode(self.teacher, o.teacher_eval_mode):
            labels, confidence = confident_labels(self.teacher(batch.image_u))
        strong, target = strong_images(batch), None
        if o.pseudo_mixup != "none":
            num_classes = self.context.info.num_classes
            mix = probabilistic_pseudo_mixup(
                strong, labels, confidence, num_classes, mode=o.pseudo_mixup, smoothing=o.label_smoothing
            )
            strong, target, confidence = mix.image, mix.target, mix.confidence
            self.log("mix_ratio", mix.ratio.mean())
        logits = self.student(torch.cat([batch.image_l, strong]))
        mask = (confidence >= o.threshold).float()
        self.log("mask_ratio", mask.mean())
        if target is None:
            unsup = masked_cross_entropy(logits[n_l:], labels, mask)
        else:
            unsup = soft_cross_entropy(logits[n_l:], target, mask)
        return {
            "supervised": ce_dice_loss(logits[:n_l], batch.label_l),
            "unsupervised": o.unsup_weight * unsup,
        }

    def teacher_update(self, step: int) -> TeacherUpdate:
        o = self.options
        return TeacherUpdate(o.ema_decay, buffers=o.ema_buffers, warmup=o.ema_warmup)
