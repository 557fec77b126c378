"""Real data in, trained and evaluated model out: ACDC (2D), LA (3D) and a user's nnU-Net folder."""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.engine.checkpoint import load_checkpoint
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def _acdc_overrides(acdc_root: Path, run_dir: Path) -> list[str]:
    return [
        f"data.root={acdc_root}",
        "data.patch_size=[64,64]",
        "data.batch_labeled=4",
        "data.batch_unlabeled=4",
        "method.consistency_start=0",
        "train.iterations=30",
        "train.val_every=10",
        "train.val_limit=2",
        "train.checkpoint_every=5",
        "train.progress=false",
        "eval.batch_size=64",
        f"run.dir={run_dir}",
    ]


def test_acdc_mean_teacher_trains_is_killed_resumes_and_evaluates_40_test_volumes(
    acdc_root: Path, tmp_path: Path, kill_at_first_checkpoint: Callable[..., None]
) -> None:
    run_dir = tmp_path / "mt"
    overrides = _acdc_overrides(acdc_root, run_dir)
    command = [
        sys.executable,
        "-m",
        "medsemi.cli",
        "train",
        str(REPO / "configs/acdc/mean_teacher.yaml"),
        *overrides,
    ]
    last = run_dir / "checkpoints" / "last.pt"
    kill_at_first_checkpoint(command, last, 300)
    killed_at = load_checkpoint(last)["state"]["global_step"]
    assert 0 < killed_at < 30

    train(load_config(REPO / "configs/acdc/mean_teacher.yaml", overrides), resume=True)
    state = load_checkpoint(last)["state"]
    assert state["finished"] and state["global_step"] == 30
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    assert [int(r["global_step"]) for r in rows] == list(range(1, 31))
    assert sum(1 for r in rows if r["val_dice"]) == 3
    assert (run_dir / "checkpoints" / "best.pt").exists()

    summary = evaluate_run(run_dir, split="test")
    table = list(csv.DictReader((run_dir / "eval" / "test_best" / "cases.csv").open()))
    assert len({r["case_id"] for r in table}) == 40
    assert {r["class"] for r in table} == {"RV", "Myo", "LV"}
    assert 0.0 <= summary["mean"]["dice"] <= 1.0


def test_la_few_3d_iterations_and_sliding_window_prediction(la_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "la"
    config = load_config(
        REPO / "configs/la/mean_teacher.yaml",
        [
            f"data.root={la_root}",
            "data.labeled=2",
            "data.patch_size=[48,48,32]",
            "data.batch_labeled=1",
            "data.batch_unlabeled=1",
            "data.options={val_from_train: 1}",
            "net.options={n_filters: 4}",
            "train.iterations=3",
            "train.val_split=none",
            "train.progress=false",
            "eval.stride=[40,40,24]",
            f"run.dir={run_dir}",
        ],
    )
    train(config)
    summary = evaluate_run(run_dir, split="test", checkpoint="last", limit=1)
    assert summary["folder"] == run_dir / "eval" / "test_last_first1"  # beside, never over, the full tables
    table = list(csv.DictReader((summary["folder"] / "cases.csv").open()))
    assert len(table) == 1 and table[0]["class"] == "LA"
    assert float(table[0]["hd95_mm"]) == pytest.approx(float(table[0]["hd95"]) * 0.625, rel=1e-6) or (
        float(table[0]["dice"]) == 0.0
    )
    assert 0.0 <= summary["mean"]["dice"] <= 1.0


def _write_nnunet_folder(root: Path, rng: np.random.Generator) -> np.ndarray:
    """A tiny 2D-slice-stack NIfTI dataset with a non-trivial affine: bright disks on noise."""
    affine = np.array([[0.0, -1.5, 0, 10], [1.5, 0.0, 0, -20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
    for folder in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs"):
        (root / folder).mkdir(parents=True)
    yy, xx = np.mgrid[:48, :48]
    for index in range(8):
        centre = rng.integers(14, 34, size=2)
        label = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 64).astype(np.uint8)
        image = (label * 1.0 + rng.normal(0, 0.2, label.shape)).astype(np.float32)
        name = f"case{index:02d}"
        folder = "imagesTr" if index < 4 else "imagesUnlabeled"
        nib.save(nib.Nifti1Image(image[:, :, None], affine), root / folder / f"{name}_0000.nii.gz")
        if index < 4:
            nib.save(nib.Nifti1Image(label[:, :, None], affine), root / "labelsTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(image[:, :, None], affine), root / "imagesTs" / "new_0000.nii.gz")
    (root / "dataset.json").write_text(
        '{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "disk": 1}, "numTraining": 4,'
        ' "file_ending": ".nii.gz"}'
    )
    return affine


def test_nnunet_folder_round_trip_train_predict_keeps_shape_and_affine(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Disks"
    affine = _write_nnunet_folder(root, np.random.default_rng(0))
    run_dir = tmp_path / "run"
    args = [
        "train",
        str(REPO / "configs/demo/mean_teacher.yaml"),
        "data.dataset=nnunet",
        f"data.root={root}",
        "data.labeled=2",
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.iterations=4",
        "train.val_split=none",
        "train.progress=false",
        f"run.dir={run_dir}",
    ]
    assert main(args) == 0
    source = root / "imagesTs" / "new_0000.nii.gz"
    assert main(["predict", str(run_dir), str(source), "-o", str(tmp_path / "out")]) == 0
    written = nib.load(tmp_path / "out" / "new.nii.gz")  # named like the case, without the channel suffix
    assert written.shape == nib.load(source).shape
    np.testing.assert_allclose(written.affine, affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
