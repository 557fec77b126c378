"""Segmentation metrics exactly as medpy computes them (the numbers the SSL papers print), without medpy.

Surfaces: a mask XOR its binary erosion with a connectivity-1 structure (outside the image counts as
background). Surface distances: `distance_transform_edt` of the other mask's surface complement, sampled at
this mask's surface voxels, in voxel units (`spacing=None`) or in the units of `spacing`. HD95 is ONE 95th
percentile of both directions' distances pooled (medpy `hd95`), not the max of two percentiles (MONAI). ASD is
medpy `asd`: the mean distance from the prediction's surface to the reference's (one direction), the metric
the SSL4MIS/BCP test scripts call. See docs/reference/metrics.md for the empty-mask conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

Convention = Literal["papers", "strict"]
HD95Mode = Literal["pooled", "max"]
CONVENTIONS: tuple[Convention, ...] = ("papers", "strict")


@dataclass(frozen=True)
class BinaryMetrics:
    dice: float
    jaccard: float
    hd95: float
    asd: float


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the image's diagonal (extent = size x spacing per axis): the strict worst-case distance."""
    steps = [1.0] * len(shape) if spacing is None else list(spacing)
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, steps, strict=True)))


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask grown by `margin` voxels (clipped to the image).

    Cropping to it changes no surface distance: every surface voxel lies inside, the erosion sees the same
    background (the margin, or the image edge where medpy's border value is background as well).
    """
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def _directed(surfaces: tuple[np.ndarray, np.ndarray], spacing: Sequence[float] | None) -> tuple[np.ndarray, ...]:
    pred_surface, gt_surface = surfaces
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[gt_surface]
    return to_gt, to_pred


def _cropped_surfaces(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = _bbox(pred | gt)
    return _surface(pred[box]), _surface(gt[box])


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(pred surface -> gt surface, gt surface -> pred surface) distances; both masks must be non-empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    return _directed(_cropped_surfaces(pred, gt), spacing)


def hd95_from_distances(pred_to_gt: np.ndarray, gt_to_pred: np.ndarray, mode: HD95Mode = "pooled") -> float:
    """medpy's pooled 95th percentile, or MONAI's max of the two directed percentiles (`mode="max"`)."""
    if mode == "pooled":
        return float(np.percentile(np.concatenate([pred_to_gt, gt_to_pred]), 95))
    if mode == "max":
        return float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)))
    raise ValueError(f"unknown hd95 mode {mode!r}; use 'pooled' or 'max'")


def _distance_pair(surfaces: tuple[np.ndarray, np.ndarray], spacing: Sequence[float] | None) -> tuple[float, float]:
    to_gt, to_pred = _directed(surfaces, spacing)
    return hd95_from_distances(to_gt, to_pred), float(to_gt.mean())


def _conventional(
    convention: Convention,
    empty_pred: bool,
    empty_gt: bool,
    distances: tuple[float, float] | None,
    diagonal: float,
) -> tuple[float, float]:
    """(hd95, asd) when at least one mask is empty, else the measured pair."""
    if distances is not None:
        return distances
    if convention == "papers":
        return (0.0, 0.0) if empty_pred else (diagonal, diagonal)
    if convention == "strict":
        return (0.0, 0.0) if empty_pred and empty_gt else (diagonal, diagonal)
    raise ValueError(f"unknown convention {convention!r}; use one of {CONVENTIONS}")


def _overlap(convention: Convention, n_pred: int, n_gt: int, intersection: int) -> tuple[float, float]:
    """(dice, jaccard): medpy's values when the prediction is non-empty; the convention decides otherwise."""
    if n_pred == 0:
        both_empty = n_gt == 0 and convention == "strict"
        return (1.0, 1.0) if both_empty else (0.0, 0.0)
    union = n_pred + n_gt - intersection
    return 2.0 * intersection / (n_pred + n_gt), intersection / union


def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None = None,
    convention: Convention = "papers",
) -> BinaryMetrics:
    """Dice, Jaccard, HD95 and ASD of one binary mask pair (units: voxels, or those of `spacing`)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; use one of {CONVENTIONS}")
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    dice, jaccard = _overlap(convention, n_pred, n_gt, int(np.logical_and(pred, gt).sum()))
    measured = _distance_pair(_cropped_surfaces(pred, gt), spacing) if n_pred and n_gt else None
    hd95, asd = _conventional(convention, n_pred == 0, n_gt == 0, measured, image_diagonal(pred.shape, spacing))
    return BinaryMetrics(dice, jaccard, hd95, asd)


def case_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    dice_only: bool = False,
) -> dict[int, dict[str, float | bool]]:
    """Per foreground class (1..K-1) metrics of one case under both conventions and both units.

    Keys: dice, jaccard, hd95, asd (papers convention, voxels); hd95_mm, asd_mm (papers, units of `spacing`,
    only when spacing is given); the same with a `_strict` suffix; and the flags empty_pred / empty_gt.
    `dice_only` (validation during training) returns dice, dice_strict and the flags, from one bincount.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(f"prediction shape {pred_labels.shape} != label shape {gt_labels.shape}")
    for name, labels in (("prediction", pred_labels), ("label", gt_labels)):
        if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
            raise ValueError(f"{name} values {labels.min()}..{labels.max()} are outside 0..{num_classes - 1}")
    confusion = np.bincount(
        pred_labels.astype(np.int64).ravel() * num_classes + gt_labels.astype(np.int64).ravel(),
        minlength=num_classes * num_classes,
    ).reshape(num_classes, num_classes)
    units: dict[str, Sequence[float] | None] = {"": None}
    if spacing is not None:
        units["_mm"] = spacing
    results: dict[int, dict[str, float | bool]] = {}
    for c in range(1, num_classes):
        n_pred, n_gt, inter = int(confusion[c].sum()), int(confusion[:, c].sum()), int(confusion[c, c])
        row: dict[str, float | bool] = {}
        for convention in CONVENTIONS:
            suffix = "" if convention == "papers" else "_strict"
            row["dice" + suffix], jaccard = _overlap(convention, n_pred, n_gt, inter)
            if not dice_only:
                row["jaccard" + suffix] = jaccard
        if not dice_only:
            surfaces = _cropped_surfaces(pred_labels == c, gt_labels == c) if n_pred and n_gt else None
            for unit, unit_spacing in units.items():
                measured = _distance_pair(surfaces, unit_spacing) if surfaces is not None else None
                diagonal = image_diagonal(pred_labels.shape, unit_spacing)
                for convention in CONVENTIONS:
                    suffix = unit + ("" if convention == "papers" else "_strict")
                    hd95, asd = _conventional(convention, n_pred == 0, n_gt == 0, measured, diagonal)
                    row["hd95" + suffix], row["asd" + suffix] = hd95, asd
        row["empty_pred"], row["empty_gt"] = n_pred == 0, n_gt == 0
        results[c] = row
    return results
