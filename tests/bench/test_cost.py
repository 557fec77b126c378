"""Projected run cost (`medsemi bench --cost`): timed steps per stage and one validation, no training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medsemi.bench.cost import measure_costs, write_costs
from medsemi.bench.grid import BenchSpec
from medsemi.cli import main
from tests.bench.tiny_protocol import REPO, TINY


def _spec(out: Path, methods: tuple[str, ...]) -> BenchSpec:
    return BenchSpec(TINY, methods, (2,), (1,), out, dataset="demo", config_dir=REPO / "configs/demo")


def test_cost_times_every_stage_and_projects_the_schedule(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised", "mean_teacher"))
    costs = measure_costs(spec, steps=2, warmup=1)
    assert [c.method for c in costs] == ["supervised", "mean_teacher"]
    for cost in costs:
        assert [(s.stage, s.iterations) for s in cost.stages] == [("train", 4)]
        assert cost.stages[0].seconds_per_step > 0 and cost.seconds_per_validation > 0
        assert cost.validations == 2  # every 2 of 4 iterations
        expected = 4 * cost.stages[0].seconds_per_step + 2 * cost.seconds_per_validation
        assert cost.projected_train_s == pytest.approx(expected)
    assert not any((spec.out / method).exists() for method in spec.methods)  # nothing trained, no run folder

    files = write_costs(spec, costs, steps=2, warmup=1)
    assert [f.name for f in files] == ["cost.md", "cost.csv"]
    markdown = files[0].read_text()
    assert "protocol `tiny`" in markdown and "1 warm-up + 2 timed" in markdown and "measured on cpu: " in markdown
    assert "| mean_teacher | train 4 x " in markdown
    with open(files[1], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["supervised", "mean_teacher"]
    assert float(rows[1]["projected_s"]) == pytest.approx(costs[1].projected_train_s)


def test_cost_of_a_two_stage_method_counts_both_stages(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    demo = (REPO / "configs/demo/supervised.yaml").read_text()
    (configs / "bcp.yaml").write_text(
        demo.replace("name: supervised", "name: bcp\n  pretrain_iterations: 225")
    )  # 225 / 300 of the schedule -> 3 of 4
    spec = BenchSpec(TINY, ("bcp",), (2,), (1,), tmp_path / "bench", dataset="demo", config_dir=configs)
    (cost,) = measure_costs(spec, steps=1, warmup=1)
    assert [(s.stage, s.iterations) for s in cost.stages] == [("pretrain", 3), ("selftrain", 4)]
    assert cost.validations == 2 + 2  # every 2 iterations and at the end of each stage
    assert cost.projected_train_s == pytest.approx(
        3 * cost.stages[0].seconds_per_step + 4 * cost.stages[1].seconds_per_step + 4 * cost.seconds_per_validation
    )


def test_cli_bench_cost_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = tmp_path / "bench"
    argv = ["bench", "--cost", "--protocol", "quick", "--methods", "supervised", "--budgets", "2", "--seeds", "1"]
    monkeypatch.setattr("medsemi.bench.protocols.PROTOCOLS", {"quick": TINY})
    code = main([*argv, "--dataset", "demo", "--timed-steps", "1", "--warmup", "1", "--out", str(out)])
    assert code == 0
    assert "| supervised | train 4 x " in (out / "cost.md").read_text()
