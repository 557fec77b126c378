"""Mean Teacher (Tarvainen & Valpola 2017) as SSL4MIS trains it on ACDC and LA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, StudentTeacherMethod, TeacherUpdate, register_method
from medsemi.methods.options import ConsistencyRampOptions, TeacherEMAOptions, iterations


@dataclass
class MeanTeacherOptions(ConsistencyRampOptions, TeacherEMAOptions):
    consistency_start: int = iterations(1000)
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
        weight = o.ramped(step) if step >= o.consistency_start else 0.0
        self.log("consistency_weight", weight)
        return {
            "supervised": ce_dice_loss(logits[:n_labeled], batch.label_l),
            "consistency": weight * consistency,
        }

    def teacher_update(self, step: int) -> TeacherUpdate:
        return TeacherUpdate(self.options.ema_decay, buffers=self.options.ema_buffers)
