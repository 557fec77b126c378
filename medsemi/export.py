"""`medsemi export`: the run's predictor as an ONNX model, verified against PyTorch before it is kept.

The graph maps `image` (batch, C, *patch) to `probabilities` (batch, K, *patch), the softmax of the
predictor's logits; the batch axis is dynamic. Its input is one network patch, preprocessed as in training:
2D networks trained on resized slices see slices (or images) resized to the patch size; networks trained on
crops (3D, or a 2D recipe that crops) see sliding windows of it (the whole-case protocol stays in
medsemi.eval.inference). A JSON file beside the model records these facts.
The export is written under a temporary name and renamed only after onnxruntime reproduces the PyTorch
probabilities within the tolerance on random inputs of two batch sizes.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from medsemi.data.augment import recipe
from medsemi.engine.checkpoint import atomic_write_bytes, atomic_write_text
from medsemi.eval.evaluate import LoadedRun, load_run

TOLERANCE = 1e-4
OPSET = 17


class ExportParityError(ValueError):
    """onnxruntime and PyTorch disagree beyond the tolerance: the model is not written."""


class _Probabilities(nn.Module):
    """The predictor with its softmax, the only thing a deployment needs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        return torch.softmax(self.net(image), dim=1)


@dataclass
class ExportReport:
    path: Path
    input_shape: list[int | str]
    classes: list[str]
    max_abs_difference: float
    tolerance: float


def export_onnx(
    run_dir: Path,
    output: Path,
    checkpoint: str = "best",
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Export, check parity (max |onnxruntime - torch| <= tolerance, batch sizes 1 and 2), then write."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError("ONNX export needs onnx and onnxruntime: pip install -e '.[onnx]'") from error
    loaded = load_run(Path(run_dir), checkpoint, device="cpu")
    config, info = loaded.config, loaded.info
    patch = list(config.eval.patch_size or config.data.patch_size)
    model = _Probabilities(loaded.method.predictor()).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, info.in_channels, *patch, generator=generator)
    buffer = _export(model, example, opset)
    session = onnxruntime.InferenceSession(buffer, providers=["CPUExecutionProvider"])
    gaps = []
    for batch in (1, 2):
        image = torch.randn(batch, info.in_channels, *patch, generator=generator)
        with torch.no_grad():
            expected = model(image).numpy()
        (actual,) = session.run(None, {"image": image.numpy()})
        gaps.append(np.abs(actual - expected).max())
    difference = float(np.max(gaps))  # NaN when either output is: not <= tolerance, so refused
    if not difference <= tolerance:
        raise ExportParityError(
            f"onnxruntime differs from PyTorch by {difference:.3g} > {tolerance:g}; {output} not written"
        )
    output = Path(output)
    report = ExportReport(output, ["batch", info.in_channels, *patch], info.class_names, difference, tolerance)
    atomic_write_bytes(output, buffer)
    atomic_write_text(output.with_suffix(".json"), json.dumps(_card(report, loaded), indent=2) + "\n")
    return report


def _export(model: nn.Module, example: Tensor, opset: int) -> bytes:
    """TorchScript-based exporter (no onnxscript dependency); its tracer warnings are expected here."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        )
    return buffer.getvalue()


def _card(report: ExportReport, loaded: LoadedRun) -> dict[str, object]:
    config = loaded.config
    card = asdict(report)
    card["path"] = str(report.path)
    card.update(
        {
            "method": config.method_name,
            "network": config.net.name,
            "checkpoint": loaded.checkpoint,
            "spatial_dims": loaded.info.spatial_dims,
            "input": "image patch (batch, channels, *patch), intensities as the training data",
            "output": "softmax probabilities (batch, classes, *patch)",
            "whole_case": (
                "sliding window of the patch (medsemi.eval.inference)"
                if recipe(config.data.augment, loaded.info.spatial_dims).crops(loaded.info.spatial_dims)
                else "resize each slice to the patch (order-0), predict, resize back (medsemi.eval.inference)"
            ),
        }
    )
    return card
