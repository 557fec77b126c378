"""CDMA (Zhong et al., MICCAI 2023): cross distillation of multiple attentions in a three-decoder MTNet.

Supervised Dice + CE on every branch; on all images, labeled and unlabeled, each branch is distilled from
the other two branches' temperature-softened, detached predictions (CDKD) and the entropy of the three
branches' mean prediction is minimised. The unsupervised terms start after a hard warm-up (15 of 150
epochs in the official code). See docs/methods/cdma.md for the protocol and every deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from medsemi.losses import ce_dice_loss, distillation_kl, entropy_map
from medsemi.methods.base import Batch, Method, MethodContext, MethodOptions, register_method
from medsemi.nets.mtnet import BRANCHES, BranchView, MTNet


@dataclass
class CDMAOptions(MethodOptions):
    """Defaults of the official train_CDMA.py (`--consistency 0.1` weights both unsupervised terms).

    warmup_fraction: share of the iterations before CDKD and entropy switch on (15 / 150 epochs).
    inference: "csa" predicts with the CSA branch (the paper); "mean" averages the three branches' softmax.
    supervised_reduction: "mean" over the three decoders (official code, where the decoders sit on a
        pretrained backbone at 10x its learning rate) or "sum" (each decoder gets a full supervised gradient,
        as a single U-Net does when trained from scratch; see docs/methods/cdma.md for the ablation).
    """

    kd_weight: float = 0.1
    entropy_weight: float = 0.1
    temperature: float = 10.0
    warmup_fraction: float = 0.1
    inference: Literal["csa", "mean"] = "csa"
    supervised_reduction: Literal["mean", "sum"] = "mean"


def cross_decoder_distillation(logits: list[Tensor], temperature: float) -> Tensor:
    """CDKD: (1/n) sum over ordered pairs k != j of KD(student z_k, detached teacher z_j).

    Its gradient on z_k is twice that of distilling z_k from the mean of the others' softened predictions,
    so the pairwise code and the "average of the other two" reading train identically.
    """
    targets = [(z.detach() / temperature).softmax(1) for z in logits]
    terms = [
        distillation_kl(student, targets[j], temperature)
        for k, student in enumerate(logits)
        for j in range(len(logits))
        if j != k
    ]
    return torch.stack(terms).sum() / len(logits)


def mean_prediction_entropy(logits: list[Tensor]) -> Tensor:
    """Pixel mean of the entropy of the branches' mean softmax, normalised by log(C) to lie in [0, 1]."""
    mean = torch.stack([z.softmax(1) for z in logits]).mean(0)
    return entropy_map(mean, eps=1e-6).mean() / math.log(mean.shape[1])


def build_mtnet(context: MethodContext) -> MTNet:
    """The configured MTNet; `net.name: unet` means MTNet on that U-Net (same options)."""
    name = {"unet": "mtnet"}.get(context.net.name, context.net.name)
    net = context.build_net(name, **context.net.options)
    if not isinstance(net, MTNet):
        raise ValueError(f"cdma needs a three-branch MTNet (net.name mtnet, mtnet_resnet50 or unet), got {name!r}")
    return net


@register_method("cdma")
class CDMA(Method):
    Options = CDMAOptions
    supported_dims = (2,)

    def __init__(self, options: CDMAOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.net = build_mtnet(context)

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_labeled = batch.image_l.shape[0]
        outputs = self.net.branch_outputs(torch.cat([batch.image_l, batch.image_u]))
        logits = [outputs[name][0].float() for name in BRANCHES]
        per_decoder = torch.stack([ce_dice_loss(z[:n_labeled], batch.label_l) for z in logits])
        supervised = per_decoder.sum() if o.supervised_reduction == "sum" else per_decoder.mean()
        kd = cross_decoder_distillation(logits, o.temperature)
        entropy = mean_prediction_entropy(logits)
        active = step >= o.warmup_fraction * self.context.iterations
        self.log("cdkd", kd.detach())
        self.log("entropy", entropy.detach())
        self.log("unsupervised_on", float(active))
        return {
            "supervised": supervised,
            "cdkd": (o.kd_weight if active else 0.0) * kd,
            "entropy": (o.entropy_weight if active else 0.0) * entropy,
        }

    def predictor(self) -> nn.Module:
        return BranchView(self.net, ("csa",) if self.options.inference == "csa" else BRANCHES)

    def ensemble_members(self) -> list[nn.Module]:
        return [BranchView(self.net, (name,)) for name in BRANCHES]

    def optimised_modules(self) -> dict[str, nn.Module]:
        return self.net.optimiser_groups()
