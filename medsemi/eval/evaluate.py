"""Evaluation glue: a trained run + a split -> per-case metrics, a summary and figures in the run folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from medsemi.config import Config, load_config
from medsemi.data.cases import Case, DatasetInfo
from medsemi.data.splits import load_split
from medsemi.engine.checkpoint import load_checkpoint
from medsemi.eval.figures import ExtremeCases, slice_axis
from medsemi.eval.inference import predict_case
from medsemi.eval.metrics import case_metrics
from medsemi.eval.postprocess import largest_connected_component
from medsemi.eval.report import plot_case_dice, summarise, write_case_table, write_summary
from medsemi.methods import Method, MethodContext, create_method
from medsemi.methods.base import NetSpec


def predict_probabilities(
    net: nn.Module, image: np.ndarray, info: DatasetInfo, config: Config, device: torch.device
) -> Tensor:
    """(K, *spatial) softmax probabilities of one case, as the protocol of its dataset prescribes.

    2D networks trained on resized slices see resized slices (a 2D image is a one-slice volume); networks trained
    on crops (`augment: crop`, 3D) see a sliding window of the patch size.
    """
    patch = config.eval.patch_size or config.data.patch_size
    tensor = torch.from_numpy(np.ascontiguousarray(image)).float().to(device)
    as_volume = info.spatial_dims == 2 and tensor.dim() == 3 and config.data.augment != "crop"
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
    """One row per (case, foreground class) with every metric (Dice only during training validation).

    `on_case(case, predicted_labels)` sees every prediction (figures keep a few slices without re-predicting).
    """
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc="evaluate", disable=not show_progress, leave=False):
        if case.label is None:
            raise ValueError(f"{case.source or case.case_id}: cannot evaluate a case without a label")
        labels = predict_labels(net, case.image, info, config, device)
        if on_case is not None:
            on_case(case, labels)
        per_class = case_metrics(labels, case.label, info.num_classes, case.spacing, dice_only=dice_only)
        for class_index, metrics in per_class.items():
            rows.append({"case_id": case.case_id, "class": info.class_names[class_index], **metrics})
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
    from medsemi.engine.trainer import resolve_device

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
    context = MethodContext(info=info, net=NetSpec(config.net.name, dict(config.net.options)), iterations=1)
    method = create_method(config.method_name, config.method_options, context)
    method.load_state_dict(state["method"])
    method.to(target).eval()
    return LoadedRun(config=config, info=info, method=method, checkpoint=checkpoint, device=target)


def evaluate_run(
    run_dir: Path, split: str = "test", checkpoint: str = "best", limit: int | None = None
) -> dict[str, Any]:
    """Evaluate a run on a split; writes eval/<split>_<checkpoint>/{cases.csv,summary.md,summary.csv,dice.png}
    and overlays/ of the worst and best cases."""
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, checkpoint)
    config = loaded.config
    cases = getattr(load_split(config.data)[1], split)
    if not cases:
        raise ValueError(f"{run_dir}: the {split!r} split of {config.data.dataset} is empty")
    cases = cases[:limit]
    extremes = ExtremeCases(axis=slice_axis(loaded.info.spatial_dims))
    rows = evaluate_cases(loaded.method.predictor(), cases, loaded.info, config, loaded.device, on_case=extremes)
    summary = {**summarise(rows), "checkpoint": loaded.checkpoint}
    out = run_dir / "eval" / f"{split}_{loaded.checkpoint}"
    out.mkdir(parents=True, exist_ok=True)
    write_case_table(rows, out / "cases.csv")
    header = {
        "run": str(run_dir),
        "method": config.method_name,
        "dataset": config.data.dataset,
        "labeled": config.data.labeled,
        "split": split,
        "cases": len(cases),
        "checkpoint": loaded.checkpoint,
        "seed": config.seed,
        "iterations": config.train.iterations,
        "lcc": config.eval.lcc,
    }
    write_summary(summary, out / "summary.md", out / "summary.csv", header)
    plot_case_dice(rows, out / "dice.png")
    extremes.write(rows, out / "overlays")
    return summary
