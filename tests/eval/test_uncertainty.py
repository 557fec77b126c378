"""Uncertainty = entropy of the mean softmax over flips and ensemble members; `medsemi predict` writes it
beside each mask, in the input's grid, and optionally one overlay PNG per slice."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.data.registry import create_dataset
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import load_run, predict_labels
from medsemi.eval.uncertainty import flip_axes, mean_probabilities, normalised_entropy, uncertainty_map

REPO = Path(__file__).resolve().parents[2]
INFO = DatasetInfo("toy", ["background", "object"], spatial_dims=2, in_channels=1)
CONFIG = load_config(None, ["data.patch_size=[16,16]"])
PHANTOM = {"n_train_patients": 3, "n_val": 1, "n_test": 1, "size": [32, 32], "depth": 4}


class Constant(nn.Module):
    """Confident of one class everywhere, whatever the input."""

    def __init__(self, winner: int) -> None:
        super().__init__()
        self.winner = winner

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.full((x.shape[0], 2, *x.shape[2:]), -20.0)
        logits[:, self.winner] = 20.0
        return logits


class LeftRight(nn.Module):
    """Confident of class 0 on the left half of its input and 1 on the right: not flip-equivariant."""

    def forward(self, x: Tensor) -> Tensor:
        ramp = torch.linspace(-20.0, 20.0, x.shape[-1]).expand(x.shape[0], *x.shape[2:])
        return torch.stack([-ramp, ramp], dim=1)


def test_normalised_entropy_is_zero_when_certain_and_one_when_uniform() -> None:
    probs = torch.tensor([[1.0, 0.25, 0.5], [0.0, 0.25, 0.5], [0.0, 0.25, 0.0], [0.0, 0.25, 0.0]])
    assert normalised_entropy(probs).tolist() == pytest.approx([0.0, 1.0, math.log(2) / math.log(4)], abs=1e-6)


def test_disagreeing_members_are_uncertain_and_agreeing_ones_are_not() -> None:
    volume = np.random.default_rng(0).normal(size=(1, 2, 16, 16)).astype(np.float32)
    device = torch.device("cpu")
    certain = uncertainty_map([Constant(1), Constant(1)], volume, INFO, CONFIG, device)
    split = uncertainty_map([Constant(0), Constant(1)], volume, INFO, CONFIG, device)
    assert certain.shape == split.shape == (2, 16, 16) and certain.dtype == np.float32
    assert certain.max() < 1e-6
    assert split.min() > 0.999
    mean = mean_probabilities([Constant(0), Constant(1)], volume, INFO, CONFIG, device)
    assert torch.allclose(mean, torch.full_like(mean, 0.5))


def test_test_time_flips_expose_an_orientation_dependent_network() -> None:
    volume = np.zeros((1, 3, 16, 16), dtype=np.float32)
    device = torch.device("cpu")
    assert flip_axes(INFO, volume, CONFIG) == (1, 2)  # in-plane only: never across the slices of a 2D network
    plain = uncertainty_map([LeftRight()], volume, INFO, CONFIG, device, flips=False)
    flipped = uncertainty_map([LeftRight()], volume, INFO, CONFIG, device)
    assert plain[:, :, [0, -1]].max() < 1e-6  # confident at both edges without flips
    assert flipped[:, :, [0, -1]].min() > 0.999  # left/right flip contradicts it there


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mean-teacher run (student + teacher = two ensemble members) after one iteration on the phantom."""
    run = tmp_path_factory.mktemp("uncertainty") / "run"
    overrides = [
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        f"data.options={PHANTOM}",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.iterations=1",
        "train.val_split=none",
        "train.progress=false",
        f"run.dir={run}",
    ]
    return train(load_config(REPO / "configs/demo/mean_teacher.yaml", overrides))


def test_predict_writes_mask_and_uncertainty_in_the_input_grid_and_overlays(run_dir: Path, tmp_path: Path) -> None:
    volume = create_dataset("synthetic2d", **PHANTOM).test[0].image[0]  # (depth, H, W)
    affine = np.array([[0.0, -1.25, 0, 10], [1.25, 0.0, 0, -20], [0, 0, 8.0, 5], [0, 0, 0, 1]])
    source = nib.Nifti1Image(np.moveaxis(volume, 0, -1), affine)  # slices along z, as NIfTI stores them
    source.set_qform(affine, code=1)
    source.set_sform(affine, code=2)
    path = tmp_path / "scan_0000.nii.gz"
    nib.save(source, path)

    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(path), "-o", str(out), "--overlay"]) == 0
    mask = nib.load(out / "scan.nii.gz")  # named like the case: no nnU-Net channel suffix
    entropy = nib.load(out / "scan_uncertainty.nii.gz")
    for written in (mask, entropy):
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, affine)
        assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
    values = np.asarray(entropy.dataobj)
    assert entropy.get_data_dtype() == np.float32
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    loaded = load_run(run_dir)  # a 2D run reads the volume slice by slice along z, as it was trained
    members = loaded.method.ensemble_members()
    expected = uncertainty_map(members, volume[None], loaded.info, loaded.config, loaded.device)
    np.testing.assert_allclose(values, np.moveaxis(expected, 0, -1), atol=1e-6)
    labels = predict_labels(loaded.method.predictor(), volume[None], loaded.info, loaded.config, loaded.device)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.moveaxis(labels, 0, -1))
    overlays = sorted((out / "scan_overlay").iterdir())
    assert [p.name for p in overlays] == [f"scan_slice_{k:03d}.png" for k in range(volume.shape[0])]
    with Image.open(overlays[0]) as picture:
        assert picture.mode == "RGB" and picture.width > 2.5 * picture.height  # image | mask | uncertainty

    assert main(["predict", str(run_dir), str(path), "-o", str(tmp_path / "bare"), "--no-uncertainty"]) == 0
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["scan.nii.gz"]


def test_test_time_flips_follow_the_training_recipe() -> None:
    """A recipe without vertical flips (OCT, X-ray: a known up) gets no vertical-flip TTA; `none` gets none."""
    volume = np.zeros((1, 3, 16, 16), dtype=np.float32)
    upright = load_config(None, ["data.patch_size=[16,16]", "data.augment={flip: [1], rotate: 10}"])
    assert flip_axes(INFO, volume, upright) == (2,)  # columns only: left-right
    assert flip_axes(INFO, volume[:, 0], upright) == (1,)
    dihedral = load_config(None, ["data.patch_size=[16,16]", "data.augment={rot90: true, flip: [1]}"])
    assert flip_axes(INFO, volume, dihedral) == (1, 2)  # rot90 x a flip: both mirrors were seen
    assert flip_axes(INFO, volume, load_config(None, ["data.patch_size=[16,16]", "data.augment=none"])) == ()
    three = DatasetInfo("toy", ["background", "object"], spatial_dims=3, in_channels=1)
    la = load_config(None, ["data.patch_size=[16,16,8]", "data.augment=la"])
    assert flip_axes(three, volume, la) == (0, 1)  # rot90 and flips in (X, Y): never along Z
    plain = uncertainty_map([LeftRight()], volume, INFO, upright, torch.device("cpu"))
    assert plain[:, :, [0, -1]].min() > 0.999  # the left-right flip still contradicts it


def test_predict_never_writes_into_a_dataset_label_folder(run_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "Dataset" / "labelsTs"
    labels.mkdir(parents=True)
    (labels.parent / "dataset.json").write_text("{}")
    scan = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 1), np.float32), np.eye(4)), scan)
    assert main(["predict", str(run_dir), str(scan), "-o", str(labels)]) == 2
    assert list(labels.iterdir()) == []
