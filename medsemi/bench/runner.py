"""The grid runner: methods x labeled budgets x seeds under one protocol, each a normal run folder.

Layout: <out>/<method>/labeled_<budget>/seed_<seed>/ (config.yaml, log.csv, checkpoints/, eval/, bench.json,
bench.log). A run that is complete (finished, costed, evaluated) is reused as it is; an unfinished one is
resumed from its last checkpoint; a folder whose saved config differs from what the bench would run is an
error (a leaderboard never mixes settings). Each run trains in its own Python process by default, so its
peak memory can be read (see medsemi.bench.worker). `jobs` runs train side by side, each process limited to
`threads` torch/OpenMP threads, so that they never oversubscribe the cores (on 2 cores, two runs of 2 threads
each step 6x slower than one run alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsemi.bench.cost import measure_costs, write_costs
from medsemi.bench.grid import BenchError, BenchSpec, RunSpec, plan
from medsemi.bench.leaderboard import recorded_results, write_leaderboard
from medsemi.bench.protocols import get_protocol
from medsemi.bench.throughput import run_from_args as throughput
from medsemi.bench.worker import execute, is_complete
from medsemi.config import Config, load_config, resolved_settings
from medsemi.engine.checkpoint import atomic_write_text


@dataclass
class BenchOutcome:
    runs: list[RunSpec]
    trained: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def _comparable(config: Config) -> dict[str, Any]:
    """The settings that make a result: everything but the folder and the progress bar."""
    flat = resolved_settings(config)
    return {key: value for key, value in flat.items() if key not in ("run.dir", "train.progress")}


def check_existing(run: RunSpec) -> None:
    """A run folder may only be reused or resumed by the bench that would write the same config into it."""
    saved = run.run_dir / "config.yaml"
    if not saved.exists():
        return
    old, new = _comparable(load_config(saved)), _comparable(run.config())
    differing = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if differing:
        raise BenchError(
            f"{run.run_dir} holds a run with other settings ({', '.join(differing)}); "
            "use another --out or delete that folder"
        )


def threads_per_run(jobs: int, threads: int | None) -> int:
    """--threads, or this process's torch threads (OMP_NUM_THREADS where set, else the physical cores) // jobs."""
    if jobs < 1:
        raise BenchError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    return threads or max(1, torch.get_num_threads() // jobs)


def _train_isolated(run: RunSpec, test_limit: int | None, threads: int) -> None:
    command = [sys.executable, "-m", "medsemi.bench.worker", str(run.base_config), *run.overrides]
    command += ["--threads", str(threads)]
    if test_limit is not None:
        command += ["--test-limit", str(test_limit)]
    environment = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(run.run_dir / "bench.log", "a") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
    if status != 0:
        tail = (run.run_dir / "bench.log").read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"worker exited with status {status}: {' '.join(tail)}")


def _train_in_process(run: RunSpec, test_limit: int | None, threads: int) -> None:
    try:
        execute(run.config(), test_limit, isolated=False, threads=threads)
    except Exception:
        with open(run.run_dir / "bench.log", "a") as log:
            log.write(traceback.format_exc())
        raise


def run_bench(
    spec: BenchSpec,
    *,
    isolate: bool = True,
    train: bool = True,
    jobs: int = 1,
    threads: int | None = None,
    report: Callable[[str], None] = print,
) -> BenchOutcome:
    """Train/evaluate what is missing (nothing with `train=False`: the tables of the finished runs, the others
    listed as incomplete), then write the leaderboard (tables, CSVs, plots) into spec.out.

    jobs: runs trained at once (isolated processes only); threads: per run, default the caller's torch threads
    // jobs (threads_per_run).
    """
    if jobs > 1 and not isolate:
        raise BenchError("--jobs above 1 needs isolated runs (drop --in-process)")
    run_threads = threads_per_run(jobs, threads)
    runs = plan(spec)
    outcome = BenchOutcome(runs)
    for run in runs:
        check_existing(run)
    atomic_write_text(Path(spec.out) / "bench.json", json.dumps(spec.describe(), indent=1) + "\n")
    recorded = recorded_results(spec.recorded, runs, spec.protocol.name) if spec.recorded else {}
    pending: list[tuple[str, RunSpec]] = []
    for index, run in enumerate(runs, 1):
        name = f"[{index}/{len(runs)}] {run.method} labeled={run.budget} seed={run.seed}"
        if is_complete(run.run_dir, spec.test_limit):
            outcome.reused.append(run.run_dir)
            report(f"{name}: complete, reused ({run.run_dir})")
        elif run.run_dir in recorded:
            outcome.reused.append(run.run_dir)
            report(f"{name}: recorded in {spec.recorded}, reused")
        elif not train:
            report(f"{name}: not finished, left out (--report-only)")
        else:
            pending.append((name, run))
    trainer = _train_isolated if isolate else _train_in_process

    def train_one(name: str, run: RunSpec) -> float:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        report(f"{name}: running in {run.run_dir} ({run_threads} threads)")
        began = time.perf_counter()
        trainer(run, spec.test_limit, run_threads)
        return time.perf_counter() - began

    queue = iter(pending)
    running: dict[Future[float], tuple[str, RunSpec]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:

        def submit_next() -> None:
            following = next(queue, None)
            if following is not None:
                running[pool.submit(train_one, *following)] = following

        for _ in range(jobs):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name, run = running.pop(future)
                try:
                    elapsed = future.result()
                except Exception as error:  # one broken run must not lose the others' results
                    outcome.failed[run.run_dir] = str(error)
                    report(f"{name}: FAILED ({error}); see {run.run_dir / 'bench.log'}")
                else:
                    outcome.trained.append(run.run_dir)
                    report(f"{name}: done in {elapsed:.0f} s")
                submit_next()
            write_leaderboard(spec, runs, outcome.failed)  # partial tables while a long bench runs
    outcome.files = write_leaderboard(spec, runs, outcome.failed)
    return outcome


def run_from_args(args: Any) -> int:
    """`medsemi bench`: a leaderboard, or with --throughput the data-path benchmark."""
    if args.throughput:
        if args.overrides:
            raise BenchError(f"--throughput takes no key=value overrides, got {args.overrides}")
        return throughput(args)
    if not args.methods:
        raise BenchError("--methods is required, e.g. --methods supervised,mean_teacher")
    protocol = get_protocol(args.protocol)
    spec = BenchSpec(
        protocol=protocol,
        methods=tuple(args.methods.split(",")),
        budgets=tuple(args.budgets),
        seeds=tuple(args.seeds),
        out=Path(args.out or f"runs/bench/{args.protocol}"),
        dataset=args.dataset or protocol.datasets[0],
        config_dir=Path(args.config_dir) if args.config_dir else None,
        iterations=args.iterations,
        overrides=tuple(args.overrides),
        test_limit=args.test_limit,
        recorded=Path(args.recorded) if args.recorded else None,
    )
    if args.cost:
        costs = measure_costs(spec, args.timed_steps, args.warmup)
        for cost in costs:
            print(f"{cost.method}: {cost.projected_train_s / 60:.1f} min projected training")
        for path in write_costs(spec, costs, args.timed_steps, args.warmup):
            print(f"written: {path}")
        return 0
    outcome = run_bench(
        spec, isolate=not args.in_process, train=not args.report_only, jobs=args.jobs, threads=args.threads
    )
    print(f"trained {len(outcome.trained)}, reused {len(outcome.reused)}, failed {len(outcome.failed)}")
    for path in outcome.files:
        print(f"written: {path}")
    return 1 if outcome.failed else 0
