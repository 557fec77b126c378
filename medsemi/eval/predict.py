"""`medsemi predict`: segment image files with a trained run, writing masks in each input's own grid.

Beside each mask: an uncertainty map (medsemi.eval.uncertainty) and, on request, one overlay PNG per slice.
Every file is written under a temporary name and renamed when complete, so a killed or disk-full run never
leaves a half-written mask that looks finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsemi.data.io import RASTER_ENDINGS, DataFileError, has_ending, load_image, strip_ending, write_prediction
from medsemi.data.nnunet import CHANNEL_FILE
from medsemi.engine.checkpoint import atomic_path
from medsemi.eval.evaluate import load_run, predict_labels
from medsemi.eval.figures import write_slice_overlays
from medsemi.eval.uncertainty import uncertainty_map, write_uncertainty


@dataclass
class Predicted:
    """The files written for one input."""

    mask: Path
    uncertainty: Path | None = None
    overlays: list[Path] = field(default_factory=list)


def predict_files(
    run_dir: Path,
    inputs: list[Path],
    output: Path,
    checkpoint: str = "best",
    *,
    uncertainty: bool = True,
    overlay: bool = False,
) -> list[Predicted]:
    """One mask per input, named like it less an nnU-Net `_0000` suffix (`output_stem`; NIfTI keeps the
    input's affine and header codes; PNG stays PNG).

    `uncertainty`: `<name>_uncertainty<ending>` in the mask's grid. `overlay`: `<name>_overlay/` with one PNG
    per slice (image, mask, uncertainty). The mask is the predictor's, exactly what `evaluate` scores. A 2D
    run segments a NIfTI volume slice by slice along its last axis (z, the NIfTI slice axis).
    """
    output = Path(output)
    planned = _planned_outputs([Path(path) for path in inputs], output)
    loaded = load_run(run_dir, checkpoint)
    predictor = loaded.method.predictor()
    members = loaded.method.ensemble_members()
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for path, (mask, uncertainty_path, overlay_dir) in planned.items():
        case = load_image(path)
        slices_last = loaded.info.spatial_dims == 2 and case.image.ndim == 4
        image = np.moveaxis(case.image, -1, 1) if slices_last else case.image
        labels = predict_labels(predictor, image, loaded.info, loaded.config, loaded.device)
        labels = np.moveaxis(labels, 0, -1) if slices_last else labels
        result = Predicted(mask)
        with atomic_path(result.mask) as temporary:
            write_prediction(case, labels, temporary)
        entropy = None
        if uncertainty:
            entropy = uncertainty_map(members, image, loaded.info, loaded.config, loaded.device)
            entropy = np.moveaxis(entropy, 0, -1) if slices_last else entropy
            result.uncertainty = uncertainty_path
            with atomic_path(result.uncertainty) as temporary:
                write_uncertainty(entropy, temporary, like=result.mask)
        if overlay:
            result.overlays = write_slice_overlays(  # NIfTI volumes are paged along z
                case.image,
                labels,
                overlay_dir,
                output_stem(path),
                entropy,
                axis=labels.ndim - 1,
                class_names=loaded.info.class_names,
            )
        results.append(result)
    return results


def output_stem(path: Path) -> str:
    """The name outputs take: the input's without its ending, and without nnU-Net's `_0000` channel suffix
    (`case_0000.nii.gz` -> `case`), so a mask is named like the case, as labelsTr/ names it."""
    stem = strip_ending(path.name)
    match = CHANNEL_FILE.match(stem)
    return match["case"] if match and match["channel"] == "0000" else stem


def _planned_outputs(inputs: list[Path], output: Path) -> dict[Path, tuple[Path, Path, Path]]:
    """(mask, uncertainty map, overlay folder) per input, refused before any work when one would replace an
    input scan (`-o` is an input's folder) or an annotation (`-o` is a dataset's labelsTr/ or labelsTs/), or
    two inputs would write the same file (one name, two folders)."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: -o names a file; predict writes into a folder")
    if output.name.startswith("labels") and (output.parent / "dataset.json").is_file():
        raise FileExistsError(
            f"{output}: -o is a dataset's label folder, where masks named like the cases would replace its "
            "annotations; write the predictions into another folder"
        )
    missing = [path for path in inputs if not path.is_file()]
    if missing:
        raise DataFileError(missing[0], "input image not found")
    sources = {path.resolve(): path for path in inputs}
    claimed: dict[Path, Path] = {}
    planned = {}
    for path in inputs:
        ending = ".png" if has_ending(path, RASTER_ENDINGS) else ".nii.gz"
        stem = output_stem(path)
        targets = (output / f"{stem}{ending}", output / f"{stem}_uncertainty{ending}", output / f"{stem}_overlay")
        for target in targets:
            key = target.resolve()
            if key in sources:
                raise FileExistsError(
                    f"{sources[key]}: predict -o {output} would overwrite this input with an output; "
                    "write the predictions into another folder"
                )
            if claimed.setdefault(key, path).resolve() != path.resolve():
                raise FileExistsError(
                    f"{path} and {claimed[key]} would both be written to {target}; predict inputs that share a "
                    "file name into separate folders"
                )
        planned[path] = targets
    return planned
