"""`medsemi suggest`: patient uncertainty discounted by similarity to earlier picks (how-to/label-next.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medsemi.suggest as suggest_module
from medsemi.cli import main
from medsemi.config import load_config
from medsemi.engine.trainer import train
from medsemi.suggest import intensity_histograms, select, similarity, suggest

REPO = Path(__file__).resolve().parents[1]
SIZE = 48


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
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.iterations=1",
        "train.val_split=none",
        "train.progress=false",
        f"run.dir={root.parent / 'run'}",
    ]
    return root, train(load_config(REPO / "configs/demo/mean_teacher.yaml", overrides))


def test_known_answer_on_a_constructed_pool(pool: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncertainty stubbed to the image mean (p1 = p2 > p3 > p4): the duplicate p2 must give way to p3."""
    _, run_dir = pool
    monkeypatch.setattr(
        suggest_module,
        "uncertainty_map",
        lambda members, image, *args, **kwargs: np.full(image.shape[1:], image.mean(), dtype=np.float32),
    )
    picks = suggest(run_dir, budget=2)
    assert [pick.patient for pick in picks] == ["p1", "p3"]
    assert picks[0].uncertainty == pytest.approx(0.8, abs=0.02) and picks[0].max_similarity == 0.0
    assert 0.0 < picks[1].max_similarity < 1.0
    assert picks[1].value == pytest.approx(picks[1].uncertainty * (1 - picks[1].max_similarity))
    assert [pick.patient for pick in suggest(run_dir, budget=2, diversity=0.0)] == ["p1", "p2"]


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
