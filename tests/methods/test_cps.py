"""CPS: two differently initialised networks, each trained by its own losses on the other's hard labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from medsemi.data.cases import DatasetInfo
from medsemi.losses import consistency_weight
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.cps import CPS

INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)


def _cps(**options) -> CPS:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    return create_method("cps", options, context)  # type: ignore[return-value]


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


def test_each_cross_term_trains_only_its_own_network_towards_the_others_argmax(
    make_batch: Callable[..., Batch],
) -> None:
    method = _cps(consistency=1.0, rampup_epochs=0.0).eval()  # eval: deterministic forwards to compare against
    batch = make_batch((32, 32))
    losses = method.training_step(batch, 0)
    net1, net2 = method.nets["net1"], method.nets["net2"]
    with torch.no_grad():
        out1, out2 = net1(batch.image_u), net2(batch.image_u)
    assert torch.allclose(losses["cross_net1"], F.cross_entropy(out1, out2.argmax(1)), atol=1e-6)
    assert torch.allclose(losses["cross_net2"], F.cross_entropy(out2, out1.argmax(1)), atol=1e-6)
    losses["cross_net1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net1.parameters())
    assert all(p.grad is None for p in net2.parameters()), "net2's pseudo-labels must be detached"


def test_ssl4mis_ramp_reaches_its_maximum_at_30k_iterations(make_batch: Callable[..., Batch]) -> None:
    method = _cps()
    method.training_step(make_batch((32, 32)), 30000)
    assert method.diagnostics["consistency_weight"] == pytest.approx(0.1)
    assert consistency_weight(15000, 0.1, 200.0, 150) == pytest.approx(0.0287, abs=1e-4)


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """3 iterations of configs/acdc/cps.yaml at 32x32 with the cross terms at full weight; 1 test volume."""
    run = short_run("acdc/cps.yaml", acdc_root, "method.rampup_epochs=0")
    for row in run.rows:
        assert float(row["consistency_weight"]) == pytest.approx(0.1)
        assert float(row["loss/cross_net1"]) > 0 and float(row["loss/cross_net2"]) > 0
