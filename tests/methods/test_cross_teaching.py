"""Cross teaching: U-Net <-> transformer, Dice towards the other's argmax, per-network optimisers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medsemi.data.cases import DatasetInfo
from medsemi.losses import ce_dice_loss, soft_dice_loss
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec, method_class
from medsemi.methods.cross_teaching import CrossTeaching
from medsemi.nets.transformer import SwinSegmenter
from medsemi.nets.unet import UNet2D

INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)
TINY_SWIN = {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4}


def _method(**options) -> CrossTeaching:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    return create_method("cross_teaching", {"transformer_options": TINY_SWIN, **options}, context)  # type: ignore[return-value]


def test_unet_and_transformer_each_with_its_own_optimiser_and_the_unet_predicts() -> None:
    method = _method()
    modules = method.optimised_modules()
    assert list(modules) == ["cnn", "transformer"]
    assert isinstance(modules["cnn"], UNet2D) and isinstance(modules["transformer"], SwinSegmenter)
    assert method.predictor() is modules["cnn"]
    other = _method(predictor="transformer")
    assert other.predictor() is other.nets["transformer"]
    assert method_class("cross_teaching").supported_dims == (2,)


def test_losses_and_gradient_paths(make_batch: Callable[..., Batch]) -> None:
    method = _method(consistency=1.0, rampup_epochs=0.0).eval()  # eval: deterministic forwards to compare against
    batch = make_batch((32, 32))
    losses = method.training_step(batch, 0)
    cnn, transformer = method.nets["cnn"], method.nets["transformer"]
    with torch.no_grad():
        cnn_l, cnn_u = cnn(batch.image_l), cnn(batch.image_u)
        tr_u = transformer(batch.image_u)
    assert torch.allclose(losses["supervised_cnn"], ce_dice_loss(cnn_l, batch.label_l), atol=1e-6)
    assert torch.allclose(losses["cross_cnn"], soft_dice_loss(cnn_u.softmax(1), tr_u.argmax(1)), atol=1e-6)
    assert torch.allclose(losses["cross_transformer"], soft_dice_loss(tr_u.softmax(1), cnn_u.argmax(1)), atol=1e-6)
    losses["cross_transformer"].backward()
    assert all(p.grad is None for p in cnn.parameters()), "the U-Net's pseudo-labels must be detached"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in transformer.parameters())


def test_unknown_predictor_is_an_error() -> None:
    with pytest.raises(ValueError, match="predictor"):
        _method(predictor="net1")


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """3 iterations of configs/acdc/cross_teaching.yaml, tiny Swin at 32x32, full cross weight."""
    run = short_run(
        "acdc/cross_teaching.yaml",
        acdc_root,
        "method.rampup_epochs=0",
        "method.transformer_options={feature_size: 12, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}",
    )
    for row in run.rows:
        assert float(row["loss/cross_cnn"]) > 0 and float(row["loss/cross_transformer"]) > 0
