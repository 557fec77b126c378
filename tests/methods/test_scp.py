"""SCP-Net: prototypes, SPP/CPP, vote agreement, detached targets, the ambiguity options, 2D/3D, C classes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.data.cases import DatasetInfo
from medsemi.losses import one_hot
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.prototypes import class_prototypes, prototype_predictions, vote_agreement
from medsemi.methods.scp import SCP, unscaled_dice_loss

SMALL_NETS = {2: NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), 3: NetSpec("vnet", {"n_filters": 4})}


def _scp(num_classes: int = 4, dims: int = 2, **options: object) -> SCP:
    info = DatasetInfo("test", [f"c{i}" for i in range(num_classes)], spatial_dims=dims, in_channels=1)
    method = create_method("scp", options, MethodContext(info=info, net=SMALL_NETS[dims], iterations=100))
    assert isinstance(method, SCP)
    return method


class FixedFeatures(nn.Module):
    """A 'network' whose last decoder features are a parameter and whose head is a 1x1 conv."""

    def __init__(self, features: Tensor, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Parameter(features)
        self.head = nn.Conv2d(features.shape[1], num_classes, 1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.head(self.features)
        return (logits, self.features) if return_features else logits


def test_prototypes_are_soft_masked_averages() -> None:
    features = torch.randn(2, 3, 4, 5)
    probs = torch.rand(2, 4, 4, 5).softmax(1)
    prototypes = class_prototypes(features, probs)
    assert prototypes.shape == (2, 4, 3)
    for b in range(2):
        for c in range(4):
            weight = probs[b, c]
            expected = (features[b] * weight).sum((1, 2)) / (weight.sum() + 1e-5)
            torch.testing.assert_close(prototypes[b, c], expected)


def test_hard_mask_prototype_is_the_region_mean() -> None:
    features = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    prototypes = class_prototypes(features, one_hot(labels, 2), eps=0.0)
    torch.testing.assert_close(prototypes[0, 1], features[0, :, :2].mean((1, 2)))
    torch.testing.assert_close(prototypes[0, 0], features[0, :, 2:].mean((1, 2)))


def _cosine_to(features: Tensor, prototypes: Tensor) -> Tensor:
    """(D, H, W) pixels against (C, D) prototypes -> (C, H, W) cosines, by the textbook formula."""
    return torch.stack([F.cosine_similarity(features, p[:, None, None], dim=0) for p in prototypes])


def test_spp_and_cpp_match_the_hand_formula() -> None:
    features, probs = torch.randn(3, 5, 4, 4), torch.randn(3, 2, 4, 4).softmax(1)
    prototypes = class_prototypes(features, probs)
    out = prototype_predictions(features, probs)
    for b in range(3):
        torch.testing.assert_close(out.self_logits[b], _cosine_to(features[b], prototypes[b]))
        exp_sums = sum(_cosine_to(features[b], prototypes[k]).exp() for k in range(3) if k != b)
        torch.testing.assert_close(out.cross_probs[b], exp_sums / exp_sums.sum(0))


def test_cpp_uses_only_other_images_prototypes() -> None:
    features, probs = torch.randn(3, 5, 6, 6), torch.randn(3, 3, 6, 6).softmax(1)
    changed = probs.clone()
    changed[0] = torch.randn(3, 6, 6).softmax(0)  # moves only image 0's prototypes
    before, after = prototype_predictions(features, probs), prototype_predictions(features, changed)
    torch.testing.assert_close(after.cross_probs[0], before.cross_probs[0])
    assert not torch.allclose(after.cross_probs[1], before.cross_probs[1])
    assert not torch.allclose(after.self_logits[0], before.self_logits[0])


def test_cross_samples_need_two_images() -> None:
    with pytest.raises(ValueError, match="two images"):
        prototype_predictions(torch.randn(1, 4, 3, 3), torch.rand(1, 2, 3, 3).softmax(1))


@pytest.mark.parametrize("num_classes", [2, 4, 8])
def test_agreement_is_one_for_unanimous_votes_and_zero_for_uniform(num_classes: int) -> None:
    batch, pixels = num_classes, 5
    unanimous = torch.rand(batch, pixels, batch, num_classes)
    unanimous[..., num_classes - 1] += 2.0
    torch.testing.assert_close(vote_agreement(unanimous), torch.ones(batch, pixels), atol=1e-5, rtol=0)
    # Prototype set b' votes for class b': one vote per class.
    uniform = torch.rand(batch, pixels, batch, num_classes) + 2.0 * torch.eye(batch)[None, None]
    torch.testing.assert_close(vote_agreement(uniform), torch.zeros(batch, pixels), atol=1e-5, rtol=0)
    # Half the sets vote class 0, half class 1: 1 - log 2 / log C.
    split = torch.zeros(2, pixels, 2, num_classes)
    split[:, :, 0, 0] = split[:, :, 1, 1] = 1.0
    expected = torch.full((2, pixels), 1 - math.log(2) / math.log(num_classes))
    torch.testing.assert_close(vote_agreement(split), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes", [2, 4, 8])
def test_one_step_gives_finite_losses_and_gradient(num_classes: int, make_batch: Callable[..., Batch]) -> None:
    method = _scp(num_classes).train()
    losses = method.training_step(make_batch((32, 32), num_classes), step=150 * 1000)
    assert set(losses) == {"supervised", "self_consistency", "cross_consistency"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    (losses["self_consistency"] + losses["cross_consistency"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    assert 0.0 <= method.diagnostics["prototype_agreement"] <= 1.0


def test_3d_step_on_voxels(make_batch: Callable[..., Batch]) -> None:
    method = _scp(num_classes=2, dims=3).train()
    losses = method.training_step(make_batch((16, 16, 16), 2), step=0)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def _reference_consistency(net: FixedFeatures, detach: bool) -> tuple[Tensor, Tensor]:
    """SPCC and CPCC (agreement weighting) by hand, with or without detaching the prototype targets."""
    logits = net.head(net.features)
    probs = logits.softmax(1)
    features, masks = (net.features.detach(), probs.detach()) if detach else (net.features, probs)
    proto = prototype_predictions(features, masks)
    self_probs = proto.self_logits.softmax(1)
    weight = (self_probs.amax(1) * proto.agreement).unsqueeze(1)
    return ((self_probs - probs) ** 2).mean(), (weight * (proto.cross_probs - probs) ** 2).mean()


@pytest.mark.parametrize("term", ["self_consistency", "cross_consistency"])
def test_prototype_targets_are_detached(term: str, make_batch: Callable[..., Batch]) -> None:
    torch.manual_seed(1)
    net = FixedFeatures(torch.randn(4, 6, 8, 8), num_classes=3)
    method = _scp(num_classes=3)
    method.student = net
    step = 150 * 1000  # full ramp: weight 0.1, halved
    loss = method.training_step(make_batch((8, 8), 3), step)[term]
    (grad,) = torch.autograd.grad(loss, net.features)
    index = 0 if term == "self_consistency" else 1
    detached = 0.05 * _reference_consistency(net, detach=True)[index]
    attached = 0.05 * _reference_consistency(net, detach=False)[index]
    torch.testing.assert_close(loss, detached)
    torch.testing.assert_close(grad, torch.autograd.grad(detached, net.features)[0])
    assert not torch.allclose(grad, torch.autograd.grad(attached, net.features)[0])


def test_cross_weight_direction(make_batch: Callable[..., Batch]) -> None:
    """Every image has the same feature map, so all prototype sets vote alike: agreement 1, disagreement 0."""
    features = torch.randn(1, 3, 6, 6).expand(4, -1, -1, -1).clone()
    terms = {}
    for mode in ("agreement", "disagreement"):
        method = _scp(num_classes=3, cross_weight=mode)
        method.student = FixedFeatures(features, num_classes=3)
        terms[mode] = method.training_step(make_batch((6, 6), 3), step=150 * 1000)["cross_consistency"]
    assert terms["agreement"] > 0
    assert abs(terms["disagreement"]) < 1e-5 * terms["agreement"]


def test_dice_variants(make_batch: Callable[..., Batch]) -> None:
    labels = torch.randint(0, 3, (2, 8, 8))
    perfect = one_hot(labels, 3)
    torch.testing.assert_close(unscaled_dice_loss(perfect, labels), torch.tensor(0.5))
    method_code, method_standard = _scp(3, dice="code"), _scp(3, dice="standard")
    method_standard.load_state_dict(method_code.state_dict())
    batch = make_batch((32, 32), 3)
    code = method_code.eval().training_step(batch, 0)["supervised"]
    standard = method_standard.eval().training_step(batch, 0)["supervised"]
    assert code > standard


def test_consistency_ramp_in_epochs_of_150_iterations(make_batch: Callable[..., Batch]) -> None:
    method = _scp(num_classes=2).eval()  # eval: no dropout, so both steps see the same prediction
    batch = make_batch((32, 32), 2)
    start = method.training_step(batch, step=149)["self_consistency"]
    end = method.training_step(batch, step=150 * 1000)["self_consistency"]
    torch.testing.assert_close(end / start, torch.tensor(math.exp(5.0)))
    assert method.diagnostics["consistency_weight"] == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [{"cross_weight": "entropy"}, {"dice": "squared"}])
def test_unknown_option_values_are_errors(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="scp"):
        _scp(2, **bad)


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """10 iterations of configs/acdc/scp.yaml (narrow, 64x64), consistency at full weight; 1 test volume."""
    run = short_run(
        "acdc/scp.yaml",
        acdc_root,
        "net.options.widths=[8,8,16,32,64]",
        "method.rampup_epochs=0",
        limit=None,
        patch=(64, 64),
        iterations=10,
        val_limit=1,
    )
    for row in run.rows:
        assert float(row["consistency_weight"]) == pytest.approx(0.1)
        assert 0.0 <= float(row["prototype_agreement"]) <= 1.0
        terms = ("supervised", "self_consistency", "cross_consistency")
        assert all(math.isfinite(float(row[f"loss/{k}"])) for k in terms)
        assert float(row["loss/cross_consistency"]) > 0
