"""`check_dataset` reports every problem at once and agrees with loading; `describe` summarises a folder."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medsemi.data import DataError, create_dataset
from medsemi.data.check import check_dataset, describe, detect_layout, inspect_dataset


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def _nnunet(root: Path) -> Path:
    root.mkdir()
    meta = {"labels": {"background": 0, "tumour": 1}, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in ("caseA", "caseB", "caseC"):
        _nifti(root / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((6, 5, 4), np.float32))
        _nifti(root / "labelsTr" / f"{case}.nii.gz", np.eye(6, 5, dtype=np.uint8)[:, :, None].repeat(4, 2))
    return root


def test_clean_folder_has_no_problems_and_a_summary(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "ds")
    assert detect_layout(root) == "nnunet"
    assert check_dataset(root) == []
    summary = describe(root)
    assert "3 cases, 3 patients" in summary and "1 tumour" in summary and "6 x 5 x 4" in summary
    assert "spacing 1 x 1 x 2 mm" in summary


def test_nnunet_folder_with_three_problems_reports_all(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "ds")
    (root / "labelsTr" / "caseB.nii.gz").unlink()
    _nifti(root / "labelsTr" / "caseA.nii.gz", np.full((6, 5, 4), 7, np.uint8))
    _nifti(root / "labelsTr" / "caseC.nii.gz", np.zeros((6, 5, 4), np.uint8), spacing=(1.0, 1.0, 3.0))
    problems = check_dataset(root)
    assert [problem.path.name for problem in problems] == ["caseA.nii.gz", "caseB.nii.gz", "caseC.nii.gz"]
    assert "label values [7] are outside the declared classes 0..1" in problems[0].message
    assert "missing label file for image caseB_0000.nii.gz" in problems[1].message
    assert "spacing/affine differ" in problems[2].message
    with pytest.raises(DataError) as error:  # loading stops at the first of the same problems
        create_dataset("nnunet", root)
    assert str(error.value) == str(problems[0])


def test_h5_folder_with_three_problems_reports_all(tmp_path: Path) -> None:
    root = tmp_path / "acdc"
    slices = root / "data" / "slices"
    slices.mkdir(parents=True)
    names = [f"patient001_frame01_slice_{k}" for k in range(4)]
    for name in names:
        with h5py.File(slices / f"{name}.h5", "w") as file:
            file["image"], file["label"] = np.zeros((5, 5), np.float32), np.zeros((5, 5), np.uint8)
    (slices / f"{names[0]}.h5").write_bytes(b"garbage" * 20)
    (slices / f"{names[1]}.h5").unlink()
    with h5py.File(slices / f"{names[2]}.h5", "w") as file:
        file["image"], file["label"] = np.zeros((5, 5), np.float32), np.zeros((5, 6), np.uint8)
    (root / "train_slices.list").write_text("\n".join(names))
    (root / "val.list").write_text("")
    (root / "test.list").write_text("")
    report = inspect_dataset(root)
    assert report.layout == "acdc"
    assert [problem.path.name for problem in report.problems] == [f"{name}.h5" for name in names[:3]]
    messages = [problem.message for problem in report.problems]
    assert "corrupt HDF5" in messages[0] and "file not found" in messages[1] and "label shape" in messages[2]
    assert "1 cases, 1 patients" in report.summary  # the one good slice is still summarised


def test_unrecognised_or_missing_folders_are_one_problem(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (problem,) = check_dataset(tmp_path / "random")
    assert "unrecognised layout" in problem.message
    (problem,) = check_dataset(tmp_path / "absent")
    assert problem.path == tmp_path / "absent" and "not found" in problem.message
    problems = check_dataset(tmp_path / "random", dataset="la")
    assert [problem.path.name for problem in problems] == ["train.list", "test.list"]
