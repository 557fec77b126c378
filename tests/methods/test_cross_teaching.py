"""Cross teaching: U-Net <-> transformer, Dice towards the other's argmax, per-network optimisers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run
from medsemi.losses import ce_dice_loss, soft_dice_loss
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec, method_class
from medsemi.methods.cross_teaching import CrossTeaching
from medsemi.nets.transformer import SwinSegmenter
from medsemi.nets.unet import UNet2D

REPO = Path(__file__).resolve().parents[2]
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


def test_losses_and_gradient_paths() -> None:
    method = _method(
        consistency=1.0, rampup_epochs=0.0
    ).eval()  # eval: deterministic forwards to compare against
    batch = Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), torch.randn(2, 1, 32, 32))
    losses = method.training_step(batch, 0)
    cnn, transformer = method.nets["cnn"], method.nets["transformer"]
    with torch.no_grad():
        cnn_l, cnn_u = cnn(batch.image_l), cnn(batch.image_u)
        tr_u = transformer(batch.image_u)
    assert torch.allclose(losses["supervised_cnn"], ce_dice_loss(cnn_l, batch.label_l), atol=1e-6)
    assert torch.allclose(losses["cross_cnn"], soft_dice_loss(cnn_u.softmax(1), tr_u.argmax(1)), atol=1e-6)
    assert torch.allclose(
        losses["cross_transformer"], soft_dice_loss(tr_u.softmax(1), cnn_u.argmax(1)), atol=1e-6
    )
    losses["cross_transformer"].backward()
    assert all(p.grad is None for p in cnn.parameters()), "the U-Net's pseudo-labels must be detached"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in transformer.parameters())


def test_unknown_predictor_is_an_error() -> None:
    with pytest.raises(ValueError, match="predictor"):
        _method(predictor="net1")


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, tmp_path: Path) -> None:
    """3 iterations of configs/acdc/cross_teaching.yaml, tiny Swin at 32x32, full cross weight."""
    overrides = [
        f"data.root={acdc_root}",
        "data.options={limit: 80}",  # 80 slices (3 labeled patients + 12 unlabeled), 1 val, 1 test volume
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "method.rampup_epochs=0",
        "method.transformer_options={feature_size: 12, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}",
        "train.iterations=3",
        "train.val_every=3",
        "train.progress=false",
        f"run.dir={tmp_path / 'run'}",
    ]
    run_dir = train(load_config(REPO / "configs/acdc/cross_teaching.yaml", overrides))
    with open(run_dir / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        assert math.isfinite(float(row["loss"]))
        assert float(row["loss/cross_cnn"]) > 0 and float(row["loss/cross_transformer"]) > 0
    summary = evaluate_run(run_dir, split="test", limit=1)
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
