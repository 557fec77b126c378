"""CPS: two differently initialised networks, each trained by its own losses on the other's hard labels."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run
from medsemi.losses import consistency_weight
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.cps import CPS

REPO = Path(__file__).resolve().parents[2]
INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)


def _cps(**options) -> CPS:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    return create_method("cps", options, context)  # type: ignore[return-value]


def _batch() -> Batch:
    return Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), torch.randn(2, 1, 32, 32))


def test_two_networks_with_different_initialisations_and_one_optimiser_each() -> None:
    method = _cps()
    modules = method.optimised_modules()
    assert list(modules) == ["net1", "net2"]
    first, second = (next(m.parameters()) for m in modules.values())
    assert not torch.equal(first, second)
    assert method.predictor() is modules["net1"]
    other = _cps(predictor="net2")
    assert other.predictor() is other.nets["net2"]
    with pytest.raises(ValueError, match="predictor"):
        _cps(predictor="teacher")


def test_each_cross_term_trains_only_its_own_network_towards_the_others_argmax() -> None:
    method = _cps(
        consistency=1.0, rampup_epochs=0.0
    ).eval()  # eval: deterministic forwards to compare against
    batch = _batch()
    losses = method.training_step(batch, 0)
    net1, net2 = method.nets["net1"], method.nets["net2"]
    with torch.no_grad():
        out1, out2 = net1(batch.image_u), net2(batch.image_u)
    assert torch.allclose(losses["cross_net1"], F.cross_entropy(out1, out2.argmax(1)), atol=1e-6)
    assert torch.allclose(losses["cross_net2"], F.cross_entropy(out2, out1.argmax(1)), atol=1e-6)
    losses["cross_net1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net1.parameters())
    assert all(p.grad is None for p in net2.parameters()), "net2's pseudo-labels must be detached"


def test_ssl4mis_ramp_reaches_its_maximum_at_30k_iterations() -> None:
    method = _cps()
    method.training_step(_batch(), 30000)
    assert method.diagnostics["consistency_weight"] == pytest.approx(0.1)
    assert consistency_weight(15000, 0.1, 200.0, 150) == pytest.approx(0.0287, abs=1e-4)


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, tmp_path: Path) -> None:
    """3 iterations of configs/acdc/cps.yaml at 32x32 with the cross terms at full weight; 1 test volume."""
    overrides = [
        f"data.root={acdc_root}",
        "data.options={limit: 80}",  # 80 slices (3 labeled patients + 12 unlabeled), 1 val, 1 test volume
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "method.rampup_epochs=0",
        "train.iterations=3",
        "train.val_every=3",
        "train.progress=false",
        f"run.dir={tmp_path / 'run'}",
    ]
    run_dir = train(load_config(REPO / "configs/acdc/cps.yaml", overrides))
    with open(run_dir / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        assert math.isfinite(float(row["loss"]))
        assert float(row["consistency_weight"]) == pytest.approx(0.1)
        assert float(row["loss/cross_net1"]) > 0 and float(row["loss/cross_net2"]) > 0
    summary = evaluate_run(run_dir, split="test", limit=1)
    assert 0.0 <= summary["mean"]["dice"] <= 1.0
