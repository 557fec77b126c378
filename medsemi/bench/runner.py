"""The grid runner: methods x labeled budgets x seeds under one protocol, each a normal run folder.

Layout: <out>/<method>/labeled_<budget>/seed_<seed>/ (config.yaml, log.csv, checkpoints/, eval/, bench.json,
bench.log). A run that is complete (finished, costed, evaluated) is reused as it is; an unfinished one is
resumed from its last checkpoint; a folder whose saved config differs from what the bench would run is an
error (a leaderboard never mixes settings). Each run trains in its own Python process by default, so its
peak memory can be read (see medsemi.bench.worker); runs are sequential.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsemi.bench.protocols import Protocol, scaled_options
from medsemi.bench.worker import execute, is_complete
from medsemi.config import Config, flat_settings, load_config, parse_overrides
from medsemi.engine.checkpoint import atomic_write_text

GRID_KEYS = ("seed", "data.labeled", "run.dir", "train.iterations")
"""Set by the grid (and --iterations); a user override of one of them would silently break the table."""


class BenchError(ValueError):
    pass


@dataclass(frozen=True)
class BenchSpec:
    """One leaderboard: which methods, budgets and seeds, under which protocol, written where.

    config_dir: where <method>.yaml lives (default configs/<dataset>). iterations: overrides the protocol's
    schedule length. overrides: extra `key=value` for every run (after the protocol's). test_limit: evaluate
    only the first N test cases (smoke runs; named in every table).
    """

    protocol: Protocol
    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    seeds: tuple[int, ...]
    out: Path
    dataset: str = "acdc"
    config_dir: Path | None = None
    iterations: int | None = None
    overrides: tuple[str, ...] = ()
    test_limit: int | None = None

    @property
    def config_folder(self) -> Path:
        return Path(self.config_dir or Path("configs") / self.dataset)

    def base_config(self, method: str) -> Path:
        path = self.config_folder / f"{method}.yaml"
        if not path.exists():
            raise BenchError(f"{path}: no config for method {method!r}; every benched method needs one")
        return path

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-able values (written to <out>/bench.json)."""
        values = asdict(self)
        values["protocol"] = self.protocol.name
        values["protocol_description"] = self.protocol.description
        values["out"] = str(self.out)
        values["config_dir"] = str(self.config_folder)
        return values


@dataclass(frozen=True)
class RunSpec:
    method: str
    budget: int
    seed: int
    run_dir: Path
    base_config: Path
    overrides: tuple[str, ...]

    def config(self) -> Config:
        return load_config(self.base_config, list(self.overrides))


@dataclass
class BenchOutcome:
    runs: list[RunSpec]
    trained: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def run_dir_of(out: Path, method: str, budget: int, seed: int) -> Path:
    return Path(out) / method / f"labeled_{budget}" / f"seed_{seed}"


def _check_user_overrides(overrides: Sequence[str]) -> None:
    tree = parse_overrides(list(overrides))
    for key in GRID_KEYS:
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            raise BenchError(
                f"override {key}=... is set by the bench grid (use --methods/--budgets/--seeds/"
                "--iterations/--out instead)"
            )


def method_overrides(spec: BenchSpec, method: str) -> list[str]:
    """Protocol overrides, the schedule length with every iteration-measured option scaled to it, the
    protocol's per-method entries, then the user's overrides."""
    protocol = spec.protocol
    if spec.dataset not in protocol.datasets:
        raise BenchError(
            f"protocol {protocol.name!r} is defined for {', '.join(protocol.datasets)}, not {spec.dataset!r}"
        )
    _check_user_overrides(spec.overrides)
    shared = [*protocol.overrides, *spec.overrides]
    base = load_config(spec.base_config(method), shared)
    iterations = spec.iterations or protocol.iterations or base.train.iterations
    return [
        *protocol.overrides,
        f"train.iterations={iterations}",
        *scaled_options(base, iterations),
        *protocol.method_overrides.get(method, ()),
        *spec.overrides,
        "train.progress=false",
    ]


def plan(spec: BenchSpec) -> list[RunSpec]:
    """Every run of the grid, seeds outermost: the first complete seed already gives a full table."""
    per_method = {method: method_overrides(spec, method) for method in spec.methods}
    runs = []
    for seed in spec.seeds:
        for budget in spec.budgets:
            for method in spec.methods:
                run_dir = run_dir_of(spec.out, method, budget, seed)
                grid = [f"data.labeled={budget}", f"seed={seed}", f"run.dir={run_dir}"]
                runs.append(
                    RunSpec(method, budget, seed, run_dir, spec.base_config(method), (*per_method[method], *grid))
                )
    return runs


def _comparable(config: Config) -> dict[str, Any]:
    """The settings that make a result: everything but the folder and the progress bar."""
    flat = flat_settings(config)
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


def _train_isolated(run: RunSpec, test_limit: int | None) -> None:
    command = [sys.executable, "-m", "medsemi.bench.worker", str(run.base_config), *run.overrides]
    if test_limit is not None:
        command += ["--test-limit", str(test_limit)]
    with open(run.run_dir / "bench.log", "a") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = (run.run_dir / "bench.log").read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"worker exited with status {status}: {' '.join(tail)}")


def _train_in_process(run: RunSpec, test_limit: int | None) -> None:
    try:
        execute(run.config(), test_limit, isolated=False)
    except Exception:
        with open(run.run_dir / "bench.log", "a") as log:
            log.write(traceback.format_exc())
        raise


def run_bench(
    spec: BenchSpec, *, isolate: bool = True, train: bool = True, report: Callable[[str], None] = print
) -> BenchOutcome:
    """Train/evaluate what is missing (nothing with `train=False`: the tables of the finished runs, the others
    listed as incomplete), then write the leaderboard (tables, CSVs, plots) into spec.out."""
    from medsemi.bench.leaderboard import write_leaderboard

    runs = plan(spec)
    outcome = BenchOutcome(runs)
    for run in runs:
        check_existing(run)
    atomic_write_text(Path(spec.out) / "bench.json", json.dumps(spec.describe(), indent=1) + "\n")
    for index, run in enumerate(runs, 1):
        name = f"[{index}/{len(runs)}] {run.method} labeled={run.budget} seed={run.seed}"
        if is_complete(run.run_dir, spec.test_limit):
            outcome.reused.append(run.run_dir)
            report(f"{name}: complete, reused ({run.run_dir})")
            continue
        if not train:
            report(f"{name}: not finished, left out (--report-only)")
            continue
        run.run_dir.mkdir(parents=True, exist_ok=True)
        report(f"{name}: running in {run.run_dir}")
        start = time.perf_counter()
        try:
            (_train_isolated if isolate else _train_in_process)(run, spec.test_limit)
        except Exception as error:  # one broken run must not lose the others' results
            outcome.failed[run.run_dir] = str(error)
            report(f"{name}: FAILED ({error}); see {run.run_dir / 'bench.log'}")
        else:
            outcome.trained.append(run.run_dir)
            report(f"{name}: done in {time.perf_counter() - start:.0f} s")
        write_leaderboard(spec, runs, outcome.failed)  # partial tables while a long bench runs
    outcome.files = write_leaderboard(spec, runs, outcome.failed)
    return outcome


def run_from_args(args: Any) -> int:
    """`medsemi bench`: a leaderboard, or with --throughput the data-path benchmark."""
    if args.throughput:
        from medsemi.bench.throughput import run_from_args as throughput

        if args.overrides:
            raise BenchError(f"--throughput takes no key=value overrides, got {args.overrides}")
        return throughput(args)
    from medsemi.bench.protocols import get_protocol

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
    )
    if args.cost:
        from medsemi.bench.cost import measure_costs, write_costs

        costs = measure_costs(spec, args.timed_steps, args.warmup)
        for cost in costs:
            print(f"{cost.method}: {cost.projected_train_s / 60:.1f} min projected training")
        for path in write_costs(spec, costs, args.timed_steps, args.warmup):
            print(f"written: {path}")
        return 0
    outcome = run_bench(spec, isolate=not args.in_process, train=not args.report_only)
    print(f"trained {len(outcome.trained)}, reused {len(outcome.reused)}, failed {len(outcome.failed)}")
    for path in outcome.files:
        print(f"written: {path}")
    return 1 if outcome.failed else 0
