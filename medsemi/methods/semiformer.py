"""Semiformer (Weng et al., ECCV 2022) made dense: coupled CNN + transformer streams, CNN-led pseudo-labels.

vit_ssl.md §2.2 and §3.3. One `dual_stream` network (medsemi/nets/dual_stream.py). Both heads get 0.5 (CE +
Dice) on labeled images. After a supervised burn-in, the model (in eval mode, without gradient, as the
release does) predicts the weak view; per-pixel pseudo-labels whose confidence reaches the threshold
supervise both heads on the strong view with masked CE normalised by all pixels. `label_source` picks the
labeller: "cnn" (the paper's default: the CNN head teaches both), "transformer", "cross" (each head learns
from the other's labels, cross-teaching-like), "agree" (the CNN label where both heads agree and both are
confident) or "more_confident" (per pixel, the head with the larger max-probability).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from medsemi.losses import ce_dice_loss
from medsemi.methods.base import Batch, Method, MethodContext, MethodOptions, register_method
from medsemi.methods.pseudo_labels import PseudoLoss, confident_labels, eval_mode, pseudo_label_loss, strong_images
from medsemi.nets.dual_stream import DualStreamNet

LabelSource = Literal["cnn", "transformer", "cross", "agree", "more_confident"]
LABEL_SOURCES = typing.get_args(LabelSource)

PseudoLabels = tuple[Tensor, Tensor]


def fuse_pseudo_labels(cnn_logits: Tensor, token_logits: Tensor, source: str) -> tuple[PseudoLabels, PseudoLabels]:
    """(labels, confidence) targets for the CNN head and for the transformer head, from both heads' logits.

    A confidence of 0 marks a pixel that no threshold admits (the heads disagree under "agree").
    """
    cnn = confident_labels(cnn_logits)
    token = confident_labels(token_logits)
    if source == "cnn":
        return cnn, cnn
    if source == "transformer":
        return token, token
    if source == "cross":
        return token, cnn
    if source == "agree":
        agree = cnn[0] == token[0]
        fused = (cnn[0], torch.where(agree, torch.minimum(cnn[1], token[1]), torch.zeros_like(cnn[1])))
        return fused, fused
    if source == "more_confident":
        cnn_wins = cnn[1] >= token[1]
        fused = (torch.where(cnn_wins, cnn[0], token[0]), torch.maximum(cnn[1], token[1]))
        return fused, fused
    raise ValueError(f"unknown label_source {source!r}; known: {LABEL_SOURCES}")


class HeadView(nn.Module):
    """One head of a dual-stream network as a segmenter of its own (for ensembles and uncertainty)."""

    def __init__(self, net: DualStreamNet, head: str) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        (cnn_logits, cnn_features), (token_logits, token_features) = self.net.forward_streams(x)
        pair = (cnn_logits, cnn_features) if self.head == "cnn" else (token_logits, token_features)
        return pair if return_features else pair[0]


@dataclass
class SemiformerOptions(MethodOptions):
    threshold: float = 0.95
    unsup_weight: float = 0.57
    cnn_ratio: float = 1.0
    transformer_ratio: float = 1.0
    label_source: LabelSource = "cnn"
    burnin_fraction: float = 0.05
    pseudo_label_eval_mode: bool = True
    unsup_loss: PseudoLoss = "ce"
    predictor: Literal["cnn", "transformer", "mean"] = "cnn"


@register_method("semiformer")
class Semiformer(Method):
    """The backbone is `dual_stream`; a `unet` net spec is taken as the CNN stream's options."""

    Options = SemiformerOptions
    needs_strong_view = True
    supported_dims = (2,)

    def __init__(self, options: SemiformerOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        if context.net.name == "dual_stream":
            net = context.build_net()
        elif context.net.name == "unet":
            net = context.build_net("dual_stream", **context.net.options)
        else:
            raise ValueError(
                f"semiformer needs net dual_stream (or unet, whose options shape the CNN stream), "
                f"not {context.net.name!r}"
            )
        self.net: DualStreamNet = net
        self.net.head = options.predictor
        self.burnin = round(options.burnin_fraction * context.iterations)
        self._heads = [HeadView(self.net, "cnn"), HeadView(self.net, "transformer")]

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_l = batch.image_l.shape[0]
        semi = step >= self.burnin
        inputs = torch.cat([batch.image_l, strong_images(batch)]) if semi else batch.image_l
        (cnn_logits, _), (token_logits, _) = self.net.forward_streams(inputs)
        losses = {
            "supervised_cnn": ce_dice_loss(cnn_logits[:n_l], batch.label_l),
            "supervised_transformer": ce_dice_loss(token_logits[:n_l], batch.label_l),
        }
        if not semi:
            zero = cnn_logits.new_zeros(())
            return {**losses, "unsupervised_cnn": zero, "unsupervised_transformer": zero}
        with torch.no_grad(), eval_mode(self.net, o.pseudo_label_eval_mode):
            (weak_cnn, _), (weak_token, _) = self.net.forward_streams(batch.image_u)
        for_cnn, for_token = fuse_pseudo_labels(weak_cnn, weak_token, o.label_source)
        terms = (
            ("cnn", cnn_logits, for_cnn, o.cnn_ratio),
            ("transformer", token_logits, for_token, o.transformer_ratio),
        )
        for name, logits, (labels, confidence), ratio in terms:
            mask = (confidence >= o.threshold).float()
            self.log(f"mask_ratio_{name}", mask.mean())
            unsup = pseudo_label_loss(logits[n_l:], labels, mask, o.unsup_loss)
            losses[f"unsupervised_{name}"] = o.unsup_weight * ratio * unsup
        return losses

    def predictor(self) -> nn.Module:
        return self.net

    def ensemble_members(self) -> list[nn.Module]:
        return list(self._heads)

    def optimised_modules(self) -> dict[str, nn.Module]:
        return {"cnn": self.net.cnn, "transformer": self.net.transformer}
