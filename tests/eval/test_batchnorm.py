"""BatchNorm recalibration with dropout off: the statistics it writes, what it restores, and `evaluate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from medsemi.config import load_config
from medsemi.data.splits import load_split
from medsemi.engine.trainer import train
from medsemi.eval.batchnorm import recalibrate_batchnorm, training_images
from medsemi.eval.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=3",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.progress=false",
    "train.iterations=4",
    "train.val_split=none",
]


def _dropout_then_norm() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(4))


def test_statistics_are_those_of_dropout_off_activations() -> None:
    net = _dropout_then_norm().train()
    images = torch.randn(8, 1, 16, 16) + 2.0
    with torch.no_grad():
        for _ in range(30):
            net(images)  # training: running statistics of dropout-on activations
        clean = net[0](images)
    inflated = net[2].running_var.clone()
    assert recalibrate_batchnorm(net, [images]) == 8
    torch.testing.assert_close(net[2].running_mean, clean.mean((0, 2, 3)))
    torch.testing.assert_close(net[2].running_var, clean.var((0, 2, 3)))
    assert bool((net[2].running_var < 0.8 * inflated).all())  # dropout at 0.5 had inflated the variance
    assert net.training and net[1].training and net[2].momentum == 0.1  # modes and momentum restored


def test_several_batches_average_their_statistics() -> None:
    net = _dropout_then_norm().eval()
    first, second = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8) * 3 + 1
    recalibrate_batchnorm(net, [first, second])
    with torch.no_grad():
        means = [net[0](x).mean((0, 2, 3)) for x in (first, second)]
    torch.testing.assert_close(net[2].running_mean, (means[0] + means[1]) / 2)
    assert not net.training and not net[2].training


def test_nets_without_batchnorm_are_left_alone_and_empty_input_is_refused() -> None:
    def never() -> Iterator[torch.Tensor]:
        raise AssertionError("a network without BatchNorm needs no forward pass")
        yield

    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.LayerNorm(2)), never()) == 0
    net = _dropout_then_norm()
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(net, [])
    assert net[2].momentum == 0.1


def test_training_images_hold_unlabeled_images_only_for_methods_that_train_on_them() -> None:
    config = load_config(REPO / "configs/demo/mean_teacher.yaml", TINY)
    split = load_split(config.data)[1]
    semi = list(training_images(config, split, True, 2, torch.device("cpu")))
    supervised = list(training_images(config, split, False, 2, torch.device("cpu")))
    assert [tuple(x.shape) for x in semi] == [(5, 1, 32, 32)] * 2
    assert [tuple(x.shape) for x in supervised] == [(2, 1, 32, 32)] * 2


def test_evaluate_writes_recalibrated_tables_beside_the_plain_ones(tmp_path: Path) -> None:
    run_dir = train(load_config(REPO / "configs/demo/mean_teacher.yaml", [*TINY, f"run.dir={tmp_path / 'run'}"]))
    plain = evaluate_run(run_dir, split="test", checkpoint="last", limit=2)
    recalibrated = evaluate_run(run_dir, split="test", checkpoint="last", limit=2, recalibrate_bn=3)
    assert plain["folder"].name == "test_last"
    assert recalibrated["folder"].name == "test_last_bn3"
    assert "re-estimated on 3 training batches" in (recalibrated["folder"] / "summary.md").read_text()
    assert "as trained" in (plain["folder"] / "summary.md").read_text()
    with pytest.raises(ValueError, match="recalibrate-bn"):
        evaluate_run(run_dir, split="test", checkpoint="last", recalibrate_bn=-1)
