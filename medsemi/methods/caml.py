"""CAML (Gao et al., MICCAI 2023): mutual learning of two V-Nets plus omni-correlation consistency (OCC).

Loss = 0.5 * Dice + ramp * (1.0 * mutual consistency + 0.05 * OCC), as `train_caml.py` of the official code.
OCC: labeled voxel embeddings that both sub-networks classify correctly go into a memory bank; the confident
unlabeled voxels of each sub-network get a softmax "correlation" row over a sample of that bank, and f_a's
rows are the cross-entropy target of f_v's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.losses import ce_dice_loss, soft_dice_loss
from medsemi.methods.base import Batch, Method, MethodContext, register_method
from medsemi.methods.options import ConsistencyRampOptions, epochs
from medsemi.nets.caml import CAMLNet


@dataclass
class CAMLOptions(ConsistencyRampOptions):
    """Defaults: the official LA 8-scan run (`LA_CAML_8_..._rampup_20.0_...`).

    supervised_loss: "foreground_dice" = the official loss (Dice of the foreground channel of a 2-way softmax);
    "dice" = Dice over every class, background included; "auto" = foreground_dice for two classes and dice for
    more, where a foreground-only Dice leaves background unsupervised (docs/methods/caml.md); "ce_dice" =
    0.5 (CE + Dice), the SSL4MIS loss.
    """

    supervised_weight: float = 0.5
    consistency: float = 1.0
    correlation_weight: float = 0.05
    rampup_epochs: float = epochs(20.0)  # official runs: 40 for 4 labeled scans, 20 for 8, 15 for 16
    sharpen_temperature: float = 0.1
    memory_slots: int = 8  # official: one slot per labeled case, so data.labeled
    memory_per_class: int = 256
    queries_per_class: int = 12800
    correlation_temperature: float = 0.1
    normalize_embeddings: bool = False  # official: raw dot products
    detach_targets: bool = False  # official: gradients flow into both sides of L_c and L_o
    supervised_loss: Literal["auto", "dice", "foreground_dice", "ce_dice"] = "auto"


class FeatureMemory(nn.Module):
    """Per-slot, per-class memory of labeled voxel embeddings, held in buffers on the training device.

    A slot keeps, per class, the number of qualifying voxels of the crop last written to it and a uniformly
    random subset of at most `per_class` of their embeddings. That is enough to draw `per_class` embeddings
    uniformly without replacement from the pooled voxels of all slots, as the official code does from every
    stored voxel, at a fixed size (no CPU round trip, and small enough to checkpoint).
    """

    def __init__(self, slots: int, num_classes: int, per_class: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(slots, num_classes, per_class, dim))
        self.register_buffer("counts", torch.zeros(slots, num_classes, dtype=torch.long))
        self.register_buffer("next_slot", torch.zeros((), dtype=torch.long))

    @property
    def slots(self) -> int:
        return self.counts.shape[0]

    @property
    def per_class(self) -> int:
        return self.embeddings.shape[2]

    def claim_slots(self, n: int) -> Tensor:
        """The next `n` slots in ring order: the batch names no case, so the last crops written are kept."""
        if n > self.slots:
            raise ValueError(f"caml: memory_slots ({self.slots}) must be at least the labeled batch size ({n})")
        slots = (self.next_slot + torch.arange(n, device=self.counts.device)) % self.slots
        self.next_slot.copy_((self.next_slot + n) % self.slots)
        return slots

    @torch.no_grad()
    def write(self, slots: Tensor, embeddings: Tensor, counts: Tensor) -> None:
        """Overwrite `slots` (S,) with embeddings (S, classes, k <= per_class, dim) and counts (S, classes).

        Entries past min(count, k) are ignored; they are zeroed so that a slot holds nothing else.
        """
        k = embeddings.shape[2]
        valid = torch.arange(k, device=counts.device) < counts.unsqueeze(-1)
        stored = torch.zeros_like(self.embeddings[slots])
        stored[:, :, :k] = embeddings.detach().to(stored.dtype) * valid.unsqueeze(-1)
        self.embeddings[slots] = stored
        self.counts[slots] = counts

    @torch.no_grad()
    def sample(self) -> list[Tensor | None]:
        """Per class, `per_class` embeddings drawn uniformly without replacement from all slots' voxels, or
        None when the slots hold fewer voxels of that class."""
        m = self.per_class
        stored = self.counts.clamp(max=m)
        slot_range = torch.arange(m, device=self.counts.device)
        totals = self.counts.sum(0).tolist()
        samples: list[Tensor | None] = []
        for c, total in enumerate(totals):
            if total < m:
                samples.append(None)
                continue
            positions = torch.randperm(total, device=self.counts.device)[:m]
            slot_of = torch.bucketize(positions, self.counts[:, c].cumsum(0), right=True)
            taken = torch.bincount(slot_of, minlength=self.slots)
            keys = torch.rand(self.slots, m, device=self.counts.device)
            keys = keys.masked_fill(slot_range >= stored[:, c, None], 2.0)
            rank = keys.argsort(1).argsort(1)
            samples.append(self.embeddings[:, c][rank < taken[:, None]])
        return samples


def sharpen(probs: Tensor, temperature: float) -> Tensor:
    """Temperature sharpening over classes: p_c^(1/T) / sum_k p_k^(1/T).

    For two classes this is MC-Net's per-channel p^(1/T) / (p^(1/T) + (1 - p)^(1/T)) exactly; for C > 2 the
    per-channel form would push every class below 0.5 towards 0 and leave rows summing to less than 1.
    Computed in log space in float32, so p^(1/T) cannot underflow to 0/0.
    """
    logits = torch.log(probs.float().clamp_min(1e-12)) / temperature
    return logits.softmax(1).to(probs.dtype)


def correlation_consistency(query_v: Tensor, query_a: Tensor, keys: Tensor, temperature: float, detach: bool) -> Tensor:
    """OCC loss: mean over rows of the cross-entropy from f_a's correlation row (target) to f_v's.

    Rows: softmax(query @ keys^T / temperature); computed in float32 (T = 0.1 on raw dot products is peaky).
    """
    with torch.autocast(query_v.device.type, enabled=False):
        keys = keys.float()
        corr_v = torch.softmax(query_v.float() @ keys.T / temperature, dim=1)
        corr_a = torch.softmax(query_a.float() @ keys.T / temperature, dim=1)
        if detach:
            corr_a = corr_a.detach()
        return -(corr_a * torch.log(corr_v + 1e-8)).sum(1).mean()


def voxels(features: Tensor) -> Tensor:
    """(B, F, *spatial) -> (B * voxels, F), rows in the order of `reshape(-1)` of a (B, *spatial) map."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


def caml_net(context: MethodContext) -> CAMLNet:
    """CAML always trains its own V-Net pair; a `caml` or `vnet` net spec passes its options through, any
    other backbone only its base width (a U-Net's first width), so small test backbones stay small."""
    spec = context.net
    if spec.name in ("caml", "vnet"):
        options = dict(spec.options)
    else:
        widths = spec.options.get("widths")
        options = {"n_filters": widths[0]} if widths else {}
    return context.build_net("caml", **{**options, "spatial_dims": context.info.spatial_dims})


@register_method("caml")
class CAML(Method):
    """f_v (vanilla) and f_a (auxiliary, with CMA) learn from each other; f_v is the predictor."""

    Options = CAMLOptions

    def __init__(self, options: CAMLOptions, context: MethodContext) -> None:
        super().__init__(options, context)
        self.net = caml_net(context)
        self.memory = FeatureMemory(
            options.memory_slots, context.info.num_classes, options.memory_per_class, self.net.feat_dim
        )

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        o = self.options
        n_labeled = batch.image_l.shape[0]
        images = torch.cat([batch.image_l, batch.image_u])
        outputs = [branch(images, return_features=True) for branch in self.net.branches]
        probs = [logits.softmax(1) for logits, _ in outputs]
        features = [feature for _, feature in outputs]

        loss = o.supervised_loss
        if loss == "auto":
            loss = "foreground_dice" if probs[0].shape[1] == 2 else "dice"
        if loss in ("dice", "foreground_dice"):
            supervised = sum(
                soft_dice_loss(
                    p[:n_labeled],
                    batch.label_l,
                    smooth=1e-8,
                    squared_denominator=False,
                    include_background=loss == "dice",
                )
                for p in probs
            )
        else:
            supervised = sum(ce_dice_loss(logits[:n_labeled], batch.label_l) for logits, _ in outputs)
        targets = [sharpen(p, o.sharpen_temperature) for p in probs]
        if o.detach_targets:
            targets = [t.detach() for t in targets]
        consistency = F.mse_loss(probs[0], targets[1]) + F.mse_loss(probs[1], targets[0])
        correlation = self.omni_correlation(probs, features, batch.label_l)

        # The official loop increments its counter before computing the ramp, hence step + 1.
        weight_c = o.ramped(step + 1)
        weight_o = o.ramped(step + 1, o.correlation_weight)
        self.log("consistency_weight", weight_c)
        self.log("correlation_weight", weight_o)
        return {
            "supervised": o.supervised_weight * supervised,
            "consistency": weight_c * consistency,
            "correlation": weight_o * correlation,
        }

    def update_memory(self, features: list[Tensor], labels: Tensor, correct: Tensor) -> None:
        """Write each labeled sample's correctly classified voxels, projected by both branches' projection
        heads in eval mode (running BN statistics) and averaged, into the next memory slot."""
        num_classes = self.context.info.num_classes
        n, k = labels.shape[0], min(self.memory.per_class, labels[0].numel())
        flat_labels, flat_correct = labels.reshape(n, 1, -1), correct.reshape(n, 1, -1)
        classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
        qualifies = flat_correct & (flat_labels == classes)  # (n, classes, voxels)
        keys = torch.where(qualifies, torch.rand(flat_labels.shape, device=labels.device), 2.0)
        chosen = keys.topk(k, dim=-1, largest=False).indices.reshape(n, -1, 1)  # a random subset per class
        heads = self.net.projection_heads
        was_training = heads.training
        heads.eval()
        with torch.no_grad():
            projected = []
            for head, feature in zip(heads, features, strict=True):
                rows = torch.gather(feature.flatten(2).transpose(1, 2), 1, chosen.expand(-1, -1, feature.shape[1]))
                projected.append(head(rows.reshape(-1, feature.shape[1])))
            embeddings = (projected[0] + projected[1]) / 2
            if self.options.normalize_embeddings:
                embeddings = F.normalize(embeddings, dim=-1)
        heads.train(was_training)
        self.memory.write(self.memory.claim_slots(n), embeddings.view(n, num_classes, k, -1), qualifies.sum(-1))

    def omni_correlation(self, probs: list[Tensor], features: list[Tensor], labels: Tensor) -> Tensor:
        o = self.options
        n_labeled = labels.shape[0]
        predictions = [p.argmax(1) for p in probs]
        correct = (predictions[0][:n_labeled] == labels) & (predictions[1][:n_labeled] == labels)
        self.update_memory([f[:n_labeled] for f in features], labels, correct)
        memory = [keys for keys in self.memory.sample() if keys is not None]
        self.log("memory_classes", len(memory))

        confidence, pseudo = probs[0][n_labeled:].max(1)
        agree = (pseudo == predictions[1][n_labeled:]).reshape(-1)
        confidence, pseudo = confidence.reshape(-1)[agree], pseudo.reshape(-1)[agree]
        rows = []
        for c in range(probs[0].shape[1]):
            members = torch.nonzero(pseudo == c).squeeze(1)
            if members.numel() > 1:  # the official code skips classes with a single voxel
                top = confidence[members].topk(min(o.queries_per_class, members.numel())).indices
                rows.append(members[top])
        self.log("correlation_rows", sum(r.numel() for r in rows))
        if not memory or not rows:
            return probs[0].new_zeros(())

        # Heads in train mode on every agreeing voxel (their BN statistics), then the most confident rows.
        selected = torch.cat(rows)
        queries = []
        for k, feature in enumerate(features):
            projected = self.net.projection_heads[k](voxels(feature[n_labeled:])[agree])
            query = self.net.prediction_heads[k](projected)[selected]
            queries.append(F.normalize(query, dim=-1) if o.normalize_embeddings else query)
        return correlation_consistency(
            queries[0], queries[1], torch.cat(memory), o.correlation_temperature, o.detach_targets
        )

    def predictor(self) -> nn.Module:
        return self.net.vanilla

    def ensemble_members(self) -> list[nn.Module]:
        return list(self.net.branches)

    def optimised_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}
