"""Mean Teacher (Tarvainen & Valpola 2017) as SSL4MIS trains it on ACDC and LA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medsemi.engine.ema import ema_update
from medsemi.losses import ce_dice_loss, consistency_weight
from medsemi.methods.base import Batch, MethodOptions, StudentTeacherMethod, register_method


@dataclass
class MeanTeacherOptions(MethodOptions):
    ema_decay: float = 0.99
    consistency: float = 0.1
    rampup_epochs: float = 200.0
    iterations_per_epoch: int = 150
    consistency_start: int = 1000
    teacher_noise_std: float = 0.1
    teacher_noise_clip: float = 0.2
    ema_buffers: bool = False


@register_method("mean_teacher")
class MeanTeacher(StudentTeacherMethod):
    """Student on labeled + unlabeled; softmax MSE to an EMA teacher that sees the unlabeled images plus noise.

    SSL4MIS 2D switches consistency off for the first 1000 iterations (`consistency_start`; 0 in 3D).
    """

    Options = MeanTeacherOptions

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_labeled = batch.image_l.shape[0]
        logits = self.student(torch.cat([batch.image_l, batch.image_u]))
        noise = torch.clamp(
            torch.randn_like(batch.image_u) * o.teacher_noise_std, -o.teacher_noise_clip, o.teacher_noise_clip
        )
        with torch.no_grad():
            teacher_probs = self.teacher(batch.image_u + noise).softmax(1)
        consistency = torch.mean((logits[n_labeled:].softmax(1) - teacher_probs) ** 2)
        weight = consistency_weight(step, o.consistency, o.rampup_epochs, o.iterations_per_epoch)
        weight = weight if step >= o.consistency_start else 0.0
        self.log("consistency_weight", weight)
        return {
            "supervised": ce_dice_loss(logits[:n_labeled], batch.label_l),
            "consistency": weight * consistency,
        }

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.student, self.options.ema_decay, step, buffers=self.options.ema_buffers)
