"""`medsemi suggest`: patient uncertainty discounted by similarity to earlier picks (how-to/label-next.md)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medsemi.suggest as suggest_module
from medsemi.cli import main
from medsemi.config import load_config
from medsemi.data.splits import load_split
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import load_run
from medsemi.eval.uncertainty import uncertainty_map
from medsemi.suggest import intensity_histograms, select, similarity, suggest

REPO = Path(__file__).resolve().parents[1]
SIZE = 48
TINY = [
    "data.batch_labeled=2",
    "data.batch_unlabeled=2",
    "net.options={widths: [4, 8, 16, 32, 64]}",
    "train.iterations=1",
    "train.val_split=none",
    "train.progress=false",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_greedy_selection_skips_a_near_duplicate_of_an_earlier_pick() -> None:
    uncertainty = np.array([0.9, 0.88, 0.6, 0.1])
    kernel = np.array(
        [
            [1.0, 0.99, 0.3, 0.2],
            [0.99, 1.0, 0.3, 0.2],
            [0.3, 0.3, 1.0, 0.2],
            [0.2, 0.2, 0.2, 1.0],
        ]
    )
    assert [pick[0] for pick in select(uncertainty, kernel, 2, diversity=0.0)] == [0, 1]
    picks = select(uncertainty, kernel, 3, diversity=1.0)
    assert [index for index, _, _ in picks] == [0, 2, 3]
    assert picks[1][1:] == pytest.approx((0.6 * (1 - 0.3), 0.3))
    assert picks[2][1:] == pytest.approx((0.1 * (1 - 0.2), 0.2))
    assert len(select(uncertainty, kernel, 10, diversity=0.5)) == 4
    with pytest.raises(ValueError, match="diversity"):
        select(uncertainty, kernel, 2, diversity=2.0)


def test_histogram_similarity_is_one_for_duplicates_and_scaled_by_the_median() -> None:
    rng = np.random.default_rng(0)
    bright = rng.uniform(0.6, 1.0, (1, 16, 16))
    patients = [
        [bright],
        [bright.copy()],
        [rng.uniform(0.3, 0.9, (1, 16, 16))],
        [rng.uniform(0.0, 0.2, (1, 16, 16))],
    ]
    histograms = intensity_histograms(patients)
    assert histograms.shape == (4, 32) and np.allclose(histograms.sum(1), 1.0)
    kernel = similarity(histograms)
    assert kernel[0, 1] == pytest.approx(1.0) and np.allclose(np.diag(kernel), 1.0)
    assert kernel[0, 3] < kernel[0, 2] < 0.9  # disjoint intensities < overlapping ones < duplicates


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array[:, :, None], np.eye(4)), path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An nnU-Net folder: 3 labeled disks; unlabeled p1 (bright), p2 (an exact copy of p1), p3 (mid-grey),
    p4 (dark). A mean-teacher run on it after one iteration."""
    root = tmp_path_factory.mktemp("suggest") / "Dataset"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for index in range(3):
        label = ((yy - 24 - index) ** 2 + (xx - 20 - 2 * index) ** 2 < 80).astype(np.uint8)
        _nifti(
            root / "imagesTr" / f"case{index}_0000.nii.gz",
            (label + rng.normal(0, 0.2, label.shape)).astype(np.float32),
        )
        _nifti(root / "labelsTr" / f"case{index}.nii.gz", label)
    bright = rng.uniform(0.6, 1.0, (SIZE, SIZE)).astype(np.float32)
    unlabeled = {
        "p1": bright,
        "p2": bright,
        "p3": rng.uniform(0.3, 0.9, (SIZE, SIZE)),
        "p4": rng.uniform(0, 0.2, (SIZE, SIZE)),
    }
    for name, image in unlabeled.items():
        _nifti(root / "imagesUnlabeled" / f"{name}_0000.nii.gz", image.astype(np.float32))
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "disk": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    overrides = [
        "data.dataset=nnunet",
        f"data.root={root}",
        "data.labeled=3",
        "data.patch_size=[32,32]",
        *TINY,
        f"run.dir={root.parent / 'run'}",
    ]
    return root, train(load_config(REPO / "configs/demo/mean_teacher.yaml", overrides))


def test_known_answer_on_a_constructed_pool(pool: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncertainty stubbed to the image mean (p1 = p2 > p3 > p4): the duplicate p2 must give way to p3."""
    _, run_dir = pool
    monkeypatch.setattr(
        suggest_module, "_slice_scores", lambda members, planes, *args: planes.mean(dim=(1, 2, 3)) * SIZE * SIZE
    )
    picks = suggest(run_dir, budget=2).picks
    assert [pick.patient for pick in picks] == ["p1", "p3"]
    assert picks[0].uncertainty == pytest.approx(0.8, abs=0.02) and picks[0].max_similarity == 0.0
    assert 0.0 < picks[1].max_similarity < 1.0
    assert picks[1].value == pytest.approx(picks[1].uncertainty * (1 - picks[1].max_similarity))
    assert [pick.patient for pick in suggest(run_dir, budget=2, diversity=0.0).picks] == ["p1", "p2"]


def test_batched_scores_are_the_uncertainty_map(pool: tuple[Path, Path]) -> None:
    """One forward pass per member for a batch of slices and all their flips gives each patient the mean of
    the same map `medsemi predict` writes, computed case by case."""
    _, run_dir = pool
    loaded = load_run(run_dir)
    members = loaded.method.ensemble_members()
    expected = {
        case.patient: float(uncertainty_map(members, case.image, loaded.info, loaded.config, loaded.device).mean())
        for case in load_split(loaded.config.data)[1].unlabeled
    }
    ranking = suggest(run_dir, budget=4, diversity=0.0, batch_size=3)
    assert {pick.patient: pick.uncertainty for pick in ranking.picks} == pytest.approx(expected, abs=1e-6)
    assert (ranking.pool_cases, ranking.scored_cases, ranking.unscored_patients) == (4, 4, [])


def test_cli_writes_k_distinct_unlabeled_patients(pool: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = pool
    out = tmp_path / "next.csv"
    assert main(["suggest", str(run_dir), "--budget", "3", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert len({row["patient"] for row in rows}) == 3 and {row["patient"] for row in rows} <= {
        "p1",
        "p2",
        "p3",
        "p4",
    }
    values = [float(row["value"]) for row in rows]
    assert all(0.0 <= float(row["uncertainty"]) <= 1.0 for row in rows) and values[0] > 0
    assert [row["case_ids"] for row in rows] == [row["patient"] for row in rows]
    assert all(row["scored"] == row["cases"] == "1" for row in rows)


LARGE = {"n_train_patients": 2, "n_val": 0, "n_test": 0, "n_unlabeled_patients": 250, "size": [16, 16], "depth": 8}
"""2000 unlabeled 16 x 16 slices of 250 phantom patients."""


@pytest.fixture(scope="module")
def large_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    overrides = ["data.patch_size=[16,16]", f"data.options={LARGE}", *TINY, "eval.batch_size=64"]
    run = tmp_path_factory.mktemp("large") / "run"
    return train(load_config(REPO / "configs/demo/mean_teacher.yaml", [*overrides, f"run.dir={run}"]))


def test_a_pool_of_2000_cases_shows_progress_and_ranks_every_patient(
    large_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert main(["suggest", str(large_run), "--budget", "5", "-o", str(tmp_path / "next.csv")]) == 0
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("suggest: ")]
    assert len(lines) == 10 and lines[0].startswith("suggest: 10% (200/2000 cases)"), captured.err
    assert lines[-1].startswith("suggest: 100% (2000/2000 cases)") and "\r" not in captured.err
    assert "scored 2000 of 2000 pool cases" in captured.out and "unlabeled   2000 cases   250 patients" in captured.out
    assert len(list(csv.DictReader((tmp_path / "next.csv").open()))) == 5
    assert elapsed < 60, f"{elapsed:.1f} s for 2000 cases"


def test_max_cases_samples_every_patient_alike_and_a_time_limit_stops_early(large_run: Path) -> None:
    sampled = suggest(large_run, budget=250, max_cases=500, show_progress=False)
    assert (sampled.pool_cases, sampled.scored_cases, sampled.unscored_patients) == (500, 500, [])
    assert {pick.scored for pick in sampled.picks} == {2} and {len(pick.case_ids) for pick in sampled.picks} == {8}
    again = suggest(large_run, budget=250, max_cases=500, show_progress=False)
    assert [pick.patient for pick in again.picks] == [pick.patient for pick in sampled.picks]  # deterministic
    stopped = suggest(large_run, budget=3, time_limit=1e-6, batch_size=400, show_progress=False)
    assert stopped.scored_cases == 100 and len(stopped.unscored_patients) == 150  # one batch: 100 slices x 4 flips
    for bad, message in (({"max_cases": 0}, "--max-cases"), ({"time_limit": 0.0}, "--time-limit")):
        with pytest.raises(ValueError, match=message):
            suggest(large_run, budget=1, **bad)
