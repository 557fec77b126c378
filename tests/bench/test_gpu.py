"""benchmarks/gpu.sh: the projection of BCP's iterations, and a CPU smoke run of the whole check."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from medsemi.bench.gpu import GpuCheck, measured_speed, projected_iterations
from medsemi.bench.leaderboard import read_csv_rows
from medsemi.bench.throughput import ThroughputSpec
from tests.bench.tiny_protocol import REPO


def _check(**extra) -> GpuCheck:
    return GpuCheck(ThroughputSpec(), Path("unused"), config_dir=REPO / "configs/acdc", **extra)


def test_iterations_fill_the_time_left_with_pre_training_counted() -> None:
    check = _check(budget_s=200.0, reserve_s=40.0, safety=0.5)
    # 200 - 40 - 60 = 100 s left, half of it at 8 steps/s: 400 steps = N self-training + N / 3 pre-training
    assert projected_iterations(check, steps_per_s=8.0, elapsed_s=60.0) == 300
    assert projected_iterations(_check(max_iterations=2), steps_per_s=8.0, elapsed_s=0.0) == 2
    assert projected_iterations(check, steps_per_s=8.0, elapsed_s=500.0) == 1  # over budget: still a run
    assert projected_iterations(_check(), steps_per_s=1e6, elapsed_s=0.0) == 30000  # never past the paper's


def test_the_speed_of_bcp_must_have_been_measured() -> None:
    report = {"results": [{"method": "supervised", "variant": "fast", "iterations_per_s": 3.0}]}
    assert measured_speed(report, "supervised", "fast") == 3.0
    with pytest.raises(ValueError, match="keep bcp in --methods"):
        measured_speed(report, "bcp", "fast")


@pytest.mark.real_data
@pytest.mark.slow
def test_gpu_script_smoke_run_on_cpu(acdc_root: Path, tmp_path: Path) -> None:
    """The whole check on CPU in seconds: tiny batches and patches, 2 self-training iterations, 1 test volume."""
    out = tmp_path / "gpu"
    limit = "{limit: 80}"  # 3 labeled patients + 12 unlabeled, 1 val and 1 test volume
    command = [str(REPO / "benchmarks" / "gpu.sh"), "--device", "cpu", "--budget-s", "30", "--reserve-s", "0"]
    command += ["--max-iterations", "2", "--test-limit", "1", "--methods", "bcp", "--batch", "4", "--patch", "32"]
    command += ["--iterations", "1", "--warmup", "0", "--workers", "0", "--threads", "1", "--root", str(acdc_root)]
    command += ["--data-options", limit, "--out", str(out), "data.patch_size=[32, 32]", "data.batch_labeled=2"]
    command += ["data.batch_unlabeled=2", f"data.options={limit}", "train.val_limit=1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.perf_counter() - start < 60

    rows = {(r["part"], r["variant"], r["metric"]): r["value"] for r in read_csv_rows(out / "summary.csv")}
    assert float(rows[("throughput", "fast+amp+channels_last", "speedup_vs_reference")]) > 0
    assert rows[("bcp_paper", "", "self_training_iterations")] == "2"
    assert rows[("bcp_paper", "", "iterations_done")] == "3"  # 2 self-training + round(2 / 3) pre-training
    assert float(rows[("bcp_paper", "", "iterations_per_s")]) > 0
    assert all(0.0 <= float(rows[("bcp_paper", rule, "test_dice")]) <= 1.0 for rule in ("best", "last"))
    summary = (out / "summary.md").read_text()
    assert "device: cpu" in summary and "| bcp |" in summary and "2 self-training iterations" in summary
    assert "over 1 test volumes" in summary and "run complete" in summary
    assert (out / "throughput" / "throughput.md").exists() and (out / "bcp" / "leaderboard.md").exists()
