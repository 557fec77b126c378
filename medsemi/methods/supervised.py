"""Labeled data only: the baseline every table needs, run through the same trainer as the others."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, MethodOptions, StudentMethod, register_method


@dataclass
class SupervisedOptions(MethodOptions):
    pass


@register_method("supervised")
class Supervised(StudentMethod):
    Options = SupervisedOptions
    uses_unlabeled = False

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        return {"supervised": ce_dice_loss(self.student(batch.image_l), batch.label_l)}
