"""One bench run: train (or resume) a run folder, evaluate its checkpoints on the test split, record the cost.

Run as `python -m medsemi.bench.worker CONFIG [key=value ...] [--test-limit N] [--threads T]` it is a fresh process that
does nothing else, so its peak resident set size (medsemi.bench.memory, read right after training) is the
training's host memory; on a GPU the peak CUDA memory is recorded as well.
Everything lands in <run>/bench.json, appended per attempt, so a resumed run keeps the cost of its first part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from medsemi.bench.memory import peak_memory, reset_peak_memory
from medsemi.config import Config, load_config
from medsemi.engine.checkpoint import atomic_write_text, load_checkpoint
from medsemi.engine.device import resolve_device, torch_threads
from medsemi.engine.run_folder import evaluation_dir
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run


@dataclass(frozen=True)
class Rule:
    """How a test number is read off a run: which checkpoint, and on how many training batches its BatchNorm
    statistics are re-estimated with dropout off first (0: as trained; medsemi.eval.batchnorm); `title` names it
    in every table and figure."""

    checkpoint: str
    title: str
    recalibrate_bn: int = 0


RECALIBRATION_BATCHES = 100
RULES: dict[str, Rule] = {
    "best": Rule("best", "best-on-val"),
    "last": Rule("last", "last iterate"),
    "last_bn": Rule("last", "last iterate, BatchNorm re-estimated", RECALIBRATION_BATCHES),
}
"""Best-on-val (checkpoints/best.pt) and the last iterate (checkpoints/last.pt) as trained, as the papers
evaluate; the last iterate with its BatchNorm statistics re-estimated, which shows how much of a number is the
dropout/BatchNorm variance shift (docs/benchmarks.md)."""

TEST_SPLIT = "test"
RECORD = "bench.json"


def read_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else {"attempts": [], "evaluations": {}}


def finished(run_dir: Path) -> bool:
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return last.exists() and bool(load_checkpoint(last)["state"]["finished"])


def available_rules(run_dir: Path) -> list[str]:
    return [name for name, rule in RULES.items() if (Path(run_dir) / "checkpoints" / f"{rule.checkpoint}.pt").exists()]


def summary_csv(run_dir: Path, rule: str) -> Path:
    """The test summary of a checkpoint rule: the folder its bench evaluation wrote (a `--test-limit` one is
    kept apart from the full split's), eval/test_<rule> when the record names none."""
    folder = read_record(run_dir)["evaluations"].get(rule, {}).get("folder")
    default = evaluation_dir(run_dir, TEST_SPLIT, RULES[rule].checkpoint, recalibrate_bn=RULES[rule].recalibrate_bn)
    return (Path(run_dir) / folder if folder else default) / "summary.csv"


def pending_evaluations(run_dir: Path, test_limit: int | None) -> list[str]:
    """Rules whose test summary is missing or was computed on another number of test cases."""
    evaluations = read_record(run_dir)["evaluations"]
    return [
        rule
        for rule in available_rules(run_dir)
        if not summary_csv(run_dir, rule).exists() or evaluations.get(rule, {}).get("limit", -1) != test_limit
    ]


def is_complete(run_dir: Path, test_limit: int | None) -> bool:
    """Trained to the end, costed, and evaluated with this test limit: nothing left to do."""
    run_dir = Path(run_dir)
    return (run_dir / RECORD).exists() and finished(run_dir) and not pending_evaluations(run_dir, test_limit)


def _global_step(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "last.pt"
    return int(load_checkpoint(last)["state"]["global_step"]) if last.exists() else 0


def execute(
    config: Config, test_limit: int | None = None, *, isolated: bool = True, threads: int | None = None
) -> dict[str, Any]:
    """Train/resume `config` to the end, evaluate pending checkpoint rules, append the costs to bench.json.

    isolated: this process runs nothing else, so its peak RSS is the run's (False: not recorded).
    threads: torch intra-op threads for this run (None: as they are); restored afterwards.
    """
    with torch_threads(threads):
        return _execute(config, test_limit, isolated)


def _execute(config: Config, test_limit: int | None, isolated: bool) -> dict[str, Any]:
    run_dir = Path(config.run.dir)
    device = resolve_device(config.train.device)
    reset_peak_memory(device)
    before = _global_step(run_dir)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    train(config, resume=True)
    memory = peak_memory(device)
    attempt = {
        "started": started,
        "steps": _global_step(run_dir) - before,
        "train_wall_s": time.perf_counter() - start,
        "peak_rss_mb": memory.host_rss_mb if isolated else None,
        "peak_cuda_mb": memory.cuda_mb,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    record = read_record(run_dir)
    record["attempts"].append(attempt)
    for rule in pending_evaluations(run_dir, test_limit):
        start = time.perf_counter()
        checkpoint, batches = RULES[rule].checkpoint, RULES[rule].recalibrate_bn
        summary = evaluate_run(run_dir, TEST_SPLIT, checkpoint, limit=test_limit, recalibrate_bn=batches)
        folder = Path(summary["folder"]).relative_to(run_dir)
        record["evaluations"][rule] = {
            "limit": test_limit,
            "wall_s": time.perf_counter() - start,
            "folder": str(folder),
        }
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsemi.bench.worker", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    execute(load_config(args.config, args.overrides), args.test_limit, isolated=True, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
