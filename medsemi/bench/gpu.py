"""The one-GPU check behind benchmarks/gpu.sh: data-path throughput, then BCP's ACDC paper protocol for the time left.

A lent GPU comes for minutes, so the check is one command inside a wall-clock budget (default 9 minutes):
  1. the `medsemi bench --throughput` measurement at batch 24 (12 + 12), 256x256: the reference-style DataLoader
     path, the fast path, and the fast path with autocast + channels-last (<out>/throughput/);
  2. BCP under the `paper` protocol (configs/acdc/bcp.yaml: 256x256, batch 12 + 12, 10k pre-training + 30k
     self-training) with autocast + channels-last, for as many iterations as step 1's speed fits in the time
     left: the bench's `--iterations N`, which keeps pre-training at the paper's third of N; then the test Dice
     of both checkpoint rules (<out>/bcp/, a normal bench folder).
<out>/summary.md and summary.csv (tidy: part, method, variant, metric, value) hold what to report. The
projection counts every iteration at the measured self-training speed (a pre-training step is cheaper) and
fills only `safety` of the time left after `reserve_s`, for what step 1 does not time (the run's start-up,
validation, checkpoints, the test evaluation), so that the check ends inside its budget.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsemi.bench.grid import BenchSpec, plan
from medsemi.bench.leaderboard import MEAN, RULE_TITLES, RunResult, collect, csv_text
from medsemi.bench.protocols import PAPER
from medsemi.bench.runner import run_bench
from medsemi.bench.throughput import REFERENCE, ThroughputSpec, run_throughput, write_report
from medsemi.config import load_config
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.tables import markdown_table

METHOD = "bcp"
BUDGET = 3
"""Labeled patients of the BCP run: the paper's 5 % setting."""
SEED = 1
SUMMARY_COLUMNS = ("part", "method", "variant", "metric", "value")


@dataclass(frozen=True)
class GpuCheck:
    """throughput: what step 1 measures; BCP trains with its fast variant's settings (autocast, channels-last).
    budget_s: wall-clock seconds for both steps, counted from `started`. max_iterations: a cap on N (smoke runs).
    overrides: `key=value` for the BCP run, after the check's own (autocast, channels-last, device, data root)."""

    throughput: ThroughputSpec
    out: Path
    budget_s: float = 540.0
    reserve_s: float = 75.0
    safety: float = 0.8
    max_iterations: int | None = None
    test_limit: int | None = None
    overrides: tuple[str, ...] = ()
    config_dir: Path = Path("configs/acdc")
    started: float = field(default_factory=time.perf_counter)

    @property
    def variant(self) -> str:
        return self.throughput.fast_variant or "fast"

    def paper_schedule(self) -> tuple[int, float]:
        """The config's self-training iterations and its pre-training length as a share of them."""
        config = load_config(self.config_dir / f"{METHOD}.yaml", list(self.overrides))
        return config.train.iterations, config.method.get("pretrain_iterations", 0) / config.train.iterations

    def bench_spec(self, iterations: int) -> BenchSpec:
        spec = self.throughput
        own = (f"train.amp={spec.amp}", f"train.channels_last={spec.channels_last}", f"train.device={spec.device}")
        return BenchSpec(
            PAPER,
            (METHOD,),
            (BUDGET,),
            (SEED,),
            self.out / METHOD,
            config_dir=self.config_dir,
            iterations=iterations,
            overrides=(*own, f"data.root={spec.root}", *self.overrides),
            test_limit=self.test_limit,
        )


def projected_iterations(check: GpuCheck, steps_per_s: float, elapsed_s: float) -> int:
    """Self-training iterations N whose N x (1 + pre-training share) steps fit the time left at `steps_per_s`;
    at least 1, at most the paper's schedule and max_iterations."""
    paper, share = check.paper_schedule()
    left = max(check.budget_s - elapsed_s - check.reserve_s, 0.0)
    fits = math.floor(left * check.safety * steps_per_s / (1 + share))
    return max(1, min(fits, paper, check.max_iterations or paper))


def measured_speed(report: dict[str, Any], method: str, variant: str) -> float:
    for result in report["results"]:
        if (result["method"], result["variant"]) == (method, variant):
            return float(result["iterations_per_s"])
    raise ValueError(f"the throughput step has no {method!r} {variant!r} result; keep {METHOD} in --methods")


def _train_rate(run: RunResult) -> float | None:
    wall = run.cost.get("train_wall_s")
    return run.iterations / wall if wall else None


def summary_rows(report: dict[str, Any], run: RunResult, iterations: int) -> list[dict[str, Any]]:
    def row(part: str, method: str, variant: str, metric: str, value: Any) -> dict[str, Any]:
        return dict(zip(SUMMARY_COLUMNS, (part, method, variant, metric, value), strict=True))

    rows = [
        row("throughput", r["method"], r["variant"], "iterations_per_s", r["iterations_per_s"])
        for r in report["results"]
    ]
    rows += [
        row("throughput", r["method"], r["variant"], "speedup_vs_reference", r["speedup"]) for r in report["ratios"]
    ]
    values = {
        "self_training_iterations": iterations,
        "iterations_done": run.iterations,
        "train_wall_s": run.cost.get("train_wall_s"),
        "iterations_per_s": _train_rate(run),
        "peak_cuda_mb": run.cost.get("peak_cuda_mb"),
    }
    rows += [row("bcp_paper", METHOD, "", metric, value) for metric, value in values.items()]
    rows += [row("bcp_paper", METHOD, rule, "test_dice", s[MEAN]["dice"]) for rule, s in run.summaries.items()]
    return rows


def summary_markdown(check: GpuCheck, report: dict[str, Any], run: RunResult, iterations: int, wall_s: float) -> str:
    variant, settings = check.variant, report["settings"]
    speed = {(r["method"], r["variant"]): r["iterations_per_s"] for r in report["results"]}
    ratio = {(r["method"], r["variant"]): r["speedup"] for r in report["ratios"]}
    body = [
        [name, f"{speed[(name, REFERENCE)]:.2f}", f"{speed[(name, variant)]:.2f}", f"{ratio[(name, variant)]:.2f}x"]
        for name in dict.fromkeys(r["method"] for r in report["results"])
    ]
    paper, _ = check.paper_schedule()
    rate = _train_rate(run)
    trained = (
        f"{rate:.2f} it/s over {run.cost['train_wall_s']:.0f} s of training (loading, validation included)"
        if rate
        else "no finished training"
    )
    dice = [f"{RULE_TITLES[rule]} {100 * s[MEAN]['dice']:.1f}" for rule, s in run.summaries.items()]
    cases = max(run.test_cases.values(), default=0)
    return "\n".join(
        [
            "# One-GPU check: data-path throughput, then BCP's ACDC paper protocol for the time left",
            "",
            f"- device: {report['device']}; budget {check.budget_s:.0f} s, used {wall_s:.0f} s",
            f"- throughput (throughput/throughput.md): batch {settings['batch']} at {settings['patch'][0]}x"
            f"{settings['patch'][1]}, {settings['warmup']} warm-up + {settings['iterations']} timed iterations, "
            f"reference DataLoader with {settings['workers']} workers",
            "",
            *markdown_table(["method", "reference it/s", f"{variant} it/s", f"{variant} / reference"], body),
            "",
            f"- BCP, protocol `paper` ({check.config_dir}/{METHOD}.yaml, {BUDGET} labeled patients, seed {SEED}, "
            f"{variant}): {iterations} self-training iterations projected to fit, {100 * iterations / paper:.1f} % of "
            f"the paper's {paper}, pre-training scaled alike; {run.iterations} iterations done, {trained}; run "
            f"{run.status} ({METHOD}/leaderboard.md)",
            f"- BCP test Dice, mean of classes over {cases} test volumes: {', '.join(dice) or '-'}",
            "",
        ]
    )


def run_check(check: GpuCheck, report: Callable[[str], None] = print) -> tuple[list[Path], bool]:
    """Both steps; returns the files written (summary first) and whether the BCP run completed."""
    throughput = run_throughput(check.throughput)
    files = write_report(throughput, check.out / "throughput")
    steps_per_s = measured_speed(throughput, METHOD, check.variant)
    iterations = projected_iterations(check, steps_per_s, time.perf_counter() - check.started)
    report(f"{METHOD} {check.variant}: {steps_per_s:.2f} steps/s -> {iterations} self-training iterations")
    spec = check.bench_spec(iterations)
    outcome = run_bench(spec, isolate=True, report=report)
    run = collect(plan(spec)[0], spec.test_limit, outcome.failed)
    summary = [check.out / "summary.md", check.out / "summary.csv"]
    wall_s = time.perf_counter() - check.started
    atomic_write_text(summary[0], summary_markdown(check, throughput, run, iterations, wall_s))
    atomic_write_text(summary[1], csv_text(summary_rows(throughput, run, iterations), SUMMARY_COLUMNS))
    return [*summary, *files, *outcome.files], run.status == "complete"


def main(argv: list[str] | None = None) -> int:
    from medsemi.bench.arguments import add_gpu_arguments
    from medsemi.bench.throughput import spec_from_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_gpu_arguments(parser)
    args = parser.parse_args(argv)
    given = {"budget_s": args.budget_s, "reserve_s": args.reserve_s}
    check = GpuCheck(
        throughput=spec_from_args(args),
        out=Path(args.out or "runs/bench/gpu"),
        max_iterations=args.max_iterations,
        test_limit=args.test_limit,
        overrides=tuple(args.overrides),
        **{key: value for key, value in given.items() if value is not None},
    )
    files, complete = run_check(check)
    print(files[0].read_text())
    print(f"written: {', '.join(map(str, files))}")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
