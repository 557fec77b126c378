"""docs/how-to/add-a-method.md: its example method is real code that trains, loads from a config and scales."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from medsemi.bench.protocols import scaled_options
from medsemi.config import ConfigError, config_from_dict
from medsemi.data.cases import DatasetInfo
from medsemi.methods import base
from medsemi.methods.base import Batch, MethodContext, NetSpec, create_method
from medsemi.registry import Registry

PAGE = Path(__file__).resolve().parents[2] / "docs/how-to/add-a-method.md"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> str:
    """The page's method, registered in a registry of its own (the real one stays the shipped methods)."""
    monkeypatch.setattr(base, "METHODS", Registry("method"))
    (code,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    exec(compile(code, str(PAGE), "exec", dont_inherit=True), {"__name__": "add_a_method_example"})
    (name,) = base.list_methods()
    return name


def test_the_example_trains_one_step(example: str) -> None:
    info = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)
    context = MethodContext(info, NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    method = create_method(example, {"warmup_steps": 0, "consistency": 1.0}, context).train()
    optimizer = torch.optim.SGD(method.optimised_modules()["student"].parameters(), lr=0.1)
    before = [p.detach().clone() for p in method.student.parameters()]
    batch = Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), torch.randn(2, 1, 32, 32))
    losses = method.training_step(batch, step=150 * 200)
    assert set(losses) == {"supervised", "entropy"} and losses["entropy"] > 0
    sum(losses.values()).backward()
    optimizer.step()
    method.after_step(0)
    assert any(not torch.equal(a, b) for a, b in zip(before, method.student.parameters(), strict=True))


def test_the_example_options_are_typed_config_and_scale_by_unit(example: str) -> None:
    config = config_from_dict({"method": {"name": example, "reduction": "sum"}, "train": {"iterations": 30000}})
    assert scaled_options(config, 1000) == ["method.iterations_per_epoch=5", "method.warmup_steps=17"]
    with pytest.raises(ConfigError, match=re.escape("method.reduction must be one of ('mean', 'sum'), got 'max'")):
        config_from_dict({"method": {"name": example, "reduction": "max"}})
    with pytest.raises(ConfigError, match=r"method\.warmup_steps: 1\.5 is not a valid int"):
        config_from_dict({"method": {"name": example, "warmup_steps": 1.5}})
