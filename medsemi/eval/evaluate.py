"""Evaluation glue: a trained run + a split -> per-case metrics, a summary and figures in the run folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsemi.config import Config, load_config
from medsemi.data.augment import recipe
from medsemi.data.cases import Case, DatasetInfo
from medsemi.data.splits import describe_split, load_split, patients
from medsemi.engine.checkpoint import load_checkpoint, load_weights
from medsemi.engine.device import resolve_device
from medsemi.engine.run_folder import evaluation_dir
from medsemi.eval.batchnorm import recalibrate_batchnorm, training_images
from medsemi.eval.figures import ExtremeCases, slice_axis
from medsemi.eval.inference import predict_case
from medsemi.eval.metrics import case_metrics
from medsemi.eval.postprocess import largest_connected_component
from medsemi.eval.report import (
    patient_rows,
    plot_case_dice,
    summarise,
    write_case_table,
    write_patient_table,
    write_summary,
)
from medsemi.methods import Method, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.progress import say, track


def predict_probabilities(
    net: nn.Module, image: np.ndarray, info: DatasetInfo, config: Config, device: torch.device
) -> Tensor:
    """(K, *spatial) softmax probabilities of one case, as the protocol of its dataset prescribes.

    2D networks trained on resized slices see resized slices (a 2D image is a one-slice volume); networks trained
    on crops (a recipe that crops: `crop`, `la`, `{crop: true}`, every 3D one) see a sliding window of the patch.
    """
    patch = config.eval.patch_size or config.data.patch_size
    tensor = torch.from_numpy(np.ascontiguousarray(image)).float().to(device)
    crops = recipe(config.data.augment, info.spatial_dims).crops(info.spatial_dims)
    as_volume = info.spatial_dims == 2 and tensor.dim() == 3 and not crops
    probs = predict_case(
        net,
        tensor.unsqueeze(1) if as_volume else tensor,
        spatial_dims=info.spatial_dims,
        patch_size=tuple(patch),
        stride=tuple(config.eval.stride) if config.eval.stride else None,
        batch_size=config.eval.batch_size,
    )
    return probs[:, 0] if as_volume else probs


def predict_labels(
    net: nn.Module, image: np.ndarray, info: DatasetInfo, config: Config, device: torch.device
) -> np.ndarray:
    labels = predict_probabilities(net, image, info, config, device).argmax(0).cpu().numpy()
    if config.eval.lcc:
        labels = largest_connected_component(labels, info.num_classes)
    return labels


def evaluate_cases(
    net: nn.Module,
    cases: list[Case],
    info: DatasetInfo,
    config: Config,
    device: torch.device,
    *,
    dice_only: bool = False,
    show_progress: bool = True,
    on_case: Callable[[Case, np.ndarray], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (case, foreground class) with its patient and every metric (Dice only during training
    validation); millimetre distances only for cases whose spacing is known.

    `on_case(case, predicted_labels)` sees every prediction (figures keep a few slices without re-predicting).
    """
    rows: list[dict[str, Any]] = []
    for case in track(cases, len(cases), "evaluate", enabled=show_progress, unit="cases"):
        if case.label is None:
            raise ValueError(f"{case.source or case.case_id}: cannot evaluate a case without a label")
        labels = predict_labels(net, case.image, info, config, device)
        if on_case is not None:
            on_case(case, labels)
        per_class = case_metrics(labels, case.label, info.num_classes, case.spacing, dice_only=dice_only)
        for class_index, metrics in per_class.items():
            rows.append(
                {"case_id": case.case_id, "patient": case.patient, "class": info.class_names[class_index], **metrics}
            )
    return rows


def mean_dice(rows: list[dict[str, Any]]) -> float:
    """Mean over classes of the per-class mean over cases (the papers' order)."""
    by_class: dict[str, list[float]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row["dice"])
    return float(np.mean([np.mean(values) for values in by_class.values()])) if by_class else 0.0


@dataclass
class LoadedRun:
    config: Config
    info: DatasetInfo
    method: Method
    checkpoint: str
    device: torch.device


def load_run(run_dir: Path, checkpoint: str = "best", device: str | None = None) -> LoadedRun:
    """Rebuild a run's method from its resolved config and load a checkpoint (best falls back to last).

    The dataset's description travels in the checkpoint, so a run predicts without its training data.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    target = resolve_device(device or config.train.device)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.exists():
        checkpoint, path = "last", run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint; has {run_dir} been trained?")
    state = load_checkpoint(path, "cpu")
    info = DatasetInfo(**state["info"])
    net = NetSpec(config.net.name, dict(config.net.options))
    context = MethodContext(info=info, net=net, iterations=config.train.iterations)
    method = create_method(config.method_name, config.method_options, context)
    load_weights(method, state["method"], path)
    method.to(target).eval()
    return LoadedRun(config=config, info=info, method=method, checkpoint=checkpoint, device=target)


def evaluate_run(
    run_dir: Path,
    split: str = "test",
    checkpoint: str = "best",
    limit: int | None = None,
    recalibrate_bn: int = 0,
) -> dict[str, Any]:
    """Evaluate a run on a split; writes {cases.csv,patients.csv,summary.md,summary.csv,dice.png} and overlays/
    of the worst and best cases into eval/<split>_<checkpoint>, or eval/<split>_<checkpoint>_first<N> when
    `limit` leaves out cases (the returned summary's "folder"). Results are per case and per patient (the mean
    over each patient's cases: slices, patches or frames of one subject are not independent).

    `recalibrate_bn` > 0 first re-estimates the predictor's BatchNorm statistics with dropout off on that many
    un-augmented training batches (medsemi.eval.batchnorm); the tables go to a folder ending in _bn<N>."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"evaluate --limit must be a positive number of cases, got {limit!r}")
    if isinstance(recalibrate_bn, bool) or not isinstance(recalibrate_bn, int) or recalibrate_bn < 0:
        raise ValueError(f"evaluate --recalibrate-bn must be a number of batches >= 0, got {recalibrate_bn!r}")
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, checkpoint)
    config = loaded.config
    chosen = load_split(config.data)[1]
    predictor = loaded.method.predictor()
    batchnorm = "as trained"
    if recalibrate_bn:
        images = training_images(config, chosen, loaded.method.uses_unlabeled, recalibrate_bn, loaded.device)
        if seen := recalibrate_batchnorm(predictor, images):
            batchnorm = f"re-estimated on {recalibrate_bn} training batches"
            say(f"BatchNorm statistics re-estimated with dropout off on {seen} training images ({batchnorm})")
        else:
            batchnorm = "none in the network"
            say("no BatchNorm layer in the predictor: evaluated as trained")
    cases = getattr(chosen, split)
    if not cases:
        raise ValueError(f"{run_dir}: the {split!r} split of {config.data.dataset} is empty")
    limited = limit is not None and limit < len(cases)
    cases = cases[:limit]
    scored = f"evaluated: {'the first ' if limited else ''}{len(cases)} cases of {len(patients(cases))} patients"
    say("\n".join(describe_split(chosen, {split: scored})))
    extremes = ExtremeCases(axis=slice_axis(loaded.info.spatial_dims), class_names=loaded.info.class_names)
    rows = evaluate_cases(predictor, cases, loaded.info, config, loaded.device, on_case=extremes)
    out = evaluation_dir(run_dir, split, loaded.checkpoint, limit if limited else None, recalibrate_bn)
    by_patient = patient_rows(rows)
    summary = {
        **summarise(rows),
        "per_patient": summarise(by_patient, unit="patient"),
        "checkpoint": loaded.checkpoint,
        "folder": out,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_case_table(rows, out / "cases.csv")
    write_patient_table(by_patient, out / "patients.csv")
    stages = loaded.method.stages()
    header = {
        "run": str(run_dir),
        "method": config.method_name,
        "dataset": config.data.dataset,
        "labeled": len(chosen.labeled_patients),
        "split rule": chosen.rule,
        "split": split,
        "cases": len(cases),
        "patients": len(patients(cases)),
        "checkpoint": loaded.checkpoint,
        "seed": config.seed,
        "iterations": sum(stage.iterations for stage in stages),
        "stages": " + ".join(f"{stage.name} {stage.iterations}" for stage in stages),
        "lcc": config.eval.lcc,
        "batchnorm": batchnorm,
    }
    write_summary(summary, out / "summary.md", out / "summary.csv", header)
    plot_case_dice(rows, out / "dice.png")
    extremes.write(rows, out / "overlays")
    return summary
