"""The bench grid: which runs a leaderboard is made of (methods x labeled budgets x seeds under one protocol),
each with its folder and its config overrides. Shared by the runner that trains them, the leaderboard that reads
them and the cost estimate that times them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medsemi.bench.protocols import Protocol, scaled_options
from medsemi.config import Config, load_config, parse_overrides

GRID_KEYS = ("seed", "data.labeled", "run.dir", "train.iterations")
"""Set by the grid (and --iterations); a user override of one of them would silently break the table."""


class BenchError(ValueError):
    pass


@dataclass(frozen=True)
class BenchSpec:
    """One leaderboard: which methods, budgets and seeds, under which protocol, written where.

    config_dir: where <method>.yaml lives (default configs/<dataset>). iterations: overrides the protocol's
    schedule length. overrides: extra `key=value` for every run (after the protocol's). test_limit: evaluate
    only the first N test cases (smoke runs; named in every table). recorded: the folder of an earlier
    leaderboard's tidy outputs; a run whose folder is not complete is taken from them when they hold it.
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
    recorded: Path | None = None

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
        values["recorded"] = None if self.recorded is None else str(self.recorded)
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
