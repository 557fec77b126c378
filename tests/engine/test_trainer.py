"""The shared trainer on the synthetic phantom: run folder contract, refusal to overwrite, resume, NaN stop."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from medsemi.config import load_config
from medsemi.engine.checkpoint import load_checkpoint, save_checkpoint
from medsemi.engine.optim import learning_rate
from medsemi.engine.run_folder import RunExistsError
from medsemi.engine.trainer import NonFiniteLossError, Trainer, train
from medsemi.engine.training_log import LOG_ROWS, read_rows
from medsemi.eval.evaluate import evaluate_run
from medsemi.methods.mean_teacher import MeanTeacher

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.progress=false",
    "eval.batch_size=64",
]


def _config(run_dir: Path, *extra: str):
    return load_config(REPO / "configs/demo/mean_teacher.yaml", [*TINY, f"run.dir={run_dir}", *extra])


def test_run_folder_holds_config_log_checkpoints_and_evaluation(tmp_path: Path) -> None:
    run_dir = train(_config(tmp_path / "run", "train.iterations=6", "train.val_every=3", "train.checkpoint_every=3"))
    assert (run_dir / "config.yaml").exists()
    log = (run_dir / "log.csv").read_text().splitlines()
    assert log[0].startswith("stage,step,global_step,lr,loss,val_dice")
    assert len(log) == 1 + 6
    for name in ("last.pt", "best.pt", "last_train.pt", "best_train.pt"):
        assert (run_dir / "checkpoints" / name).exists(), name
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]
    assert state["finished"] and state["global_step"] == 6
    assert "history" not in state  # the log lives in log.jsonl: checkpoints do not grow with the run
    assert [row["global_step"] for row in read_rows(run_dir / LOG_ROWS)] == list(range(1, 7))
    summary = evaluate_run(run_dir, split="test", limit=2)
    out = run_dir / "eval" / "test_best"
    assert (out / "cases.csv").exists() and (out / "summary.md").exists() and (out / "dice.png").exists()
    assert 0.0 <= summary["mean"]["dice"] <= 1.0


def test_existing_run_folder_is_never_overwritten_silently(tmp_path: Path) -> None:
    config = _config(tmp_path / "run", "train.iterations=2", "train.val_split=none")
    train(config)
    marker = tmp_path / "run" / "checkpoints" / "last.pt"
    stamp = marker.stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="--resume"):
        train(config)
    assert marker.stat().st_mtime_ns == stamp
    train(config, overwrite=True)
    assert marker.stat().st_mtime_ns != stamp


def test_learning_rate_schedules() -> None:
    settings = {"lr": 0.01, "schedule": "poly", "poly_power": 0.9, "step_every": 2500, "step_gamma": 0.1}
    assert learning_rate(settings, 0, 30000) == pytest.approx(0.01)
    assert learning_rate(settings, 15000, 30000) == pytest.approx(0.01 * 0.5**0.9)
    step = {**settings, "schedule": "step"}
    assert learning_rate(step, 2499, 15000) == pytest.approx(0.01)
    assert learning_rate(step, 5000, 15000) == pytest.approx(0.0001)


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, kill_at_first_checkpoint: Callable[..., None]) -> None:
    """SIGKILL a real `medsemi train` process mid-run; --resume must end where an uninterrupted run ends."""
    extra = ["train.iterations=40", "train.checkpoint_every=4", "train.val_split=none"]
    reference = train(_config(tmp_path / "reference", *extra))
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "medsemi.cli", "train", str(REPO / "configs/demo/mean_teacher.yaml")]
    command += [*TINY, *extra, f"run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.pt"
    kill_at_first_checkpoint(command, last, 120)
    killed_at = load_checkpoint(last)["state"]["global_step"]
    assert killed_at < 40, "the run finished before it could be killed; make it longer"
    train(_config(run_dir, *extra), resume=True)
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert resumed["state"]["finished"] and resumed["state"]["global_step"] == 40
    for key, value in expected["method"].items():
        assert torch.allclose(resumed["method"][key].float(), value.float(), atol=1e-6), key


def _interrupted_at_global_step_2(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """A 4-iteration run stopped during iteration 3 (last.pt at step 2); returns its log rows."""
    original = MeanTeacher.training_step

    def stopped(self: MeanTeacher, batch: object, step: int) -> dict[str, torch.Tensor]:
        if step == 2:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(MeanTeacher, "training_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(_config(run_dir, *LOG_RUN))
    monkeypatch.undo()
    return read_rows(run_dir / LOG_ROWS)


LOG_RUN = ("train.iterations=4", "train.checkpoint_every=2", "train.val_split=none")


def _logged_steps(run_dir: Path) -> list[int]:
    return [int(line.split(",")[2]) for line in (run_dir / "log.csv").read_text().splitlines()[1:]]


def test_resume_drops_the_log_rows_after_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows a killed run logged after its last checkpoint (and a line cut off mid-append) are not kept: the
    resumed run's log has each iteration once, as an uninterrupted run's."""
    reference = train(_config(tmp_path / "reference", *LOG_RUN))
    run_dir = tmp_path / "killed"
    rows = _interrupted_at_global_step_2(run_dir, monkeypatch)
    assert [row["global_step"] for row in rows] == [1, 2]
    with open(run_dir / LOG_ROWS, "a") as handle:
        handle.write('{"stage": "train", "step": 3, "global_step": 3, "loss": 99.0}\n{"stage": "tr')
    train(_config(run_dir, *LOG_RUN), resume=True)
    assert _logged_steps(run_dir) == [1, 2, 3, 4]
    assert (run_dir / "log.csv").read_text() == (reference / "log.csv").read_text()


def test_a_checkpoint_with_the_log_inside_still_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Older checkpoints carried the log as TrainState.history (and no log.jsonl existed): their rows start
    the log of the resumed run."""
    run_dir = tmp_path / "old"
    rows = _interrupted_at_global_step_2(run_dir, monkeypatch)
    (run_dir / LOG_ROWS).unlink()
    last = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    checkpoint["state"]["history"] = [{**row, "loss": 7.5} for row in rows]
    save_checkpoint(last, checkpoint)
    train(_config(run_dir, *LOG_RUN), resume=True)
    assert _logged_steps(run_dir) == [1, 2, 3, 4]
    assert [row["loss"] for row in read_rows(run_dir / LOG_ROWS)][:2] == [7.5, 7.5]


def test_checkpoints_load_without_pickled_code_and_older_ones_still_resume(tmp_path: Path) -> None:
    """New checkpoints need nothing beyond torch's weights_only loader; a checkpoint of an older medsemi (NumPy
    random state as a NumPy array) still loads and restores that state exactly."""
    config = _config(tmp_path / "run", "train.iterations=2", "train.val_split=none")
    last = train(config) / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    name, keys, *rest = checkpoint["rng"]["numpy"]
    older = (name, keys.numpy().astype(np.uint32), *rest)
    checkpoint["rng"]["numpy"] = older
    torch.save(checkpoint, last)
    with pytest.warns(UserWarning, match="already finished"):
        Trainer(config, resume=True)
    restored = np.random.get_state()
    assert restored[0] == older[0] and np.array_equal(restored[1], older[1]) and restored[2:] == tuple(older[2:])


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path, require=())["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(
        _config(tmp_path / "run", "train.iterations=8", "train.checkpoint_every=2", "train.val_split=none")
    )
    original = trainer.method.training_step

    def poisoned(batch, step):
        losses = original(batch, step)
        if step == 5:
            losses["supervised"] = losses["supervised"] * float("nan")
        return losses

    trainer.method.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="step 5"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state"]
    assert state["global_step"] == 4 and not state["finished"]
