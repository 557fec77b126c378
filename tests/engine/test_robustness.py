"""What the existing trainer tests leave out: a kill in the middle of writing a checkpoint, a full disk while
writing results or masks, and the message a user sees when the loss stops being finite."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.data.cases import Case
from medsemi.data.io import write_prediction
from medsemi.engine.checkpoint import load_checkpoint
from medsemi.engine.trainer import train
from medsemi.eval.predict import atomic_path
from medsemi.eval.report import write_case_table

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "data.options={n_train_patients: 3, n_val: 1, n_test: 1, size: [32, 32], depth: 3}",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.val_split=none",
    "train.progress=false",
]

# Runs the trainer; when the second last.pt is being written, truncates its temporary file to half (as an
# interrupted write leaves it), says so on stdout and waits to be killed.
KILLED_WHILE_WRITING = """
import os, sys, time
from medsemi.config import load_config
from medsemi.engine.trainer import train

fsync, writes = os.fsync, []

def interrupted(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.startswith(".last.pt."):
        writes.append(name)
        if len(writes) == 2:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            print("WRITING", flush=True)
            time.sleep(600)
    fsync(fd)

os.fsync = interrupted
train(load_config(sys.argv[1], sys.argv[2:]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
def test_kill_during_checkpoint_write_resumes_from_the_previous_checkpoint(tmp_path: Path) -> None:
    config = REPO / "configs/demo/mean_teacher.yaml"
    overrides = [*TINY, "train.iterations=6", "train.checkpoint_every=2", f"run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WHILE_WRITING, str(config), *overrides],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None  # the trainer prints its split first
        assert "WRITING" in (line.strip() for line in iter(process.stdout.readline, ""))
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.glob(".last.pt.*")], "the kill did not happen mid-write"
    assert load_checkpoint(checkpoints / "last.pt")["state"]["global_step"] == 2  # the previous one, intact

    train(load_config(config, overrides), resume=True)
    state = load_checkpoint(checkpoints / "last.pt")["state"]
    assert state["finished"] and state["global_step"] == 6
    steps = [int(row["global_step"]) for row in csv.DictReader((tmp_path / "run" / "log.csv").open())]
    assert steps == list(range(1, 7))


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def test_full_disk_keeps_the_previous_results_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cases.csv"
    write_case_table([{"case_id": "a", "class": "LV", "dice": 0.9}], path)
    before = path.read_text()
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(OSError, match="No space"):
        write_case_table([{"case_id": "b", "class": "LV", "dice": 0.1}], path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cases.csv"]


def test_a_mask_that_fails_to_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case("scan", "scan", np.zeros((1, 4, 5, 3), np.float32), None, (1.0, 1.0, 1.0))
    target = tmp_path / "scan.nii.gz"
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(OSError, match="No space"), atomic_path(target) as temporary:
        write_prediction(case, np.ones((4, 5, 3), np.uint8), temporary)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with atomic_path(target) as temporary:
        write_prediction(case, np.ones((4, 5, 3), np.uint8), temporary)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


def test_diverging_loss_stops_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    arguments = ["train", str(REPO / "configs/demo/supervised.yaml"), *TINY, "optim.lr=1e30"]
    arguments += ["train.iterations=20", "train.checkpoint_every=1", f"run.dir={run_dir}"]
    assert main(arguments) == 2
    message = capsys.readouterr().err
    assert "medsemi train: error:" in message and "loss ['supervised'] became nan" in message
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'}" in message
    step = int(message.split(" step ")[1].split(";")[0])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]["global_step"] == step
