"""How long one run of each method takes under a bench protocol, projected from a few timed steps.

For every method, the run the bench would train for the first budget and seed is set up for real in a
scratch folder (the same config: data, network, device-side batch stream, validation cases). For each of the
method's stages, `warmup` untimed and `steps` timed optimisation steps run at the middle of the stage (ramps
and warm-ups over, every loss term active), and one validation is timed. The projected training time is
  sum over stages of (iterations x seconds per step) + validations x seconds per validation
(checkpoint writes are not counted). `quick` was sized with it (docs/benchmarks.md): it says whether a method
fits a time budget in about a minute instead of a full run, on the machine that will run the bench.
The networks are fresh, so a step whose cost grows with what they have learnt is underestimated: CAML's
correlation loss, whose memory bank and query rows fill only once predictions are right and confident.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from medsemi.bench.grid import BenchSpec, RunSpec, plan
from medsemi.bench.throughput import describe_device, time_steps
from medsemi.config import load_config
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.engine.optim import build_optimizer
from medsemi.engine.step import OptimisationStep
from medsemi.engine.trainer import Trainer
from medsemi.tables import markdown_table


@dataclass(frozen=True)
class StageCost:
    stage: str
    iterations: int
    seconds_per_step: float


@dataclass(frozen=True)
class MethodCost:
    method: str
    device: str
    stages: tuple[StageCost, ...]
    validations: int
    seconds_per_validation: float

    @property
    def projected_train_s(self) -> float:
        steps = sum(stage.iterations * stage.seconds_per_step for stage in self.stages)
        return steps + self.validations * self.seconds_per_validation


def measure_run(run: RunSpec, steps: int, warmup: int) -> MethodCost:
    """Time `run`'s stages and one validation in a scratch copy of its run folder."""
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(run.base_config, [*run.overrides, f"run.dir={Path(scratch) / 'run'}"])
        trainer = Trainer(config)
        method, device = trainer.method, trainer.device
        batches = itertools.count()
        stages = []
        for index, stage in enumerate(method.stages()):
            method.start_stage(stage, method.state_dict() if index else None)
            optimizers = [
                build_optimizer(module, config.optim.settings_for(name))
                for name, module in method.optimised_modules().items()
            ]
            optimisation = OptimisationStep(
                method, optimizers, device, amp=config.train.amp, channels_last=config.train.channels_last
            )
            middle = stage.iterations // 2
            method.train()

            def step(optimisation: OptimisationStep = optimisation, middle: int = middle) -> None:
                total = sum(optimisation.losses(trainer.stream.batch(next(batches)), middle).values())
                float(total.detach())  # the trainer's one host sync per step
                optimisation.update(total, middle)

            elapsed = time_steps(step, warmup, steps, device)
            stages.append(StageCost(stage.name, stage.iterations, elapsed / steps))
        validation_s, validations = 0.0, 0
        if trainer.val_cases:
            validation_s = _seconds(trainer.validate)
            every = config.train.val_every
            validations = sum(math.ceil(stage.iterations / every) for stage in method.stages())
    return MethodCost(run.method, describe_device(device), tuple(stages), validations, validation_s)


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure_costs(spec: BenchSpec, steps: int = 10, warmup: int = 5) -> list[MethodCost]:
    """One MethodCost per method of `spec`, measured one after the other in this process."""
    first = {}
    for run in plan(spec):
        first.setdefault(run.method, run)
    return [measure_run(run, steps, warmup) for run in first.values()]


def _stages_text(cost: MethodCost) -> str:
    return " + ".join(f"{s.stage} {s.iterations} x {s.seconds_per_step:.3f} s" for s in cost.stages)


def write_costs(spec: BenchSpec, costs: list[MethodCost], steps: int, warmup: int) -> list[Path]:
    """cost.md and cost.csv in spec.out."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    header = ["method", "stages: iterations x s/step", "validations x s", "projected train time (min)"]
    body = [
        [
            c.method,
            _stages_text(c),
            f"{c.validations} x {c.seconds_per_validation:.1f} s",
            f"{c.projected_train_s / 60:.1f}",
        ]
        for c in costs
    ]
    devices = ", ".join(sorted({c.device for c in costs}))
    lines = [
        f"# Projected cost of one run, protocol `{spec.protocol.name}`",
        "",
        f"- protocol: {spec.protocol.description}",
        f"- measured on {devices}, {torch.get_num_threads()} torch threads, one method at a time; labeled "
        f"budget {spec.budgets[0]}, seed {spec.seeds[0]}",
        f"- per stage: {warmup} warm-up + {steps} timed optimisation steps at the middle of the stage; one "
        "timed validation; checkpoint writes and the test evaluation are not included",
        "",
        *markdown_table(header, body),
        "",
    ]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(
        ["method", "stage", "iterations", "seconds_per_step", "validations", "seconds_per_validation", "projected_s"]
    )
    for c in costs:
        for s in c.stages:
            totals = [c.validations, c.seconds_per_validation, c.projected_train_s]
            writer.writerow([c.method, s.stage, s.iterations, s.seconds_per_step, *totals])
    files = [out / "cost.md", out / "cost.csv"]
    atomic_write_text(files[0], "\n".join(lines))
    atomic_write_text(files[1], rows.getvalue())
    return files
