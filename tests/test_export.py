"""`medsemi export`: the predictor as ONNX (dynamic batch), kept only if onnxruntime matches PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medsemi.cli import main
from medsemi.config import load_config
from medsemi.engine.trainer import train
from medsemi.eval.evaluate import load_run
from medsemi.export import ExportParityError, export_onnx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    overrides = [
        "data.patch_size=[32,32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "data.options={n_train_patients: 3, n_val: 1, n_test: 1, size: [32, 32], depth: 3}",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.iterations=2",
        "train.val_split=none",
        "train.progress=false",
        f"run.dir={tmp_path_factory.mktemp('export') / 'run'}",
    ]
    return train(load_config(REPO / "configs/demo/mean_teacher.yaml", overrides))


def test_export_matches_pytorch_within_1e4_at_any_batch_size(run_dir: Path, tmp_path: Path) -> None:
    import onnxruntime

    model = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "-o", str(model)]) == 0
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["input_shape"] == ["batch", 1, 32, 32] and card["max_abs_difference"] <= 1e-4
    assert card["classes"] == ["background", "RV", "Myo", "LV"]

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    image = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    (probabilities,) = session.run(None, {"image": image.numpy()})
    predictor = load_run(run_dir, device="cpu").method.predictor()
    with torch.no_grad():
        expected = torch.softmax(predictor(image), dim=1).numpy()
    assert probabilities.shape == (3, 4, 32, 32)
    assert np.abs(probabilities - expected).max() <= 1e-4


def test_a_failed_parity_check_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    with pytest.raises(ExportParityError, match="not written"):
        export_onnx(run_dir, model, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
