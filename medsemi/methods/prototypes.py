"""Per-image class prototypes from a network's own soft prediction, and the predictions they make (SCP-Net).

Shapes: features (B, D, *spatial), probabilities (B, C, *spatial); any number of spatial dims (2D pixels, 3D
voxels) and classes. N is the number of pixels per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def class_prototypes(features: Tensor, probs: Tensor, eps: float = 1e-5) -> Tensor:
    """Soft masked average pooling, (B, C, D): mu[b, c] = sum_x F_b(x) P_bc(x) / (sum_x P_bc(x) + eps)."""
    masks = probs.flatten(2)
    return torch.einsum("bcn,bdn->bcd", masks, features.flatten(2)) / (masks.sum(-1, keepdim=True) + eps)


def prototype_similarity(features: Tensor, prototypes: Tensor) -> Tensor:
    """S[b, x, b', c] = cos(F_b(x), mu[b', c]): every pixel against every image's prototypes, (B, N, B, C)."""
    pixels = F.normalize(features.flatten(2), dim=1)
    return torch.einsum("bdn,kcd->bnkc", pixels, F.normalize(prototypes, dim=-1))


def vote_agreement(similarity: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - H(v)/log C per pixel, v the class-vote histogram of all B prototype sets (own included): (B, N).

    1 where every image's prototypes vote for the same class, 0 at a uniform vote. The released code one-hots
    the votes into 6 slots (so C <= 6); counting into C slots gives the same value for any C.
    """
    num_classes = similarity.shape[-1]
    votes = similarity.argmax(-1)
    counts = torch.zeros(*votes.shape[:2], num_classes, device=votes.device, dtype=similarity.dtype)
    counts.scatter_add_(2, votes, torch.ones_like(votes, dtype=similarity.dtype))
    histogram = counts / votes.shape[2]
    entropy = -(histogram * torch.log(histogram + eps)).sum(-1)
    return 1 - entropy / math.log(num_classes)


@dataclass
class PrototypePredictions:
    """self_logits: cosine to the image's own prototypes (SPP; softmax gives probabilities), (B, C, *spatial).
    cross_probs: class probabilities from the other images' prototypes (CPP), (B, C, *spatial).
    agreement: vote agreement of all images' prototype sets, (B, *spatial).
    """

    self_logits: Tensor
    cross_probs: Tensor
    agreement: Tensor


def prototype_predictions(features: Tensor, probs: Tensor) -> PrototypePredictions:
    """SPP, CPP and the vote agreement of one mini-batch, as SCP-Net's `Decoder_pro` computes them.

    CPP[b, x, c] = sum_{b' != b} exp(S[b, x, b', c]) / sum_{c', b' != b} exp(S[b, x, b', c']) (temperature 1).
    """
    batch, num_classes, spatial = features.shape[0], probs.shape[1], features.shape[2:]
    if batch < 2:
        raise ValueError("cross-sample prototypes need at least two images in the batch")
    similarity = prototype_similarity(features, class_prototypes(features, probs))
    self_logits = torch.diagonal(similarity, dim1=0, dim2=2).permute(2, 0, 1)
    others = ~torch.eye(batch, dtype=torch.bool, device=features.device)
    cross = (similarity.exp() * others[:, None, :, None]).sum(2)
    cross = cross / cross.sum(-1, keepdim=True)

    def to_map(per_pixel: Tensor) -> Tensor:
        return per_pixel.transpose(1, 2).reshape(batch, num_classes, *spatial)

    return PrototypePredictions(
        self_logits=to_map(self_logits),
        cross_probs=to_map(cross),
        agreement=vote_agreement(similarity).reshape(batch, *spatial),
    )
