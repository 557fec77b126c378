"""Dataset readers: real ACDC/LA layouts, nnU-Net folders (NIfTI, RGB PNG), synthetic phantoms, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsemi.data import DataError, create_dataset, list_datasets
from medsemi.data.io import load_image, write_prediction

# ---------------------------------------------------------------- real data


@pytest.mark.real_data
def test_acdc_counts_shapes_and_labels(acdc_root: Path) -> None:
    acdc = create_dataset("acdc", acdc_root)
    assert (len(acdc.train), len(acdc.val), len(acdc.test)) == (1312, 20, 40)
    names = (acdc_root / "train_slices.list").read_text().split()
    assert [case.case_id for case in acdc.train] == names
    first = acdc.train[0]
    assert first.patient == "patient099" and first.image.dtype == np.float32
    assert first.image.ndim == 3 and first.image.shape[0] == 1 and first.label.shape == first.image.shape[1:]
    assert len({case.patient for case in acdc.train}) == 70
    assert {case.patient for case in acdc.val}.isdisjoint(case.patient for case in acdc.test)
    for case in acdc.val + acdc.test:
        assert case.image.ndim == 4 and case.image.shape[0] == 1 and case.label.shape == case.image.shape[1:]
        assert case.spacing == (1.0, 1.0, 1.0)
    counts = sum(np.bincount(case.label.ravel(), minlength=4) for case in acdc.train + acdc.val + acdc.test)
    assert len(counts) == 4 and (counts > 0).all()
    assert acdc.info.class_names == ["background", "RV", "Myo", "LV"] and acdc.info.spatial_dims == 2


@pytest.mark.real_data
def test_la_counts_shapes_and_labels(la_root: Path) -> None:
    la = create_dataset("la", la_root)  # about 1 GB in memory: released when the test ends
    assert (len(la.train), len(la.val), len(la.test)) == (80, 0, 20)
    assert [case.case_id for case in la.train] == (la_root / "train.list").read_text().split()
    for case in la.train + la.test:
        assert case.image.ndim == 4 and case.image.shape[0] == 1 and case.image.shape[-1] == 88
        assert case.label.shape == case.image.shape[1:]
        assert set(np.unique(case.label)) == {0, 1}
        assert case.spacing == (0.625, 0.625, 0.625) and case.patient == case.case_id
    assert la.info.num_classes == 2 and la.info.spatial_dims == 3


@pytest.mark.real_data
def test_la_val_from_train_takes_the_last_ids(la_root: Path) -> None:
    ids = (la_root / "train.list").read_text().split()
    dataset = create_dataset("la", la_root, splits=["val"], val_from_train=4)
    assert [case.case_id for case in dataset.val] == ids[-4:]
    assert dataset.train == [] and dataset.test == []


# ---------------------------------------------------------------- nnU-Net folders


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    return affine


def _nnunet_folder(root: Path, shape: tuple[int, ...] = (12, 10, 6), spacing=(0.7, 0.8, 2.5)) -> np.ndarray:
    """Three 2-channel training cases (two of one patient), one unlabeled, one annotated test case."""
    rng = np.random.default_rng(0)
    affine = _affine(spacing)
    meta = {
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "channel_names": {"0": "T1", "1": "T2"},
        "file_ending": ".nii.gz",
        "patients": {"caseA": "p1", "caseB": "p1"},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    folders = {"imagesTr": "labelsTr", "imagesUnlabeled": None, "imagesTs": "labelsTs"}
    cases = {"imagesTr": ["caseA", "caseB", "caseC"], "imagesUnlabeled": ["extra"], "imagesTs": ["held"]}
    for images, labels in folders.items():
        for case in cases[images]:
            for channel in range(2):
                data = rng.normal(size=shape).astype(np.float32)
                _write_nifti(root / images / f"{case}_{channel:04d}.nii.gz", data, affine)
            if labels:
                label = rng.integers(0, 3, size=shape).astype(np.uint8)
                _write_nifti(root / labels / f"{case}.nii.gz", label, affine)
    return affine


def test_nnunet_nifti_round_trip(tmp_path: Path) -> None:
    affine = _nnunet_folder(tmp_path / "ds")
    dataset = create_dataset("nnunet", tmp_path / "ds")
    assert [case.case_id for case in dataset.train] == ["caseA", "caseB", "caseC"]
    assert [case.patient for case in dataset.train] == ["p1", "p1", "caseC"]
    assert dataset.info.class_names == ["background", "organ", "lesion"]
    assert (dataset.info.spatial_dims, dataset.info.in_channels) == (3, 2)
    case = dataset.train[0]
    assert case.image.shape == (2, 12, 10, 6) and case.label.shape == (12, 10, 6)
    np.testing.assert_allclose(case.spacing, (0.7, 0.8, 2.5), rtol=1e-6)
    np.testing.assert_allclose(case.affine, affine, atol=1e-5)
    stored = nib.load(tmp_path / "ds" / "imagesTr" / "caseA_0001.nii.gz").get_fdata()
    np.testing.assert_allclose(case.image[1], stored, rtol=1e-6)
    assert [c.case_id for c in dataset.unlabeled] == ["extra"] and dataset.unlabeled[0].label is None
    assert [c.case_id for c in dataset.test] == ["held"] and dataset.test[0].label is not None

    prediction = (case.label + 1) % 3
    written = write_prediction(case, prediction, tmp_path / "out" / "caseA.nii.gz")
    back = nib.load(written)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), prediction)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.header.get_zooms(), (0.7, 0.8, 2.5), rtol=1e-5)


def test_nnunet_val_from_train_carves_last_patients(tmp_path: Path) -> None:
    _nnunet_folder(tmp_path / "ds")
    dataset = create_dataset("nnunet", tmp_path / "ds", val_from_train=1)
    assert [case.case_id for case in dataset.val] == ["caseC"]
    assert [case.case_id for case in dataset.train] == ["caseA", "caseB"]
    with pytest.raises(DataError, match="val_from_train"):
        create_dataset("nnunet", tmp_path / "ds", val_from_train=2)


def test_nifti_with_a_singleton_third_axis_is_2d_and_written_back_3d(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    affine = _affine((0.5, 0.5, 3.0))
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "cell": 1}, "channel_names": {"0": "x"}})
    )
    _write_nifti(root / "imagesTr" / "a_0000.nii.gz", np.ones((9, 7, 1), np.float32), affine)
    _write_nifti(root / "labelsTr" / "a.nii.gz", np.eye(9, 7, dtype=np.uint8)[:, :, None], affine)
    dataset = create_dataset("nnunet", root)
    case = dataset.train[0]
    assert dataset.info.spatial_dims == 2 and case.image.shape == (1, 9, 7) and case.spacing == (0.5, 0.5)
    back = nib.load(write_prediction(case, case.label, tmp_path / "a.nii.gz"))
    assert back.shape == (9, 7, 1)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj)[:, :, 0], np.eye(9, 7))


@pytest.mark.parametrize("channel_names", [{"0": "R", "1": "G", "2": "B"}, {"0": "RGB"}])
def test_rgb_png_folder(tmp_path: Path, channel_names: dict[str, str]) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"labels": {"background": 0, "gland": 1}, "channel_names": channel_names, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    pixels = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    mask = (rng.random((20, 30)) > 0.5).astype(np.uint8)
    Image.fromarray(pixels).save(root / "imagesTr" / "img1_0000.png")
    Image.fromarray(mask).save(root / "labelsTr" / "img1.png")
    dataset = create_dataset("nnunet", root)
    case = dataset.train[0]
    assert (dataset.info.in_channels, dataset.info.spatial_dims) == (3, 2)
    assert case.image.shape == (3, 20, 30) and case.image.dtype == np.float32
    np.testing.assert_allclose(case.image, np.moveaxis(pixels, -1, 0) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(case.label, mask)
    assert case.affine is None and case.spacing is None  # a PNG stores no pixel size; dataset.json may declare one
    back = write_prediction(case, 1 - mask, tmp_path / "pred.png")
    np.testing.assert_array_equal(np.asarray(Image.open(back)), 1 - mask)
    assert load_image(root / "imagesTr" / "img1_0000.png").image.shape == (3, 20, 30)


def test_mask_stored_as_0_255_is_reported_with_a_hint(tmp_path: Path) -> None:
    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"labels": {"background": 0, "polyp": 1}, "channel_names": {"0": "RGB"}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "imagesTr" / "x_0000.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "labelsTr" / "x.png")
    with pytest.raises(DataError, match=r"x\.png.*\[255\].*not 0/255"):
        create_dataset("nnunet", root)


def test_nnunet_missing_label_file_names_it(tmp_path: Path) -> None:
    _nnunet_folder(tmp_path / "ds")
    (tmp_path / "ds" / "labelsTr" / "caseB.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr/caseB\.nii\.gz: missing label file for image caseB_0000"):
        create_dataset("nnunet", tmp_path / "ds")


def test_nnunet_label_geometry_mismatch_names_the_label(tmp_path: Path) -> None:
    _nnunet_folder(tmp_path / "ds")
    label = tmp_path / "ds" / "labelsTr" / "caseA.nii.gz"
    _write_nifti(label, np.zeros((12, 10, 6), np.uint8), _affine((0.7, 0.8, 5.0)))
    with pytest.raises(DataError, match=r"caseA\.nii\.gz: spacing/affine differ"):
        create_dataset("nnunet", tmp_path / "ds")


# ---------------------------------------------------------------- h5 layouts with bad input


def _acdc_folder(root: Path, slices: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    (root / "data" / "slices").mkdir(parents=True)
    for name, (image, label) in slices.items():
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as file:
            file["image"], file["label"] = image, label
    (root / "train_slices.list").write_text("\n".join(slices) + "\n")
    return root


def test_acdc_layout_reads_slices_in_list_order(tmp_path: Path) -> None:
    image, label = np.zeros((6, 5), np.float32), np.zeros((6, 5), np.uint8)
    names = ["patient002_frame01_slice_1", "patient001_frame01_slice_0", "patient002_frame02_slice_3"]
    root = _acdc_folder(tmp_path / "acdc", dict.fromkeys(names, (image, label)))
    dataset = create_dataset("acdc", root, splits=["train"])
    assert [case.case_id for case in dataset.train] == names
    assert [case.patient for case in dataset.train] == ["patient002", "patient001", "patient002"]


def test_corrupt_h5_names_the_file(tmp_path: Path) -> None:
    root = _acdc_folder(tmp_path / "acdc", {"patient001_frame01_slice_1": (np.zeros((4, 4)), np.zeros((4, 4)))})
    bad = root / "data" / "slices" / "patient001_frame01_slice_1.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(DataError, match=r"patient001_frame01_slice_1\.h5: unreadable or corrupt HDF5"):
        create_dataset("acdc", root, splits=["train"])


def test_label_values_outside_the_classes_are_listed(tmp_path: Path) -> None:
    label = np.zeros((4, 4), np.uint8)
    label[0, :2] = [5, 7]
    root = _acdc_folder(tmp_path / "acdc", {"patient001_frame01_slice_1": (np.zeros((4, 4), np.float32), label)})
    with pytest.raises(DataError, match=r"slice_1\.h5: label values \[5, 7\] are outside the declared classes 0\.\.3"):
        create_dataset("acdc", root, splits=["train"])


def test_image_label_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "la"
    volume = root / "2018LA_Seg_Training Set" / "CASE1" / "mri_norm2.h5"
    volume.parent.mkdir(parents=True)
    with h5py.File(volume, "w") as file:
        file["image"], file["label"] = np.zeros((8, 8, 4), np.float32), np.zeros((8, 8, 5), np.uint8)
    (root / "train.list").write_text("CASE1\n")
    with pytest.raises(DataError, match=r"CASE1/mri_norm2\.h5: label shape \(8, 8, 5\) differs from image shape"):
        create_dataset("la", root, splits=["train"])


def test_missing_dataset_list_and_file_are_named(tmp_path: Path) -> None:
    root = _acdc_folder(tmp_path / "acdc", {"patient001_frame01_slice_1": (np.zeros((4, 4)), np.zeros((4, 4)))})
    with h5py.File(root / "data" / "slices" / "patient001_frame01_slice_1.h5", "w") as file:
        file["image"] = np.zeros((4, 4), np.float32)
    with pytest.raises(DataError, match=r"slice_1\.h5: no \['label'\] dataset"):
        create_dataset("acdc", root, splits=["train"])
    with pytest.raises(DataError, match=r"val\.list: cannot read list file"):
        create_dataset("acdc", root, splits=["val"])
    (root / "train_slices.list").write_text("patient009_frame01_slice_2\n")
    with pytest.raises(DataError, match=r"patient009_frame01_slice_2\.h5: file not found"):
        create_dataset("acdc", root, splits=["train"])


# ---------------------------------------------------------------- synthetic phantoms and the registry


def test_synthetic2d_is_deterministic_and_has_every_class() -> None:
    first = create_dataset("synthetic2d", n_train_patients=3, n_unlabeled_patients=1, size=[64, 64], depth=6)
    again = create_dataset("synthetic2d", n_train_patients=3, n_unlabeled_patients=1, size=[64, 64], depth=6)
    other = create_dataset("synthetic2d", n_train_patients=3, n_unlabeled_patients=1, size=[64, 64], depth=6, seed=1)
    assert len(first.train) == 18 and len({case.patient for case in first.train}) == 3
    for a, b in zip(first.train + first.val, again.train + again.val, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(first.train[0].image, other.train[0].image)
    assert first.train[0].image.shape == (1, 64, 64) and first.val[0].image.shape == (1, 6, 64, 64)
    for volume in first.val + first.test:
        assert set(np.unique(volume.label)) == {0, 1, 2, 3}
        assert volume.image.min() >= 0.0 and volume.image.max() <= 1.0
    assert len(first.unlabeled) == 6 and all(case.label is None for case in first.unlabeled)


def test_synthetic3d_blobs_are_binary_volumes() -> None:
    dataset = create_dataset("synthetic3d", n_train_patients=2, n_val=1, n_test=1, size=[32, 32, 24])
    again = create_dataset("synthetic3d", n_train_patients=2, n_val=1, n_test=1, size=[32, 32, 24])
    assert [case.image.shape for case in dataset.train] == [(1, 32, 32, 24)] * 2
    for case, twin in zip(dataset.train + dataset.test, again.train + again.test, strict=True):
        assert set(np.unique(case.label)) == {0, 1}
        np.testing.assert_array_equal(case.image, twin.image)
    assert dataset.info.spatial_dims == 3 and dataset.info.class_names == ["background", "blob"]


def test_registry_lists_datasets_and_rejects_unknown_options() -> None:
    assert {"acdc", "la", "nnunet", "synthetic2d", "synthetic3d"} <= set(list_datasets())
    with pytest.raises(DataError, match=r"unknown data.options \['n_patients'\].*known"):
        create_dataset("synthetic2d", n_patients=3)
    with pytest.raises(DataError, match="data.options.n_train_patients"):
        create_dataset("synthetic2d", n_train_patients=0)
    with pytest.raises(DataError, match="set data.root"):
        create_dataset("acdc", None)
