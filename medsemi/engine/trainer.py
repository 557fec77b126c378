"""The one training loop every method runs through: stages, optimizers, schedules, validation, checkpoints."""

from __future__ import annotations

import functools
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsemi.config import Config, check_resume, save_config
from medsemi.data.cases import DataError
from medsemi.data.splits import across_patients, describe_split, load_split, patients, require_unlabeled
from medsemi.data.stream import BatchStream
from medsemi.engine import distributed
from medsemi.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    non_finite,
    save_checkpoint,
)
from medsemi.engine.device import resolve_device
from medsemi.engine.optim import build_optimizer, set_learning_rates
from medsemi.engine.run_folder import prepare_run_dir
from medsemi.engine.step import OptimisationStep
from medsemi.engine.training_log import TrainingLog
from medsemi.eval.evaluate import evaluate_cases, mean_dice
from medsemi.eval.figures import plot_learning_curves
from medsemi.methods import Method, MethodContext, create_method
from medsemi.methods.base import NetSpec, Stage
from medsemi.progress import progress, say


class NonFiniteLossError(FloatingPointError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint so a killed run resumes exactly here."""

    stage_index: int = 0
    step: int = 0
    global_step: int = 0
    best_dice: float = -1.0
    best_step: int = -1
    finished: bool = False


class Trainer:
    def __init__(self, config: Config, *, resume: bool = False, overwrite: bool = False) -> None:
        self.config = config
        self.run_dir = Path(config.run.dir)
        self.dist, self.device = distributed.setup(resolve_device(config.train.device))
        distributed.on_main(self.dist, lambda: prepare_run_dir(self.run_dir, resume=resume, overwrite=overwrite))
        seed_everything(config.seed)
        self.info, self.split = load_split(config.data)
        context = MethodContext(
            info=self.info,
            net=NetSpec(config.net.name, dict(config.net.options)),
            iterations=config.train.iterations,
        )
        self.method: Method = create_method(config.method_name, config.method_options, context).to(self.device)
        if self.method.uses_unlabeled:
            require_unlabeled(self.split, config.method_name)
        if self.dist.enabled:
            distributed.broadcast_state(self.method, self.dist)
            seed_everything(distributed.rank_seed(config.seed, self.dist.rank))
        if config.train.channels_last and self.info.spatial_dims == 2:
            self.method.to(memory_format=torch.channels_last)
        self.stream = BatchStream(
            self.split.labeled,
            self.split.unlabeled if self.method.uses_unlabeled else [],
            spatial_dims=self.info.spatial_dims,
            patch_size=tuple(config.data.patch_size),
            batch_labeled=distributed.per_rank_batch(config.data.batch_labeled, self.dist, "data.batch_labeled"),
            batch_unlabeled=distributed.per_rank_batch(
                config.data.batch_unlabeled if self.method.uses_unlabeled else 0,
                self.dist,
                "data.batch_unlabeled",
            ),
            augment=config.data.augment,
            strong_view=self.method.needs_strong_view,
            seed=config.seed,
            device=self.device,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.val_cases = self._val_cases()
        if self.dist.is_main:
            say("\n".join(describe_split(self.split, self._split_notes())))
        self.state = TrainState()
        self._pending_optimizers: dict[str, Any] | None = None
        self.log = TrainingLog(self.run_dir, enabled=self.dist.is_main)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        last = self.checkpoint_dir / "last.pt"
        checkpoint = distributed.on_main(self.dist, lambda: load_checkpoint(last) if resume and last.exists() else None)
        legacy_history = self._restore(checkpoint) if checkpoint is not None else None
        self.log.continue_from(self.state.global_step, legacy_history)
        if self.dist.is_main:
            save_config(config, self.run_dir / "config.yaml")
        self._plotted_at = 0.0

    def _val_cases(self) -> list:
        split = self.config.train.val_split
        if split == "none":
            return []
        cases = {"val": self.split.val, "test": self.split.test}.get(split)
        if cases is None:
            raise DataError(f"train.val_split {split!r} is not one of val, test, none")
        if self.config.train.val_sampling == "across_patients":
            return across_patients(cases, self.config.train.val_limit, self.config.seed)
        return cases[: self.config.train.val_limit]

    def _split_notes(self) -> dict[str, str]:
        """What the run does with each role, beside the split's counts."""
        train = self.config.train
        notes = {"labeled": "trained on"}
        if not self.method.uses_unlabeled:
            notes["unlabeled"] = f"not used by {self.config.method_name}"
        if not self.val_cases:
            where = "train.val_split none" if train.val_split == "none" else f"no {train.val_split} cases"
            notes["val" if train.val_split == "none" else train.val_split] = (
                f"no validation ({where}): the last checkpoint is the result"
            )
        else:
            chosen = f"{len(self.val_cases)} cases of {len(patients(self.val_cases))} patients"
            how = "" if train.val_limit is None else f", train.val_sampling {train.val_sampling}"
            notes[train.val_split] = f"validation every {train.val_every} iterations on {chosen}{how}"
        return notes

    def _restore(self, checkpoint: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Continue from last.pt, only with the settings the run was started with; a run that has already
        finished is said to be one (nothing more is trained). Returns the log rows of a checkpoint written
        before the log left it (TrainState.history), else None."""
        last = self.checkpoint_dir / "last.pt"
        distributed.on_main(self.dist, lambda: check_resume(self.config, self.run_dir / "config.yaml"))
        load_weights(self.method, checkpoint["method"], last)
        state = dict(checkpoint["state"])
        legacy_history = state.pop("history", None)
        try:
            self.state = TrainState(**state)
        except TypeError as error:
            raise CheckpointError(last, f"its training state is not a medsemi run's ({error})") from error
        if self.state.finished and self.dist.is_main:
            message = (
                f"{self.run_dir}: the run already finished ({self.state.global_step} iterations), nothing to train"
            )
            warnings.warn(message, stacklevel=2)
        self._pending_optimizers = checkpoint.get("optimizers")
        states = checkpoint.get("rng_ranks") or [checkpoint["rng"]]
        if len(states) == self.dist.world_size:
            rng = states[self.dist.rank]
            torch.set_rng_state(rng["torch"])
            name, keys, *rest = rng["numpy"]  # keys: a tensor (a numpy array in older checkpoints)
            np.random.set_state((name, np.asarray(keys).astype(np.uint32), *rest))
            random.setstate(rng["python"])
        else:  # resumed on another number of processes: fresh, still distinct, seeds
            seed_everything(distributed.rank_seed(self.config.seed + self.state.global_step, self.dist.rank))
        return legacy_history

    def _checkpoint(self, name: str, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Collective under torchrun (buffers and random states gathered); only rank 0 writes. Weights or
        optimizer state that are no longer finite are never written: the run stops, the previous file stays.

        Random states are stored as tensors and plain values, so the file loads with weights_only=True.
        """
        distributed.broadcast_state(self.method, self.dist, parameters=False)
        state = {"method": self.method.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()}}
        bad = non_finite(state)
        if bad:
            last = self.checkpoint_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"{self.run_dir}: {', '.join(bad[:3])} became non-finite by global step {self.state.global_step} "
                f"(the loss diverged: lower optim.lr); {name} not written, {kept}"
            )
        distributed.assert_in_sync(self.method, self.dist)
        numpy_name, keys, *numpy_rest = np.random.get_state()
        rng = distributed.gather(
            {
                "torch": torch.get_rng_state(),
                "numpy": (numpy_name, torch.from_numpy(keys.astype(np.int64)), *numpy_rest),
                "python": random.getstate(),
            },
            self.dist,
        )
        if not self.dist.is_main:
            return
        save_checkpoint(
            self.checkpoint_dir / name,
            {
                **state,
                "state": self.state.__dict__,
                "rng": rng[0],
                "rng_ranks": rng if self.dist.enabled else None,
                "info": asdict(self.info),
            },
        )

    def _save_last(self, optimizers: dict[str, torch.optim.Optimizer], *, stage_end: bool = False) -> None:
        """last.pt, after the log rows up to it (a kill in between leaves rows that the resume drops, never a
        gap); then learning_curves.png at most every PLOT_EVERY_S and at each stage's end, and log.csv once
        the run has finished."""
        self.log.flush()
        self._checkpoint("last.pt", optimizers)
        if not self.dist.is_main:
            return
        if stage_end or time.monotonic() - self._plotted_at > PLOT_EVERY_S:
            plot_learning_curves(self.log.rows, self.run_dir / "learning_curves.png")
            self._plotted_at = time.monotonic()
        if self.state.finished:
            self.log.write_table()

    def validate(self) -> float:
        """Mean validation Dice; under torchrun each rank scores its share of the cases, all get the mean."""
        distributed.broadcast_state(self.method, self.dist, parameters=False)
        predictor = self.method.predictor()
        was_training = predictor.training
        predictor.eval()
        rows = evaluate_cases(
            predictor,
            self.val_cases[self.dist.rank :: self.dist.world_size],
            self.info,
            self.config,
            self.device,
            dice_only=True,
            show_progress=False,
        )
        predictor.train(was_training)
        dice = mean_dice([row for rank_rows in distributed.gather(rows, self.dist) for row in rank_rows])
        if self.dist.is_main:
            stage = self.method.stages()[self.state.stage_index]
            best = max(dice, self.state.best_dice)
            say(
                f"{stage.name} iteration {self.state.step}/{stage.iterations}: validation Dice {dice:.4f} "
                f"(best {best:.4f}, {len(self.val_cases)} cases)"
            )
        return dice

    def fit(self) -> Path:
        stages = self.method.stages()
        for index, stage in enumerate(stages):
            if index < self.state.stage_index:
                continue
            previous = self._best_checkpoint(stages[index - 1]) if index > 0 else None
            self._run_stage(index, stage, previous)
        return self.run_dir

    def _best_checkpoint(self, stage: Stage) -> dict[str, Any]:
        """A finished stage's best-on-val checkpoint (its last one when it never validated)."""
        best = self.checkpoint_dir / f"best_{stage.name}.pt"
        source = best if best.exists() else self.checkpoint_dir / f"last_{stage.name}.pt"
        checkpoint = distributed.on_main(self.dist, lambda: load_checkpoint(source))
        state = {key: value.to(self.device) for key, value in checkpoint["method"].items()}
        return {**checkpoint, "method": state}

    def _run_stage(self, index: int, stage: Stage, previous: dict[str, Any] | None) -> None:
        """The stage's iterations from where the state says; each is the steps below, in this order."""
        self._enter_stage(index, stage, previous)
        modules = self.method.optimised_modules()
        settings = {name: self.config.optim.settings_for(name) for name in modules}
        optimizers = self._optimizers(modules, settings, stage, previous)
        config = self.config.train
        optimisation = OptimisationStep(
            self.method, list(optimizers.values()), self.device, amp=config.amp, channels_last=config.channels_last
        )
        bar = _progress(stage, self.state.step, config.progress and self.dist.is_main)
        self.method.train()
        writer = _tensorboard(self.run_dir) if self.dist.is_main else None
        while self.state.step < stage.iterations:
            step = self.state.step
            set_learning_rates(optimizers, settings, step, stage.iterations)
            losses = optimisation.losses(self.stream.batch(self.state.global_step), step)
            total = sum(losses.values())
            values, diagnostics = self._synced_values(total, losses)
            self._check_finite(values, losses, stage, step)
            optimisation.update(total, step, lambda: distributed.average_gradients(modules.values(), self.dist))
            self.state.step += 1
            self.state.global_step += 1
            row = self._row(stage, optimizers, losses, values, diagnostics)
            done = self.state.step == stage.iterations
            if self.val_cases and (self.state.step % config.val_every == 0 or done):
                row["val_dice"] = self._validate_and_keep_best(index, stage, optimizers)
            self._log_row(row, writer, bar)
            if self.state.step % config.checkpoint_every == 0 and not done:
                self._save_last(optimizers)
        bar.close()
        if writer is not None:
            writer.close()
        self._finish_stage(index, stage, optimizers)

    def _enter_stage(self, index: int, stage: Stage, previous: dict[str, Any] | None) -> None:
        """Tell the method which stage it is in: a fresh stage starts (from the previous stage's best state),
        a stage that a resume lands inside is resumed."""
        if index == self.state.stage_index and self.state.step > 0:
            self.method.resume_stage(stage)
            return
        self.method.start_stage(stage, previous["method"] if previous is not None else None)
        self.state.stage_index, self.state.step = index, 0
        self.state.best_dice, self.state.best_step = -1.0, -1

    def _optimizers(
        self,
        modules: dict[str, nn.Module],
        settings: dict[str, dict[str, Any]],
        stage: Stage,
        previous: dict[str, Any] | None,
    ) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimizers, with the state of the checkpoint resumed from (mid-stage) or of the previous
        stage's best checkpoint (`stage.inherit_optimizer`)."""
        optimizers = {name: build_optimizer(module, settings[name]) for name, module in modules.items()}
        if self.state.step > 0:
            source = self._pending_optimizers
        elif stage.inherit_optimizer and previous is not None:
            source = previous["optimizers"]
        else:
            source = None
        if source:
            for name, optimizer in optimizers.items():
                optimizer.load_state_dict(source[name])
        self._pending_optimizers = None
        return optimizers

    def _synced_values(self, total: Tensor, losses: dict[str, Tensor]) -> tuple[list[float], dict[str, float]]:
        """[total, *terms] averaged over ranks, and the method's diagnostics (rank 0's own), as floats read
        from the device in one host sync per step."""
        terms = torch.stack([total.detach().float(), *(v.detach().float() for v in losses.values())])
        terms = distributed.mean_over_ranks(terms, self.dist)
        diagnostics = self.method.diagnostics
        on_device = [name for name, value in diagnostics.items() if isinstance(value, Tensor)]
        pieces = [terms, *(diagnostics[name].to(terms.device).reshape(1) for name in on_device)]
        dtype = functools.reduce(torch.promote_types, (piece.dtype for piece in pieces))
        floats = torch.cat([piece.to(dtype) for piece in pieces]).tolist()
        read = dict(zip(on_device, floats[len(terms) :], strict=True))
        return floats[: len(terms)], {name: read.get(name, value) for name, value in diagnostics.items()}

    def _check_finite(self, values: list[float], losses: dict[str, Tensor], stage: Stage, step: int) -> None:
        """Stop before a non-finite loss reaches the weights, naming the terms and the last good checkpoint."""
        if math.isfinite(values[0]):
            return
        bad = [k for k, v in zip(losses, values[1:]) if not math.isfinite(v)]
        raise NonFiniteLossError(
            f"{self.run_dir}: loss {bad} became {values[0]} at stage {stage.name!r} step {step}; "
            f"the last good checkpoint is {self.checkpoint_dir / 'last.pt'}"
        )

    def _row(
        self,
        stage: Stage,
        optimizers: dict[str, torch.optim.Optimizer],
        losses: dict[str, Tensor],
        values: list[float],
        diagnostics: dict[str, float],
    ) -> dict[str, Any]:
        """The log row of the iteration just done (the first optimizer's learning rate stands for all)."""
        return {
            "stage": stage.name,
            "step": self.state.step,
            "global_step": self.state.global_step,
            "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"],
            "loss": values[0],
            **{f"loss/{k}": v for k, v in zip(losses, values[1:])},
            **diagnostics,
        }

    def _validate_and_keep_best(self, index: int, stage: Stage, optimizers: dict[str, torch.optim.Optimizer]) -> float:
        """Validation Dice; a new best (strictly higher) is saved as best_<stage>.pt, and as best.pt in the
        last stage."""
        dice = self.validate()
        if dice > self.state.best_dice:
            self.state.best_dice, self.state.best_step = dice, self.state.step
            self._checkpoint(f"best_{stage.name}.pt", optimizers)
            if index == len(self.method.stages()) - 1:
                self._checkpoint("best.pt", optimizers)
        return dice

    def _log_row(self, row: dict[str, Any], writer: Any, bar: Any) -> None:
        """The row into the log, its numbers into TensorBoard, the loss onto the progress bar."""
        self.log.append(row)
        if writer is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    writer.add_scalar(key, value, self.state.global_step)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)

    def _finish_stage(self, index: int, stage: Stage, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """last_<stage>.pt (what the next stage starts from), then last.pt pointing at the next stage or
        saying the run has finished."""
        self._checkpoint(f"last_{stage.name}.pt", optimizers)
        if index + 1 < len(self.method.stages()):
            self.state.stage_index, self.state.step = index + 1, 0
        else:
            self.state.finished = True
        self._save_last(optimizers, stage_end=True)


PLOT_EVERY_S = 30.0


def _progress(stage: Stage, initial: int, enabled: bool) -> Any:
    return progress(stage.iterations, stage.name, enabled=enabled, initial=initial)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(config: Config, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train (or resume) the run described by `config`; returns the run folder."""
    with distributed.process_group_scope():
        trainer = Trainer(config, resume=resume, overwrite=overwrite)
        return trainer.run_dir if trainer.state.finished else trainer.fit()
