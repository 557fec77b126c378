"""Semiformer: CNN-led pseudo-labels for both heads, label-source rules, burn-in, detached weak view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medsemi.data.cases import DatasetInfo
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.semiformer import Semiformer, fuse_pseudo_labels

INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)
TINY_DUAL = {"widths": (4, 8, 16, 32, 64), "embed_dim": 16, "depth": 3, "num_heads": 2, "img_size": 32}


def _method(**options) -> Semiformer:
    context = MethodContext(info=INFO, net=NetSpec("dual_stream", TINY_DUAL), iterations=100)
    return create_method("semiformer", options, context)  # type: ignore[return-value]


def _batch(requires_grad: bool = False) -> Batch:
    weak = torch.randn(2, 1, 32, 32, requires_grad=requires_grad)
    strong = torch.randn(2, 1, 32, 32, requires_grad=requires_grad)
    return Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), weak, strong)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """(1, K, 1, P) logits whose softmax at pixel p is probs[p]."""
    return torch.tensor(probs).log().T.reshape(1, len(probs[0]), 1, len(probs))


def test_label_sources_on_constructed_predictions() -> None:
    cnn = _logits([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    token = _logits([[0.6, 0.3, 0.1], [0.05, 0.9, 0.05], [0.7, 0.2, 0.1]])

    def pairs(source: str) -> list[tuple[list[int], list[float]]]:
        return [
            (lab.flatten().tolist(), [round(c, 3) for c in conf.flatten().tolist()])
            for lab, conf in fuse_pseudo_labels(cnn, token, source)
        ]

    cnn_labels = ([0, 1, 2], [0.9, 0.7, 0.8])
    token_labels = ([0, 1, 0], [0.6, 0.9, 0.7])
    assert pairs("cnn") == [cnn_labels, cnn_labels]
    assert pairs("transformer") == [token_labels, token_labels]
    assert pairs("cross") == [
        token_labels,
        cnn_labels,
    ]  # (target of the CNN head, target of the transformer head)
    agree = (
        [0, 1, 2],
        [0.6, 0.7, 0.0],
    )  # both must agree; confidence = the lower one; disagreement never passes
    assert pairs("agree") == [agree, agree]
    larger = ([0, 1, 2], [0.9, 0.9, 0.8])
    assert pairs("more_confident") == [larger, larger]
    with pytest.raises(ValueError, match="label_source"):
        fuse_pseudo_labels(cnn, token, "vote")


def test_burn_in_is_supervised_only_then_both_heads_learn_from_the_weak_view() -> None:
    method = _method(threshold=0.0).train()
    assert method.burnin == 5
    early = method.training_step(_batch(), 4)
    assert early["unsupervised_cnn"].item() == 0.0 and early["unsupervised_transformer"].item() == 0.0
    batch = _batch(requires_grad=True)
    losses = method.training_step(batch, 5)
    assert method.net.training, "the eval-mode pseudo-labelling must restore train mode"
    assert losses["unsupervised_cnn"] > 0 and losses["unsupervised_transformer"] > 0
    losses["unsupervised_transformer"].backward()
    assert batch.image_u.grad is None, "the weak view only labels (no gradient)"
    assert batch.image_u_strong.grad.abs().sum() > 0
    net = method.net
    assert any(p.grad.abs().sum() > 0 for p in net.transformer.decoder.parameters())
    assert all(p.grad is None for p in net.cnn.decoder.parameters()), "the transformer's loss left its own stream"


def test_the_threshold_masks_unconfident_pixels() -> None:
    method = _method(threshold=1.0)
    losses = method.training_step(_batch(), 50)
    assert losses["unsupervised_cnn"].item() == 0.0 and losses["unsupervised_transformer"].item() == 0.0
    assert method.diagnostics["mask_ratio_cnn"] == 0.0


def test_predictor_head_and_ensemble_of_heads() -> None:
    method = _method(predictor="transformer")
    assert method.predictor().head == "transformer"
    x = torch.randn(1, 1, 32, 32)
    method.eval()
    cnn_view, token_view = method.ensemble_members()
    (cnn, _), (token, _) = method.net.forward_streams(x)
    assert torch.equal(cnn_view(x), cnn) and torch.equal(token_view(x), token)
    assert torch.equal(method.predictor()(x), token)
    assert set(method.state_dict()) == {f"net.{k}" for k in method.net.state_dict()}
    modules = method.optimised_modules()
    assert list(modules) == ["cnn", "transformer"]
    assert modules["transformer"].pos_embed is method.net.transformer.pos_embed


def test_a_unet_spec_shapes_the_cnn_stream_and_other_nets_are_refused() -> None:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=10)
    method = create_method("semiformer", {}, context)
    assert method.net.cnn.encoder.blocks[0][0].out_channels == 4
    with pytest.raises(ValueError, match="dual_stream"):
        create_method("semiformer", {}, MethodContext(info=INFO, net=NetSpec("vnet", {}), iterations=10))


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """3 iterations of configs/acdc/semiformer.yaml, tiny ViT stream at 32x32, no burn-in; 1 test volume."""
    run = short_run(
        "acdc/semiformer.yaml",
        acdc_root,
        "net.options={embed_dim: 16, depth: 3, num_heads: 2, img_size: 32}",
        "method.threshold=0.0",
        "method.burnin_fraction=0.0",
    )
    for row in run.rows:
        assert float(row["loss/unsupervised_cnn"]) > 0 and float(row["loss/unsupervised_transformer"]) > 0
