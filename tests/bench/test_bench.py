"""The bench harness: protocols, the grid runner, leaderboard tables and plots, reuse and resume of runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medsemi.bench.grid import BenchError, BenchSpec, plan
from medsemi.bench.leaderboard import read_summary
from medsemi.bench.protocols import PAPER, QUICK, QUICK_LA, Protocol
from medsemi.bench.runner import run_bench, threads_per_run
from medsemi.cli import main
from medsemi.config import Config, save_config
from medsemi.methods.supervised import Supervised
from tests.bench.tiny_protocol import REPO, TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(out: Path, methods: tuple[str, ...], seeds: tuple[int, ...], **extra) -> BenchSpec:
    return BenchSpec(TINY, methods, (2,), seeds, out, dataset="demo", config_dir=REPO / "configs/demo", **extra)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mtimes(out: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in out.rglob("checkpoints/*.pt")}


def test_tiny_bench_writes_leaderboard_csv_plots_and_reuses_finished_runs(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised", "mean_teacher"), (1, 2))
    first = run_bench(spec, isolate=False, report=lambda _: None)
    assert len(first.trained) == 4 and not first.reused and not first.failed

    markdown = (spec.out / "leaderboard.md").read_text()
    assert "protocol `tiny`" in markdown and "seeds 1, 2" in markdown
    assert "Checkpoint rule: best-on-val" in markdown and "Checkpoint rule: last iterate" in markdown
    for png in ("dice_vs_budget.png", "learning_curves.png"):
        assert (spec.out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = _rows(spec.out / "leaderboard.csv")
    for method in spec.methods:
        for rule in ("best", "last"):
            dice = [r for r in rows if r["method"] == method and r["checkpoint"] == rule and r["metric"] == "dice"]
            assert {r["class"] for r in dice} == {"RV", "Myo", "LV", "mean"}
            mean = next(r for r in dice if r["class"] == "mean")
            assert mean["n_seeds"] == "2" and mean["protocol"] == "tiny" and mean["test_cases"] == "2"
            per_seed = [
                read_summary(spec.out / method / "labeled_2" / f"seed_{s}" / "eval" / f"test_{rule}" / "summary.csv")
                for s in (1, 2)
            ]
            values = sorted(summary["mean"]["dice"] for summary, _ in per_seed)
            assert float(mean["min"]) == pytest.approx(values[0])
            assert float(mean["max"]) == pytest.approx(values[1])
            assert float(mean["median"]) == pytest.approx(sum(values) / 2)
            assert f"| {method} | 2 | 2/2 | 2 |" in markdown

    runs = _rows(spec.out / "runs.csv")
    assert len(runs) == 4 and {r["status"] for r in runs} == {"complete"}
    assert all(float(r["train_wall_s"]) > 0 and r["iterations"] == "4" for r in runs)
    assert all(r["peak_rss_mb"] == "" for r in runs)  # runs shared this process: no per-run peak

    stamps = _mtimes(spec.out)
    second = run_bench(spec, isolate=False, report=lambda _: None)
    assert not second.trained and len(second.reused) == 4
    assert _mtimes(spec.out) == stamps

    wider = _spec(tmp_path / "bench", ("supervised", "mean_teacher"), (1, 2, 3))
    report_only = run_bench(wider, isolate=False, train=False, report=lambda _: None)
    assert not report_only.trained and len(report_only.reused) == 4 and _mtimes(spec.out) == stamps
    statuses = {(r["method"], r["seed"]): r["status"] for r in _rows(spec.out / "runs.csv")}
    assert statuses[("supervised", "3")] == "incomplete" and statuses[("supervised", "1")] == "complete"


def test_failed_run_is_reported_and_resumed_from_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path / "bench", ("supervised",), (1,))
    step = Supervised.training_step

    def dies_at_step_3(self, batch, index):
        if index == 3:
            raise RuntimeError("simulated crash")
        return step(self, batch, index)

    monkeypatch.setattr(Supervised, "training_step", dies_at_step_3)
    first = run_bench(spec, isolate=False, report=lambda _: None)
    run_dir = spec.out / "supervised" / "labeled_2" / "seed_1"
    assert list(first.failed) == [run_dir] and "simulated crash" in first.failed[run_dir]
    assert "## Failed runs" in (spec.out / "leaderboard.md").read_text()
    assert _rows(spec.out / "runs.csv")[0]["status"] == "failed"
    assert "simulated crash" in (run_dir / "bench.log").read_text()

    monkeypatch.setattr(Supervised, "training_step", step)
    second = run_bench(spec, isolate=False, report=lambda _: None)
    assert second.trained == [run_dir] and not second.failed
    attempts = json.loads((run_dir / "bench.json").read_text())["attempts"]
    assert [a["steps"] for a in attempts] == [2]  # resumed from the step-2 checkpoint
    assert len((run_dir / "log.csv").read_text().splitlines()) == 1 + 4


@pytest.mark.slow
def test_isolated_runs_record_their_peak_memory(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised",), (1,), iterations=2, test_limit=1)
    outcome = run_bench(spec, isolate=True, report=lambda _: None)
    assert len(outcome.trained) == 1 and not outcome.failed
    run = _rows(spec.out / "runs.csv")[0]
    assert run["status"] == "complete" and run["iterations"] == "2"
    assert 50 < float(run["peak_rss_mb"]) < 64_000
    assert {r["test_cases"] for r in _rows(spec.out / "leaderboard.csv")} == {"1"}
    assert "first 1 cases" in (spec.out / "leaderboard.md").read_text()


@pytest.mark.slow
def test_jobs_train_side_by_side_each_with_its_thread_count(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised",), (1, 2), iterations=2, test_limit=1)
    messages: list[str] = []
    outcome = run_bench(spec, isolate=True, jobs=2, threads=1, report=messages.append)
    assert len(outcome.trained) == 2 and not outcome.failed
    started = [i for i, m in enumerate(messages) if ": running in " in m and "(1 threads)" in m]
    finished = [i for i, m in enumerate(messages) if ": done in " in m]
    assert len(started) == 2 and max(started) < min(finished)  # the second started before the first ended
    rows = _rows(spec.out / "runs.csv")
    assert [(r["status"], r["threads"]) for r in rows] == [("complete", "1"), ("complete", "1")]
    for run_dir in outcome.trained:
        assert [a["threads"] for a in json.loads((run_dir / "bench.json").read_text())["attempts"]] == [1]


def test_threads_per_run_split_the_callers_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # e.g. OMP_NUM_THREADS=4 or 4 physical cores
    assert [threads_per_run(jobs, None) for jobs in (1, 2, 3, 8)] == [4, 2, 1, 1]
    assert threads_per_run(2, 3) == 3


def test_jobs_and_threads_are_checked(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised",), (1,), iterations=2)
    with pytest.raises(BenchError, match="--in-process"):
        run_bench(spec, isolate=False, jobs=2, report=lambda _: None)
    with pytest.raises(BenchError, match="--jobs must be at least 1"):
        run_bench(spec, isolate=True, jobs=0, report=lambda _: None)
    with pytest.raises(BenchError, match="--threads must be at least 1"):
        run_bench(spec, isolate=True, threads=0, report=lambda _: None)
    assert not (spec.out / "bench.json").exists()


def test_a_folder_with_other_settings_is_never_reused(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "bench", ("supervised",), (1,))
    run = plan(spec)[0]
    config = run.config()
    config.optim.lr = 0.5
    run.run_dir.mkdir(parents=True)
    save_config(config, run.run_dir / "config.yaml")
    with pytest.raises(BenchError, match="optim.lr"):
        run_bench(spec, isolate=False, report=lambda _: None)
    assert not (run.run_dir / "checkpoints").exists()


def _overrides(protocol: Protocol, method: str, **extra) -> dict[str, str]:
    spec = BenchSpec(protocol, (method,), (3,), (1,), Path("runs/x"), config_dir=REPO / "configs/acdc", **extra)
    overrides = plan(spec)[0].overrides
    return dict(item.split("=", 1) for item in overrides)


def test_quick_protocol_scales_every_iteration_measured_option() -> None:
    mean_teacher = _overrides(QUICK, "mean_teacher")
    assert mean_teacher["train.iterations"] == "1000"
    assert int(mean_teacher["method.consistency_start"]) == round(1000 * 1000 / 30000)
    assert mean_teacher["method.iterations_per_epoch"] == "5"  # 200 ramp epochs of 150 -> of 5 iterations
    assert "method.rampup_epochs" not in mean_teacher
    assert mean_teacher["data.patch_size"] == "[128, 128]" and mean_teacher["data.labeled"] == "3"
    bcp = _overrides(QUICK, "bcp", iterations=3000)
    assert bcp["method.pretrain_iterations"] == "1000"  # 10k pre-training for 30k self-training, kept at 1:3
    config = plan(BenchSpec(QUICK, ("bcp",), (3,), (1,), Path("x"), config_dir=REPO / "configs/acdc"))[0].config()
    assert config.train.iterations == 1000 and config.method["pretrain_iterations"] == 333
    assert "optim.step_every" not in bcp  # a constant LR on ACDC: nothing to scale, the configs stay as they are


def test_quick_protocol_narrows_only_the_transformers_and_keeps_their_other_options() -> None:
    def config(method: str) -> Config:
        spec = BenchSpec(QUICK, (method,), (3,), (1,), Path("x"), config_dir=REPO / "configs/acdc")
        return plan(spec)[0].config()

    cross_teaching = config("cross_teaching")
    assert cross_teaching.method["transformer_options"]["feature_size"] == 12
    assert cross_teaching.method["transformer_options"]["depths"] == [2, 2, 2, 2]
    assert cross_teaching.net.name == "unet" and not cross_teaching.net.options
    assert cross_teaching.train.channels_last
    semivit = config("semivit")
    assert semivit.net.name == "swin_unetr" and semivit.net.options == {"feature_size": 12}
    semiformer = config("semiformer")
    options = semiformer.net.options
    assert (options["embed_dim"], options["num_heads"], options["depth"]) == (192, 3, 12)  # DeiT-Ti
    assert options["widths"] == [16, 32, 64, 128, 256]  # the tested CNN stream is untouched
    assert not semiformer.train.amp and not semiformer.train.channels_last  # float32: bfloat16 collapses it
    caml = config("caml")
    assert caml.train.channels_last and caml.net.options["n_filters"] == 16
    assert caml.method["queries_per_class"] == round(12800 * (4 * 128 * 128) / (12 * 256 * 256))
    mean_teacher = config("mean_teacher")
    assert not mean_teacher.net.options
    assert all(config(m).train.amp and config(m).train.channels_last for m in ("mean_teacher", "bcp", "caml"))


LA_METHODS = ("supervised", "mean_teacher", "bcp", "scp", "caml")
"""Every method with a configs/la/ file; the others are 2D only (cross_teaching, cdma, semiformer) or have none."""


def test_quick_la_protocol_shrinks_crops_and_schedule_alike_for_every_3d_method() -> None:
    spec = BenchSpec(QUICK_LA, LA_METHODS, (4,), (1,), Path("x"), dataset="la", config_dir=REPO / "configs/la")
    configs = {run.method: run.config() for run in plan(spec)}
    for method, config in configs.items():
        assert config.data.patch_size == [80, 80, 48] and config.data.labeled == 4, method
        assert (config.data.batch_labeled, config.data.batch_unlabeled) == (2, 2)
        assert config.train.iterations == 1000 and config.train.amp and not config.train.channels_last
        assert (config.train.val_every, config.train.val_limit, config.train.val_split) == (200, 4, "val")
        assert config.eval.stride == [40, 40, 24] and config.eval.patch_size is None  # windows of the crop
        assert config.data.options == {"val_from_train": 8}
    assert configs["bcp"].method["pretrain_iterations"] == round(2000 * 1000 / 15000)
    assert configs["bcp"].optim.step_every == round(2500 * 1000 / 15000)  # 5 LR steps in the run, as in the paper's
    assert configs["bcp"].eval.lcc and not configs["caml"].eval.lcc
    assert configs["mean_teacher"].method["iterations_per_epoch"] == 10  # ramp: 40 epochs of 10 iterations
    assert configs["caml"].method["queries_per_class"] == round(12800 * (80 * 80 * 48) / (112 * 112 * 80))
    with pytest.raises(BenchError, match="not 'acdc'"):
        plan(BenchSpec(QUICK_LA, ("supervised",), (4,), (1,), Path("x")))


def test_cli_bench_takes_the_dataset_of_a_one_dataset_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    """quick_la runs on la without --dataset: the run is refused for the grid key, not for the dataset."""
    assert main(["bench", "--protocol", "quick_la", "--methods", "supervised", "--budgets", "4", "seed=2"]) == 2
    assert "set by the bench grid" in capsys.readouterr().err


def test_paper_protocol_keeps_the_configs_and_grid_keys_are_the_grids() -> None:
    paper = _overrides(PAPER, "mean_teacher")
    assert paper["train.iterations"] == "30000" and not any(key.startswith("method.") for key in paper)
    with pytest.raises(BenchError, match="data.labeled"):
        _overrides(PAPER, "mean_teacher", overrides=("data.labeled=7",))
    with pytest.raises(BenchError, match="not 'la'"):
        plan(BenchSpec(QUICK, ("supervised",), (8,), (1,), Path("x"), dataset="la"))


def test_cli_bench_reports_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "bench")
    assert main(["bench", "--methods", "supervised", "--out", out, "seed=4"]) == 2
    assert "set by the bench grid" in capsys.readouterr().err
    assert main(["bench", "--methods", "no_such_method", "--out", out]) == 2
    assert "no_such_method" in capsys.readouterr().err


@pytest.mark.real_data
@pytest.mark.slow
def test_quick_protocol_runs_on_real_acdc(acdc_root: Path, tmp_path: Path) -> None:
    """The quick protocol's settings on the real data, BCP (two stages, scaled pre-training), 2 iterations."""
    spec = BenchSpec(
        QUICK,
        ("bcp",),
        (3,),
        (1,),
        tmp_path / "bench",
        config_dir=REPO / "configs/acdc",
        iterations=2,
        overrides=(f"data.root={acdc_root}", "train.val_limit=2"),
        test_limit=2,
    )
    outcome = run_bench(spec, isolate=False, report=lambda _: None)
    assert not outcome.failed, outcome.failed
    run_dir = outcome.trained[0]
    log = _rows(run_dir / "log.csv")
    assert [row["stage"] for row in log] == ["pretrain", "selftrain", "selftrain"]
    mean = next(
        r
        for r in _rows(spec.out / "leaderboard.csv")
        if r["checkpoint"] == "best" and r["class"] == "mean" and r["metric"] == "dice"
    )
    assert mean["test_cases"] == "2" and 0.0 <= float(mean["median"]) <= 1.0
