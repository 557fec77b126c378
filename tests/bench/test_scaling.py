"""The bench rescales method options by the unit their field declares, not by their name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from medsemi.bench.protocols import scaled_options, schedule_lengths
from medsemi.config import Config, load_config
from medsemi.methods import base
from medsemi.methods.base import StudentMethod, register_method
from medsemi.methods.options import ConsistencyRampOptions, MethodOptions, epochs, iterations
from medsemi.registry import Registry

REPO = Path(__file__).resolve().parents[2]

SCALED_AT_1000 = {
    "acdc/bcp": ["method.pretrain_iterations=333"],
    "acdc/caml": ["method.iterations_per_epoch=5"],
    "acdc/cdma": [],
    "acdc/cps": ["method.iterations_per_epoch=5"],
    "acdc/cross_teaching": ["method.iterations_per_epoch=5"],
    "acdc/fixmatch": [],
    "acdc/mean_teacher": ["method.consistency_start=33", "method.iterations_per_epoch=5"],
    "acdc/scp": ["method.iterations_per_epoch=5"],
    "acdc/semiformer": [],
    "acdc/semivit": [],
    "acdc/supervised": [],
    "demo/mean_teacher": ["method.iterations_per_epoch=67"],
    "demo/supervised": [],
    "la/bcp": ["method.pretrain_iterations=133", "optim.step_every=167"],
    "la/caml": ["method.iterations_per_epoch=10"],
    "la/mean_teacher": ["method.iterations_per_epoch=10"],
    "la/scp": ["method.iterations_per_epoch=10"],
    "la/supervised": [],
    "pathology/cdma": ["optim.step_every=250"],
}
"""`scaled_options(config, 1000)` (the length of `quick` and `quick_la`) for every shipped config, as the
name-based rule of 61602aa computed it."""


def test_every_shipped_config_scales_exactly_as_before() -> None:
    shipped = {f"{p.parent.name}/{p.stem}": p for p in sorted((REPO / "configs").rglob("*.yaml"))}
    assert set(shipped) == set(SCALED_AT_1000), "a config was added or removed: pin its scaled options here"
    for name, path in shipped.items():
        assert scaled_options(load_config(path), 1000) == SCALED_AT_1000[name], name


def test_schedule_units_not_names_decide_what_scales() -> None:
    @dataclass
    class Ramped(ConsistencyRampOptions):
        warmup_steps: int = iterations(500)
        burnin_iterations: int = 7  # the old naming convention, but no unit: a count, not a length

    @dataclass
    class EpochsOnly(MethodOptions):
        rampup_epochs: float = epochs(10.0)

    # The epoch length carries the epochs options, so only it and the iterations scale.
    assert schedule_lengths(Ramped) == {"warmup_steps", "iterations_per_epoch"}
    assert schedule_lengths(EpochsOnly) == {"rampup_epochs"}


def test_a_new_unit_tagged_option_is_scaled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "METHODS", Registry("method"))

    @dataclass
    class WarmupOptions(MethodOptions):
        warmup_steps: int = iterations(3000)
        strength: float = 1.0

    @register_method("warmup_probe")
    class WarmupProbe(StudentMethod):
        Options = WarmupOptions

    config = Config(method={"name": "warmup_probe", "strength": 2.0})
    assert config.train.iterations == 30000
    assert scaled_options(config, 1000) == ["method.warmup_steps=100"]


def test_a_redeclared_option_keeps_its_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "METHODS", Registry("method"))

    @dataclass
    class Forgetful(ConsistencyRampOptions):
        rampup_epochs: float = 40.0

    class ForgetfulMethod(StudentMethod):
        Options = Forgetful

    with pytest.raises(TypeError, match="rampup_epochs redeclares ConsistencyRampOptions.rampup_epochs"):
        register_method("forgetful")(ForgetfulMethod)
