"""Cross Pseudo Supervision (Chen et al., CVPR 2021) as SSL4MIS trains it on ACDC (ssl4mis.md §2, row 7).

Two networks of the same architecture and independent random initialisations; on unlabeled images each is
trained with CE towards the other's hard argmax (no threshold, no CutMix), weighted by the SSL4MIS ramp to
0.1. Each network has its own optimiser. `cross_teaching` is the same scheme with a U-Net and a transformer.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, Method, MethodContext, register_method
from medsemi.methods.options import ConsistencyRampOptions

NetName = Literal["net1", "net2"]


@dataclass
class CPSOptions(ConsistencyRampOptions):
    predictor: NetName = "net1"


@register_method("cps")
class CPS(Method):
    """Two networks, each trained with 0.5 (CE + Dice) and towards the other's detached unlabeled argmax."""

    Options = CPSOptions
    net_names: ClassVar[tuple[str, ...]] = typing.get_args(NetName)

    def __init__(self, options: CPSOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.nets = nn.ModuleDict(dict(zip(self.net_names, self.build_pair(), strict=True)))

    def build_pair(self) -> tuple[nn.Module, nn.Module]:
        """Two builds draw two random initialisations."""
        return self.context.build_net(), self.context.build_net()

    def cross_loss(self, logits: Tensor, pseudo_labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, pseudo_labels)

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_l = batch.image_l.shape[0]
        inputs = torch.cat([batch.image_l, batch.image_u])
        logits = {name: net(inputs) for name, net in self.nets.items()}
        pseudo = {name: out[n_l:].detach().argmax(1) for name, out in logits.items()}
        weight = o.ramped(step)
        self.log("consistency_weight", weight)
        first, second = self.net_names
        losses = {}
        for name, other in ((first, second), (second, first)):
            losses[f"supervised_{name}"] = ce_dice_loss(logits[name][:n_l], batch.label_l)
            losses[f"cross_{name}"] = weight * self.cross_loss(logits[name][n_l:], pseudo[other])
        return losses

    def predictor(self) -> nn.Module:
        return self.nets[self.options.predictor]

    def ensemble_members(self) -> list[nn.Module]:
        return list(self.nets.values())

    def optimised_modules(self) -> dict[str, nn.Module]:
        return dict(self.nets.items())
