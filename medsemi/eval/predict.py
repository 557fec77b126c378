"""`medsemi predict`: segment image files with a trained run, writing masks in each input's own grid."""

from __future__ import annotations

from pathlib import Path

from medsemi.data.io import RASTER_ENDINGS, has_ending, load_image, strip_ending, write_prediction
from medsemi.eval.evaluate import load_run, predict_labels


def predict_files(run_dir: Path, inputs: list[Path], output: Path, checkpoint: str = "best") -> list[Path]:
    """One mask per input, named like it (NIfTI keeps the input's affine and header codes; PNG stays PNG)."""
    loaded = load_run(run_dir, checkpoint)
    predictor = loaded.method.predictor()
    written = []
    for path in inputs:
        case = load_image(path)
        labels = predict_labels(predictor, case.image, loaded.info, loaded.config, loaded.device)
        ending = ".png" if has_ending(path, RASTER_ENDINGS) else ".nii.gz"
        written.append(write_prediction(case, labels, output / f"{strip_ending(path.name)}{ending}"))
    return written
