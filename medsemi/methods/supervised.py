"""Labeled data only: the baseline every table needs, run through the same trainer as the others."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, Method, MethodContext, MethodOptions, register_method


@dataclass
class SupervisedOptions(MethodOptions):
    pass


@register_method("supervised")
class Supervised(Method):
    Options = SupervisedOptions
    uses_unlabeled = False

    def __init__(self, options: SupervisedOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.student = context.build_net()

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        return {"supervised": ce_dice_loss(self.student(batch.image_l), batch.label_l)}

    def predictor(self) -> nn.Module:
        return self.student

    def optimised_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}
