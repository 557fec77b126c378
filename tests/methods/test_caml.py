"""CAML: memory bank, omni-correlation consistency, mutual consistency, gradient flow, ramp-up."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medsemi.data.cases import DatasetInfo
from medsemi.losses import ce_dice_loss, sigmoid_rampup, soft_dice_loss
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.caml import CAML, FeatureMemory, correlation_consistency, sharpen

SHAPE_2D = (16, 16)


def _method(dims: int = 2, **options: Any) -> CAML:
    """A tiny CAML without dropout, so that random-init predictions vary over the image."""
    info = DatasetInfo("test", ["background", "a", "b"], spatial_dims=dims, in_channels=1)
    net = NetSpec("caml", {"n_filters": 4, "dropout": 0.0})
    method = create_method("caml", {"memory_slots": 4, "memory_per_class": 8, **options}, MethodContext(info, net, 100))
    assert isinstance(method, CAML)
    return method.train()


def test_memory_slots_are_overwritten_per_slot_with_detached_embeddings() -> None:
    memory = FeatureMemory(slots=3, num_classes=2, per_class=4, dim=2)
    first = torch.ones(3, 2, 4, 2, requires_grad=True)
    memory.write(torch.arange(3), first * 1.0, torch.tensor([[4, 2], [9, 0], [1, 3]]))
    assert not memory.embeddings.requires_grad
    assert torch.equal(memory.embeddings[0, 1, :, 0], torch.tensor([1.0, 1.0, 0.0, 0.0])), "past count: zeroed"
    assert torch.equal(memory.embeddings[1, 1], torch.zeros(4, 2))

    memory.write(torch.tensor([1]), torch.full((1, 2, 4, 2), 7.0), torch.tensor([[4, 4]]))
    assert torch.equal(memory.embeddings[1], torch.full((2, 4, 2), 7.0))
    assert memory.counts[1].tolist() == [4, 4]
    assert torch.equal(memory.embeddings[0, 0], torch.ones(4, 2)) and torch.equal(
        memory.embeddings[2, 0, :1], torch.ones(1, 2)
    )
    assert memory.counts[0].tolist() == [4, 2] and memory.counts[2].tolist() == [1, 3]


def test_memory_claims_slots_in_ring_order() -> None:
    memory = FeatureMemory(slots=3, num_classes=2, per_class=4, dim=2)
    assert memory.claim_slots(2).tolist() == [0, 1]
    assert memory.claim_slots(2).tolist() == [2, 0]
    with pytest.raises(ValueError, match="memory_slots"):
        memory.claim_slots(4)


def test_memory_sample_is_uniform_over_all_voxels_without_replacement() -> None:
    """Slot 0 saw 12 voxels (4 stored), slot 1 saw 4: a uniform draw of 4 takes 4 * 4/16 = 1 from slot 1."""
    memory = FeatureMemory(slots=2, num_classes=2, per_class=4, dim=1)
    ids = torch.arange(8.0).view(2, 1, 4, 1).expand(2, 2, 4, 1)
    memory.write(torch.arange(2), ids, torch.tensor([[12, 3], [4, 0]]))
    from_slot_1 = []
    for _ in range(400):
        sample, too_few = memory.sample()
        assert too_few is None, "class 1 has only 3 voxels in the bank"
        assert sample is not None and sample.shape == (4, 1)
        assert sample.unique().numel() == 4
        from_slot_1.append(float((sample >= 4).sum()))
    assert abs(sum(from_slot_1) / len(from_slot_1) - 1.0) < 0.15


def test_memory_holds_only_voxels_both_sub_networks_classify_correctly() -> None:
    method = _method(memory_per_class=16)
    features = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)]
    labels = torch.randint(0, 3, (1, 4, 4))
    correct = torch.rand(1, 4, 4) > 0.4
    bn_before = method.net.projection_heads[0][1].running_mean.clone()
    method.update_memory(features, labels, correct)

    heads = method.net.projection_heads.eval()
    with torch.no_grad():
        expected = (heads[0](features[0].flatten(2)[0].T) + heads[1](features[1].flatten(2)[0].T)) / 2
    method.net.train()
    for c in range(3):
        chosen = (correct & (labels == c)).flatten()
        n = int(chosen.sum())
        assert method.memory.counts[0, c] == n
        stored = method.memory.embeddings[0, c, :n]
        assert torch.allclose(
            stored[stored[:, 0].argsort()], expected[chosen][expected[chosen][:, 0].argsort()], atol=1e-6
        )
        assert torch.equal(method.memory.embeddings[0, c, n:], torch.zeros(16 - n, 32))
    assert torch.equal(method.net.projection_heads[0][1].running_mean, bn_before), "write must use eval-mode BN"
    assert method.net.projection_heads.training


def test_correlation_consistency_equals_the_formula() -> None:
    query_v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    query_a = torch.tensor([[0.5, 0.5], [1.0, -1.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tau = 0.5
    expected = 0.0
    for q_v, q_a in zip(query_v.tolist(), query_a.tolist(), strict=True):
        logits_v = [sum(a * b for a, b in zip(q_v, k, strict=True)) / tau for k in keys.tolist()]
        logits_a = [sum(a * b for a, b in zip(q_a, k, strict=True)) / tau for k in keys.tolist()]
        row_v = [math.exp(x) / sum(math.exp(y) for y in logits_v) for x in logits_v]
        row_a = [math.exp(x) / sum(math.exp(y) for y in logits_a) for x in logits_a]
        expected += -sum(a * math.log(v + 1e-8) for a, v in zip(row_a, row_v, strict=True))
    value = correlation_consistency(query_v, query_a, keys, tau, detach=False)
    assert value.item() == pytest.approx(expected / 2, rel=1e-6)


def test_sharpen_is_the_mcnet_formula_for_two_classes_and_a_distribution_for_more() -> None:
    p = torch.tensor([0.5, 0.6, 0.9]).view(1, 3, 1)
    binary = torch.cat([p, 1 - p]).transpose(0, 1)  # (3 samples, 2 classes, 1 pixel)
    expected = p**10 / (p**10 + (1 - p) ** 10)
    torch.testing.assert_close(sharpen(binary, 0.1)[:, 0], expected.view(3, 1))
    four = torch.tensor([0.4, 0.3, 0.2, 0.1]).view(1, 4, 1)
    sharp = sharpen(four, 0.1)
    torch.testing.assert_close(sharp.sum(1), torch.ones(1, 1))
    # The per-channel MC-Net form sends every class below 0.5 to ~0: no target for this pixel at all.
    assert (four**10 / (four**10 + (1 - four) ** 10)).sum() < 0.02
    assert sharp[0, 0, 0] > 0.9 and sharp.argmax(1).item() == 0


def _grad_norms(method: CAML, loss: torch.Tensor) -> list[float]:
    """Total absolute gradient of `loss` on the vanilla and on the auxiliary sub-network."""
    norms = []
    for branch in method.net.branches:
        grads = torch.autograd.grad(loss, list(branch.parameters()), allow_unused=True, retain_graph=True)
        norms.append(sum(float(g.abs().sum()) for g in grads if g is not None))
    return norms


@pytest.mark.parametrize("detach", [False, True])
def test_consistency_and_correlation_reach_both_sub_networks_unless_detached(
    detach: bool, make_batch: Callable[..., Batch]
) -> None:
    method = _method(detach_targets=detach)
    method.memory.write(torch.arange(4), torch.randn(4, 3, 8, 32), torch.full((4, 3), 8))
    losses = method.training_step(make_batch(SHAPE_2D), step=3000)
    assert method.diagnostics["memory_classes"] == 3 and method.diagnostics["correlation_rows"] >= 2
    assert losses["correlation"] > 0
    for name in ("supervised", "consistency"):
        vanilla, auxiliary = _grad_norms(method, losses[name])
        assert vanilla > 0 and auxiliary > 0, name
    vanilla, auxiliary = _grad_norms(method, losses["correlation"])
    assert vanilla > 0
    assert (auxiliary == 0) if detach else (auxiliary > 0)


def test_supervised_loss_is_dice_over_all_classes_when_multiclass_and_ce_dice_on_request(
    make_batch: Callable[..., Batch],
) -> None:
    batch = make_batch(SHAPE_2D)
    images, n = torch.cat([batch.image_l, batch.image_u]), batch.image_l.shape[0]
    for choice in ("auto", "dice", "foreground_dice", "ce_dice"):
        method = _method(supervised_loss=choice)
        torch.manual_seed(1)
        outputs = [branch(images, return_features=True) for branch in method.net.branches]
        if choice != "ce_dice":
            expected = sum(
                soft_dice_loss(
                    logits[:n].softmax(1),
                    batch.label_l,
                    smooth=1e-8,
                    squared_denominator=False,
                    include_background=choice != "foreground_dice",  # the test batch has 3 classes
                )
                for logits, _ in outputs
            )
        else:
            expected = sum(ce_dice_loss(logits[:n], batch.label_l) for logits, _ in outputs)
        torch.manual_seed(1)
        losses = method.training_step(batch, step=0)
        torch.testing.assert_close(losses["supervised"], 0.5 * expected)
    with pytest.raises(ValueError, match="supervised_loss"):
        _method(supervised_loss="ce")


def test_ramp_follows_the_label_count_and_the_official_counter(make_batch: Callable[..., Batch]) -> None:
    method, batch = _method(), make_batch(SHAPE_2D)
    for rampup, step in [(20.0, 1499), (40.0, 1499), (15.0, 2249)]:
        method.options.rampup_epochs = rampup
        method.training_step(batch, step)
        ramp = sigmoid_rampup((step + 1) // 150, rampup)  # the official counter is one ahead of ours
        assert method.diagnostics["consistency_weight"] == pytest.approx(ramp)
        assert method.diagnostics["correlation_weight"] == pytest.approx(0.05 * ramp)
    assert method.diagnostics["consistency_weight"] == pytest.approx(1.0)


def test_3d_step_memory_in_state_dict_and_vanilla_predictor(make_batch: Callable[..., Batch]) -> None:
    method = _method(dims=3)
    losses = method.training_step(make_batch((16, 16, 16)), step=0)
    assert set(losses) == {"supervised", "consistency", "correlation"}
    assert all(torch.isfinite(v) for v in losses.values())
    state = method.state_dict()
    assert {"memory.embeddings", "memory.counts", "memory.next_slot"} <= set(state)
    assert int(state["memory.next_slot"]) == 2
    assert method.predictor() is method.net.vanilla


def _check_losses(rows: list[dict[str, str]]) -> None:
    for row in rows:
        assert all(math.isfinite(float(row[f"loss/{k}"])) for k in ("supervised", "consistency", "correlation"))
        assert float(row["consistency_weight"]) == pytest.approx(1.0)
    assert any(float(row["loss/correlation"]) > 0 for row in rows), "OCC never had both memory and queries"


@pytest.mark.real_data
@pytest.mark.slow
def test_la_short_3d_run_and_sliding_window_evaluation(la_root: Path, short_run: Callable[..., Any]) -> None:
    run = short_run(
        "la/caml.yaml",
        la_root,
        "data.labeled=2",
        "data.options.val_from_train=1",
        "net.options={n_filters: 4}",
        "method.memory_slots=2",
        "method.memory_per_class=64",
        "method.rampup_epochs=0",
        "eval.stride=[40,40,24]",
        limit=4,
        patch=(48, 48, 32),
        batch=1,
        validate=False,
        checkpoint="last",
    )
    _check_losses(run.rows)


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_2d_run_and_evaluation(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    run = short_run(
        "acdc/caml.yaml",
        acdc_root,
        "net.options={n_filters: 4}",
        "method.memory_per_class=64",
        "method.rampup_epochs=0",
        limit=100,
        patch=(64, 64),
        iterations=6,
        val_limit=1,
    )
    _check_losses(run.rows)
