"""Paired verdicts: per seed, a method's mean Dice minus `supervised`'s, from fabricated finished run folders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from medsemi.bench.grid import BenchError, BenchSpec, plan
from medsemi.bench.leaderboard import read_csv_rows, verdict, write_leaderboard
from medsemi.bench.runner import run_bench
from medsemi.bench.worker import RULES, summary_csv
from tests.bench.tiny_protocol import REPO, TINY

DICE = {  # (method, budget, seed) -> mean test Dice of both rules; absent: the run never finished
    **{("supervised", 2, s): d for s, d in ((1, 0.50), (2, 0.60), (3, 0.40))},
    **{("better", 2, s): d for s, d in ((1, 0.55), (2, 0.70), (3, 0.42))},
    **{("worse", 2, s): d for s, d in ((1, 0.45), (2, 0.50), (3, 0.39))},
    **{("mixed", 2, s): d for s, d in ((1, 0.60), (2, 0.50), (3, 0.40))},
    ("supervised", 4, 1): 0.70,  # at 4 patients the baseline has seed 1 only
    **{("better", 4, s): 0.80 for s in (1, 2)},
    ("worse", 4, 1): 0.65,
    ("mixed", 4, 2): 0.90,  # no seed in common with the baseline
    ("better", 8, 1): 0.90,  # no baseline run at all at 8 patients
}


def _finished_run(run_dir: Path, dice: float) -> None:
    """What the worker leaves: finished checkpoints, bench.json and one test summary per rule."""
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint = {"method": {}, "optimizers": {}, "state": {"finished": True, "global_step": 4}, "rng": {}, "info": {}}
    for rule in RULES:
        torch.save(checkpoint, run_dir / "checkpoints" / f"{RULES[rule].checkpoint}.pt")
        summary = summary_csv(run_dir, rule)
        summary.parent.mkdir(parents=True)
        rows = [f"2,{name},{dice},{dice / 2},0" for name in ("RV", "Myo", "LV", "mean")]
        summary.write_text("cases,class,dice,jaccard,empty_pred\n" + "\n".join(rows) + "\n")
    attempt = {"steps": 4, "train_wall_s": 1.0, "peak_rss_mb": None, "peak_cuda_mb": None, "device": "cpu"}
    record = {"attempts": [attempt], "evaluations": {rule: {"limit": None, "wall_s": 0.1} for rule in RULES}}
    (run_dir / "bench.json").write_text(json.dumps(record))


@pytest.fixture
def bench(tmp_path: Path) -> BenchSpec:
    configs = tmp_path / "configs"
    configs.mkdir()
    for method in ("supervised", "better", "worse", "mixed"):  # every one a supervised config: only names matter
        (configs / f"{method}.yaml").write_text((REPO / "configs/demo/supervised.yaml").read_text())
    spec = BenchSpec(
        TINY,
        ("supervised", "better", "worse", "mixed"),
        (2, 4, 8),
        (1, 2, 3),
        tmp_path / "bench",
        dataset="demo",
        config_dir=configs,
    )
    runs = plan(spec)
    for run in runs:
        if (run.method, run.budget, run.seed) in DICE:
            _finished_run(run.run_dir, DICE[(run.method, run.budget, run.seed)])
    write_leaderboard(spec, runs, {})
    return spec


def test_verdicts_pair_seeds_with_the_baseline(bench: BenchSpec) -> None:
    rows = {(r["method"], r["labeled"], r["checkpoint"]): r for r in read_csv_rows(bench.out / "verdicts.csv")}
    assert {key[2] for key in rows} == set(RULES) and not any(key[0] == "supervised" for key in rows)
    expected = {
        ("better", "2"): ("better on every seed", "1 2 3", 0.05, 0.02, 0.10),
        ("worse", "2"): ("worse on every seed", "1 2 3", -0.05, -0.10, -0.01),
        ("mixed", "2"): ("mixed", "1 2 3", 0.0, -0.10, 0.10),
        ("better", "4"): ("better (1 seed)", "1", 0.10, 0.10, 0.10),
        ("worse", "4"): ("worse (1 seed)", "1", -0.05, -0.05, -0.05),
    }
    for (method, budget), (word, seeds, median, low, high) in expected.items():
        row = rows[(method, budget, "best")]
        assert row["verdict"] == word and row["seeds"] == seeds and row["baseline"] == "supervised"
        assert int(row["n_seeds"]) == len(seeds.split())
        assert [float(row[k]) for k in ("median", "min", "max")] == pytest.approx([median, low, high])
        assert rows[(method, budget, "last")]["verdict"] == word
    for key in (("mixed", "4", "best"), ("better", "8", "last")):  # no seed in common, no baseline run at all
        assert rows[key]["verdict"] == "no baseline" and rows[key]["n_seeds"] == "0" and rows[key]["median"] == ""
    assert ("better", "8", "best") in rows and ("worse", "8", "best") not in rows  # no runs: no row


def test_seeds_csv_keeps_every_per_seed_number_and_the_paired_differences(bench: BenchSpec) -> None:
    rows = read_csv_rows(bench.out / "seeds.csv")
    assert list(rows[0]) == ["protocol", "method", "labeled", "checkpoint", "seed", "class", "metric", "value"]
    dice = {
        (r["method"], int(r["labeled"]), int(r["seed"])): float(r["value"])
        for r in rows
        if (r["checkpoint"], r["class"], r["metric"]) == ("last", "mean", "dice")
    }
    assert dice == pytest.approx(DICE)
    assert len([r for r in rows if r["metric"] == "jaccard"]) == len(DICE) * len(RULES) * 4  # 3 classes + mean
    paired = {
        (r["method"], int(r["labeled"]), int(r["seed"])): float(r["value"])
        for r in rows
        if r["metric"] == "dice_minus_supervised" and r["checkpoint"] == "best"
    }
    assert paired == pytest.approx(
        {
            (m, b, s): d - DICE[("supervised", b, s)]
            for (m, b, s), d in DICE.items()
            if m != "supervised" and ("supervised", b, s) in DICE
        }
    )
    assert {r["protocol"] for r in rows} == {"tiny"}


def test_leaderboard_md_shows_the_paired_table_per_rule(bench: BenchSpec) -> None:
    markdown = (bench.out / "leaderboard.md").read_text()
    for title in ("best-on-val", "last iterate"):
        assert f"Paired with `supervised` ({title}, protocol `tiny`, seeds 1, 2, 3)" in markdown
    assert "| better | 2 | 1, 2, 3 | 3 | +5.0 [+2.0, +10.0] | better on every seed |" in markdown
    assert "| worse | 2 | 1, 2, 3 | 3 | -5.0 [-10.0, -1.0] | worse on every seed |" in markdown
    assert "| mixed | 2 | 1, 2, 3 | 3 | +0.0 [-10.0, +10.0] | mixed |" in markdown
    assert "| better | 4 | 1 | 1 | +10.0 | better (1 seed) |" in markdown
    assert "| mixed | 4 | - | 0 | - | no baseline |" in markdown
    assert markdown.count("| better on every seed |") == len(RULES)  # once per checkpoint rule


@pytest.mark.parametrize(
    ("differences", "word"),
    [
        ((0.1, 0.2), "better on every seed"),
        ((-0.1,), "worse (1 seed)"),
        ((0.0,), "tied (1 seed)"),
        ((0.1, 0.0), "mixed"),
        ((), "no baseline"),
    ],
)
def test_verdict_words(differences: tuple[float, ...], word: str) -> None:
    assert verdict(differences) == word


def test_a_leaderboard_extends_from_its_recorded_outputs_alone(bench: BenchSpec, tmp_path: Path) -> None:
    """The committed text outputs are enough: a new bench with none of the old folders, plus one new run,
    gives the old numbers and verdicts back, with the new run paired against a recorded baseline."""
    extended = dataclasses.replace(bench, out=tmp_path / "extended", recorded=bench.out)
    runs = plan(extended)
    new_run = next(r for r in runs if (r.method, r.budget, r.seed) == ("mixed", 4, 1))
    _finished_run(new_run.run_dir, 0.60)
    messages: list[str] = []
    run_bench(extended, train=False, report=messages.append)
    assert sum("recorded in" in m for m in messages) == len(DICE) and any("complete, reused" in m for m in messages)

    def table(folder: Path, name: str) -> list[dict[str, str]]:
        return [r for r in read_csv_rows(folder / name) if (r["method"], r["labeled"]) != ("mixed", "4")]

    for name in ("leaderboard.csv", "seeds.csv", "verdicts.csv"):
        assert table(extended.out, name) == table(bench.out, name)
    verdicts = {(r["method"], r["labeled"], r["checkpoint"]): r for r in read_csv_rows(extended.out / "verdicts.csv")}
    assert verdicts[("mixed", "4", "best")]["verdict"] == "worse (1 seed)"
    assert float(verdicts[("mixed", "4", "best")]["median"]) == pytest.approx(-0.10)
    old, new = read_csv_rows(bench.out / "runs.csv"), read_csv_rows(extended.out / "runs.csv")
    recorded = {r["run_dir"]: r for r in new if r["status"] == "recorded"}
    assert recorded == {r["run_dir"]: {**r, "status": "recorded"} for r in old if r["status"] == "complete"}
    assert [r["run_dir"] for r in new if r["status"] == "complete"] == [str(new_run.run_dir)]
    assert f"taken from {bench.out}" in (extended.out / "leaderboard.md").read_text()


def test_recorded_outputs_of_another_protocol_are_refused(bench: BenchSpec, tmp_path: Path) -> None:
    other = dataclasses.replace(bench, protocol=dataclasses.replace(TINY, name="other"), out=tmp_path / "o")
    with pytest.raises(BenchError, match=r"seeds.csv: holds protocol tiny, this bench is 'other'"):
        write_leaderboard(dataclasses.replace(other, recorded=bench.out), plan(other), {})
    with pytest.raises(BenchError, match=r"missing; --recorded needs"):
        write_leaderboard(dataclasses.replace(bench, recorded=tmp_path / "nothing"), plan(bench), {})
