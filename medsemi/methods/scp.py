"""SCP-Net (Zhang et al., MICCAI 2023): one network pulled toward its own prototype-based predictions.

Per-image class prototypes from the last decoder features and the network's own soft prediction give a
self-aware prediction (SPP, own prototypes) and a cross-sample one (CPP, the other images' prototypes). The
classifier's softmax is pulled toward both, which act as detached targets: a plain MSE to the SPP (SPCC) and
an MSE to the CPP weighted per pixel by the SPP confidence and by the vote agreement of the prototype sets
(CPCC). See docs/methods/scp.md for the two ambiguities of the released code (`cross_weight`, `dice`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medsemi.losses import one_hot, soft_dice_loss
from medsemi.methods.base import Batch, MethodContext, StudentMethod, register_method
from medsemi.methods.options import ConsistencyRampOptions, epochs
from medsemi.methods.prototypes import prototype_predictions


@dataclass
class SCPOptions(ConsistencyRampOptions):
    """Defaults of the released SCPNettrain.py; `cross_weight` and `dice` default to the paper's description.

    cross_weight: "agreement" weights CPCC by 1 - H(votes)/log C (reliable where the prototype sets agree);
    "disagreement" by H(votes)/log C, what the released code computes.
    dice: "standard" 1 - 2|PY|/(|P|^2+|Y|^2); "code" the released DiceLoss without the factor 2.
    """

    rampup_epochs: float = epochs(1000.0)
    cross_weight: Literal["agreement", "disagreement"] = "agreement"
    dice: Literal["standard", "code"] = "standard"


def unscaled_dice_loss(probs: Tensor, labels: Tensor) -> Tensor:
    """The released SCP-Net DiceLoss: mean over classes of 1 - sum(PY) / (sum(P^2) + sum(Y^2) + 1e-10).

    Without the factor 2 a perfect prediction scores 0.5 per class, and the Dice gradient is halved.
    """
    target = one_hot(labels, probs.shape[1])
    dims = [0, *range(2, probs.dim())]
    intersection = (probs * target).sum(dims)
    denominator = (probs * probs).sum(dims) + (target * target).sum(dims) + 1e-10
    return (1 - intersection / denominator).mean()


@register_method("scp")
class SCP(StudentMethod):
    """Supervised 0.5 (CE + Dice) on the labeled images; SPCC and CPCC on all images, labeled included."""

    Options = SCPOptions

    def __init__(self, options: SCPOptions, context: MethodContext) -> None:
        super().__init__(options, context)

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_labeled = batch.image_l.shape[0]
        logits, features = self.student(torch.cat([batch.image_l, batch.image_u]), return_features=True)
        probs = logits.softmax(1)
        # Every prototype-derived term is a detached target, so the branch needs no graph.
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            proto = prototype_predictions(features.float(), probs.float())
            self_probs = proto.self_logits.softmax(1)
            reliability = proto.agreement if o.cross_weight == "agreement" else 1 - proto.agreement
            pixel_weight = (self_probs.amax(1) * reliability).unsqueeze(1)

        dice = soft_dice_loss if o.dice == "standard" else unscaled_dice_loss
        cross_entropy = F.cross_entropy(logits[:n_labeled], batch.label_l.long())
        supervised = 0.5 * (cross_entropy + dice(probs[:n_labeled], batch.label_l))
        self_consistency = torch.mean((self_probs - probs) ** 2)
        cross_consistency = torch.mean(pixel_weight * (proto.cross_probs - probs) ** 2)

        weight = o.ramped(step)
        self.log("consistency_weight", weight)
        self.log("prototype_agreement", proto.agreement.mean())
        return {
            "supervised": supervised,
            "self_consistency": 0.5 * weight * self_consistency,
            "cross_consistency": 0.5 * weight * cross_consistency,
        }
