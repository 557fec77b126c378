"""What commands say while they work: the split first, a line per validation, progress that suits a log file;
and which validation cases `train.val_sampling` picks."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from medsemi.config import load_config
from medsemi.data.cases import Case
from medsemi.data.splits import across_patients
from medsemi.engine.trainer import Trainer, train
from medsemi.progress import LineProgress, progress

REPO = Path(__file__).resolve().parents[2]
RUN = [
    "data.patch_size=[32,32]",
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "data.options={n_train_patients: 3, n_val: 3, n_test: 1, size: [32, 32], depth: 3}",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.iterations=4",
    "train.val_every=2",
    "train.progress=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_prints_its_split_once_and_a_line_per_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(load_config(REPO / "configs/demo/mean_teacher.yaml", [*RUN, "train.val_limit=2", f"run.dir={tmp_path}"]))
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [
        "split: first 2 of 3 training patients",
        "  labeled        6 cases     2 patients (trained on)",
        "  unlabeled      3 cases     1 patients",
        "  val            3 cases     3 patients (validation every 2 iterations on 2 cases of 2 patients, "
        "train.val_sampling first)",
        "  test           1 cases     1 patients",
    ]
    validations = [line for line in out if "validation Dice" in line]
    assert len(validations) == 2 and validations[0].startswith("train iteration 2/4: validation Dice 0.")
    assert validations[1].endswith(", 2 cases)") and "(best 0." in validations[1]


def test_val_sampling_across_patients_spreads_the_limit_over_them() -> None:
    cases = [Case(f"p{p}_s{s}", f"p{p}", np.zeros((1, 2, 2), np.float32), None, None) for p in "ab" for s in range(4)]
    assert [case.patient for case in cases[:4]] == ["pa"] * 4  # the first N in sorted order: one subject
    picked = across_patients(cases, 4, seed=1)
    assert [case.patient for case in picked] == ["pa", "pb", "pa", "pb"]
    assert across_patients(cases, 4, seed=1) == picked and len({c.case_id for c in picked}) == 4
    assert sorted(c.case_id for c in across_patients(cases, None, seed=1)) == sorted(c.case_id for c in cases)


def test_the_trainer_validates_on_the_sampled_cases(tmp_path: Path) -> None:
    overrides = [*RUN, "train.val_limit=2", f"run.dir={tmp_path}"]
    first = Trainer(load_config(REPO / "configs/demo/supervised.yaml", overrides), overwrite=True)
    assert [case.case_id for case in first.val_cases] == ["val000", "val001"]
    spread = load_config(REPO / "configs/demo/supervised.yaml", [*overrides, "train.val_sampling=across_patients"])
    chosen = [case.patient for case in Trainer(spread, overwrite=True).val_cases]
    assert len(chosen) == 2 and len(set(chosen)) == 2
    assert load_config(None).train.val_sampling == "first"  # what every existing config keeps


def test_progress_is_a_line_per_tenth_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    counter = progress(50, "train", unit="it", initial=10)
    assert isinstance(counter, LineProgress)
    for _ in range(40):
        counter.update(1)
        counter.set_postfix(loss="0.1234", refresh=False)
    counter.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8 and "\r" not in stream.getvalue()  # 30%, 40%, ..., 100%: resumed at 10 of 50
    assert lines[0].startswith("train: 30% (15/50 it), ") and lines[-1].startswith("train: 100% (50/50 it)")
    assert lines[0].endswith("left, loss 0.1234") and "in all" in lines[-1]
    silent = progress(5, "quiet", enabled=False)
    silent.update(5)
    silent.close()
    assert len(stream.getvalue().splitlines()) == 8
