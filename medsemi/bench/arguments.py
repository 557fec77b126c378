"""Command-line options of `medsemi bench` and benchmarks/throughput.py (argparse only: --help stays fast)."""

from __future__ import annotations

import argparse

BENCH_EPILOG = """\
examples:
  medsemi bench --protocol quick --methods supervised,mean_teacher,bcp --budgets 3,7 --seeds 1,2,3 \\
      --out runs/bench/quick --jobs 2             # re-run the same line to resume an interrupted bench
  medsemi bench --protocol paper --methods bcp --budgets 3 --seeds 1 --out runs/bench/paper train.amp=true
  medsemi bench --protocol quick --methods supervised,bcp --cost   # projected minutes per run, no training
  medsemi bench --protocol quick_la --methods supervised,bcp --budgets 4 --seeds 1,2,3
  medsemi bench --throughput --device cuda --batch 24 --amp --channels-last
"""


def _csv_ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """Options both modes read (their defaults depend on the mode, so they default to None here)."""
    parser.add_argument("--methods", default=None, help="comma-separated registry keys")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="bench: schedule length (iteration-measured method options scale with it); "
        "throughput: timed iterations per measurement (default 20)",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/bench/<protocol or throughput>)")
    parser.add_argument(
        "--dataset",
        default=None,
        help="bench: config folder configs/<dataset> (acdc, la; default the protocol's first dataset); "
        "throughput: acdc or synthetic2d (default acdc when --root exists)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; bench: per run (default: torch's threads, i.e. OMP_NUM_THREADS or the cores, "
        "// --jobs); throughput: torch's choice",
    )


def add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("throughput (fast vs reference-style data path)")
    group.add_argument("--root", default=".cache/data/ACDC", help="ACDC folder")
    group.add_argument("--data-options", default="{}", help="YAML mapping of dataset options")
    group.add_argument("--labeled", type=int, default=3, help="labeled patients")
    group.add_argument("--net-options", default="{}", help="YAML mapping merged into each method's net options")
    group.add_argument("--device", default="auto")
    group.add_argument("--batch", type=int, default=24, help="images per step, half labeled (default 24)")
    group.add_argument("--patch", type=int, default=256, help="square patch side (default 256)")
    group.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5; --cost: per stage)")
    group.add_argument("--workers", type=int, default=16, help="reference DataLoader workers (SSL4MIS: 16)")
    group.add_argument("--amp", action="store_true", help="also measure the fast path with autocast")
    group.add_argument("--channels-last", action="store_true", help="also measure the fast path channels-last")
    group.add_argument("--repeats", type=int, default=1, help="interleaved repeats; the median is reported")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = BENCH_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_shared_arguments(parser)
    grid = parser.add_argument_group("leaderboard (methods x budgets x seeds)")
    from medsemi.bench.protocols import PROTOCOLS  # configuration only, no torch

    grid.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS))
    grid.add_argument("--budgets", type=_csv_ints, default=[3, 7], help="labeled patients, e.g. 3,7")
    grid.add_argument("--seeds", type=_csv_ints, default=[1, 2, 3], help="e.g. 1,2,3")
    grid.add_argument("--config-dir", default=None, help="where <method>.yaml lives (default configs/<dataset>)")
    grid.add_argument("--test-limit", type=int, default=None, help="evaluate only the first N test cases")
    grid.add_argument(
        "--report-only", action="store_true", help="write the leaderboard of the finished runs; train nothing"
    )
    grid.add_argument(
        "--recorded",
        default=None,
        metavar="DIR",
        help="an earlier leaderboard's seeds.csv, runs.csv and leaderboard.csv: runs they hold are reused, "
        "not trained, when their own folder is missing or unfinished",
    )
    grid.add_argument("--in-process", action="store_true", help="train in this process (no per-run peak host memory)")
    grid.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained side by side, each in its own process with --threads threads (default 1)",
    )
    grid.add_argument("overrides", nargs="*", help="key=value overrides for every run, after the protocol's")
    grid.add_argument(
        "--cost",
        action="store_true",
        help="project each method's training time from a few timed steps instead of training (writes cost.md)",
    )
    grid.add_argument("--timed-steps", type=int, default=10, help="--cost: timed steps per stage (default 10)")
    parser.add_argument("--throughput", action="store_true", help="measure data-path throughput instead")
    add_throughput_arguments(parser)


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """benchmarks/gpu.sh: the throughput options (always with autocast + channels-last, on CUDA unless told),
    then the time budget of the BCP run; defaults of the budget live in medsemi.bench.gpu.GpuCheck."""
    add_shared_arguments(parser)
    add_throughput_arguments(parser)
    parser.set_defaults(device="cuda", amp=True, channels_last=True)
    group = parser.add_argument_group("BCP, ACDC paper protocol, for the time left")
    group.add_argument("--budget-s", type=float, default=None, help="wall-clock seconds for the whole check (540)")
    group.add_argument(
        "--reserve-s", type=float, default=None, help="seconds kept for BCP's start-up and test evaluation (75)"
    )
    group.add_argument("--max-iterations", type=int, default=None, help="cap on BCP's self-training iterations")
    group.add_argument("--test-limit", type=int, default=None, help="evaluate only the first N test cases")
    group.add_argument("overrides", nargs="*", help="key=value overrides for the BCP run")
