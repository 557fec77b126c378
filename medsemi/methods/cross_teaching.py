"""Cross teaching between CNN and transformer (Luo et al., MIDL 2022; ssl4mis.md §8).

A U-Net (the configured backbone) and a transformer segmenter see the same batch. Each is trained with
0.5 (CE + Dice) on labeled images and, on unlabeled images, with the Dice loss alone towards the other's
detached hard argmax, weighted by the SSL4MIS ramp to 0.1. No threshold, no EMA, no extra perturbation.
Each network has its own optimiser (`optim.overrides.transformer` may give the transformer AdamW); the
U-Net is reported, as in the paper.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from medsemi.losses import soft_dice_loss
from medsemi.methods.base import register_method
from medsemi.methods.cps import CPS, CPSOptions

NetName = Literal["cnn", "transformer"]


@dataclass
class CrossTeachingOptions(CPSOptions):
    predictor: NetName = "cnn"
    transformer: str = "swin_unetr"
    transformer_options: dict[str, Any] = field(default_factory=dict)


@register_method("cross_teaching")
class CrossTeaching(CPS):
    Options = CrossTeachingOptions
    net_names = typing.get_args(NetName)
    supported_dims = (2,)

    def build_pair(self) -> tuple[nn.Module, nn.Module]:
        o = self.options
        return self.context.build_net(), self.context.build_net(o.transformer, **o.transformer_options)

    def cross_loss(self, logits: Tensor, pseudo_labels: Tensor) -> Tensor:
        return soft_dice_loss(logits.softmax(1), pseudo_labels)
