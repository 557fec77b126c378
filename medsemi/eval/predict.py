"""`medsemi predict`: segment image files with a trained run, writing masks in each input's own grid.

Beside each mask: an uncertainty map (medsemi.eval.uncertainty) and, on request, one overlay PNG per slice.
Every file is written under a temporary name and renamed when complete, so a killed or disk-full run never
leaves a half-written mask that looks finished.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsemi.data.io import RASTER_ENDINGS, has_ending, load_image, strip_ending, write_prediction
from medsemi.eval.evaluate import load_run, predict_labels
from medsemi.eval.figures import write_slice_overlays
from medsemi.eval.uncertainty import uncertainty_map, write_uncertainty


@dataclass
class Predicted:
    """The files written for one input."""

    mask: Path
    uncertainty: Path | None = None
    overlays: list[Path] = field(default_factory=list)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` with the same ending (writers pick the format from it), renamed over
    `path` once the block completes; removed if it fails."""
    ending = path.name[len(strip_ending(path.name)) :]
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=ending)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def predict_files(
    run_dir: Path,
    inputs: list[Path],
    output: Path,
    checkpoint: str = "best",
    *,
    uncertainty: bool = True,
    overlay: bool = False,
) -> list[Predicted]:
    """One mask per input, named like it (NIfTI keeps the input's affine and header codes; PNG stays PNG).

    `uncertainty`: `<name>_uncertainty<ending>` in the mask's grid. `overlay`: `<name>_overlay/` with one PNG
    per slice (image, mask, uncertainty). The mask is the predictor's, exactly what `evaluate` scores. A 2D
    run segments a NIfTI volume slice by slice along its last axis (z, the NIfTI slice axis).
    """
    loaded = load_run(run_dir, checkpoint)
    predictor = loaded.method.predictor()
    members = loaded.method.ensemble_members()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for path in inputs:
        case = load_image(path)
        slices_last = loaded.info.spatial_dims == 2 and case.image.ndim == 4
        image = np.moveaxis(case.image, -1, 1) if slices_last else case.image
        labels = predict_labels(predictor, image, loaded.info, loaded.config, loaded.device)
        labels = np.moveaxis(labels, 0, -1) if slices_last else labels
        ending = ".png" if has_ending(path, RASTER_ENDINGS) else ".nii.gz"
        stem = strip_ending(path.name)
        result = Predicted(output / f"{stem}{ending}")
        with atomic_path(result.mask) as temporary:
            write_prediction(case, labels, temporary)
        entropy = None
        if uncertainty:
            entropy = uncertainty_map(members, image, loaded.info, loaded.config, loaded.device)
            entropy = np.moveaxis(entropy, 0, -1) if slices_last else entropy
            result.uncertainty = output / f"{stem}_uncertainty{ending}"
            with atomic_path(result.uncertainty) as temporary:
                write_uncertainty(entropy, temporary, like=result.mask)
        if overlay:
            result.overlays = write_slice_overlays(  # NIfTI volumes are paged along z
                case.image, labels, output / f"{stem}_overlay", stem, entropy, axis=labels.ndim - 1
            )
        results.append(result)
    return results
