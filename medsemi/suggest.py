"""`medsemi suggest`: which unlabeled patients to annotate next, for a trained run.

Criterion (docs/how-to/label-next.md):
- uncertainty u_i of patient i: the mean, over all voxels of all its unlabeled cases, of the normalised
  entropy of the mean softmax over test-time flips and the method's ensemble members
  (medsemi.eval.uncertainty), in [0, 1];
- appearance descriptor h_i: the histogram of its intensities (32 bins per channel over the pool's
  0.5-99.5 percentile range); dissimilarity d_ij = Hellinger distance of the histograms, in [0, 1];
  similarity k_ij = exp(-(d_ij / s)^2) with s the median d over all pairs of the pool (so a typical pair
  scores about 0.37 and a near-duplicate about 1, whatever the modality);
- greedy selection of K patients: each round picks the largest value_i = u_i * (1 - lambda * max_j k_ij),
  j over the patients already picked (lambda = `diversity`, default 1: a duplicate of a pick is worth
  nothing; 0 ranks by uncertainty alone).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsemi.data.cases import Case
from medsemi.data.splits import load_split
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.eval.evaluate import load_run
from medsemi.eval.uncertainty import uncertainty_map

BINS = 32


@dataclass
class Suggestion:
    """One patient to annotate; `value` is the greedy score it was picked with."""

    rank: int
    patient: str
    uncertainty: float
    max_similarity: float
    value: float
    case_ids: list[str]


def intensity_histograms(patients: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """(P, C * BINS) normalised histograms, one row per patient (a list of (C, *spatial) images each).

    Bins span the pool's range: from the lowest per-patient 0.5th to the highest 99.5th percentile per
    channel (values outside fall into the end bins). One patient's voxels are in memory at a time.
    """

    def voxels(images: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([image.reshape(image.shape[0], -1) for image in images], axis=1)

    ranges = np.array([np.percentile(voxels(images), [0.5, 99.5], axis=1) for images in patients])
    low, high = ranges[:, 0].min(axis=0), ranges[:, 1].max(axis=0)
    rows = []
    for images in patients:
        values = voxels(images)
        parts = []
        for channel, (lo, hi) in enumerate(zip(low, high, strict=True)):
            edges = np.linspace(lo, max(hi, lo + 1e-6), BINS + 1)
            counts, _ = np.histogram(np.clip(values[channel], edges[0], edges[-1]), bins=edges)
            parts.append(counts / max(counts.sum(), 1))
        rows.append(np.concatenate(parts) / len(parts))
    return np.asarray(rows)


def similarity(histograms: np.ndarray) -> np.ndarray:
    """(P, P) kernel exp(-(d / median d)^2) of the Hellinger distances d between normalised histograms."""
    roots = np.sqrt(histograms)
    distance = np.sqrt(np.clip(1.0 - roots @ roots.T, 0.0, 1.0))
    pairs = distance[np.triu_indices(len(distance), k=1)]
    scale = max(float(np.median(pairs)), 1e-12) if pairs.size else 1.0
    return np.exp(-((distance / scale) ** 2))


def select(
    uncertainty: np.ndarray, kernel: np.ndarray, budget: int, diversity: float
) -> list[tuple[int, float, float]]:
    """Greedy picks (index, value, max similarity to earlier picks), value_i = u_i (1 - diversity max_j k_ij).

    Ties go to the lower index, so the result is deterministic.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    closest = np.zeros(len(uncertainty))
    remaining = list(range(len(uncertainty)))
    picks = []
    for _ in range(min(budget, len(remaining))):
        values = [uncertainty[i] * (1.0 - diversity * closest[i]) for i in remaining]
        best = remaining[int(np.argmax(values))]
        picks.append((best, float(max(values)), float(closest[best])))
        remaining.remove(best)
        closest = np.maximum(closest, kernel[best])
    return picks


def _patient_images(cases: list[Case], spatial_dims: int) -> Iterator[np.ndarray]:
    """A patient's images; 2D slices of one size stacked into a (C, n, H, W) volume (one batched pass)."""
    if spatial_dims == 2:
        by_shape: dict[tuple[int, ...], list[np.ndarray]] = {}
        for case in cases:
            if case.image.ndim == 3:
                by_shape.setdefault(case.image.shape, []).append(case.image)
            else:
                yield case.image
        for images in by_shape.values():
            yield np.stack(images, axis=1)
    else:
        for case in cases:
            yield case.image


def suggest(
    run_dir: Path, budget: int, checkpoint: str = "best", diversity: float = 1.0, flips: bool = True
) -> list[Suggestion]:
    """Rank the run's unlabeled patients by the documented criterion and return the first `budget`."""
    if budget < 1:
        raise ValueError(f"--budget must be >= 1, got {budget}")
    loaded = load_run(Path(run_dir), checkpoint)
    config = loaded.config
    _, split = load_split(config.data)
    if not split.unlabeled:
        raise ValueError(f"{run_dir}: the run's split has no unlabeled cases to suggest from")
    by_patient: dict[str, list[Case]] = {}
    for case in split.unlabeled:
        by_patient.setdefault(case.patient, []).append(case)
    members = loaded.method.ensemble_members()
    patients = list(by_patient)
    uncertainty = np.zeros(len(patients))
    for index, patient in enumerate(patients):
        maps = [
            uncertainty_map(members, image, loaded.info, config, loaded.device, flips=flips)
            for image in _patient_images(by_patient[patient], loaded.info.spatial_dims)
        ]
        uncertainty[index] = np.concatenate([m.ravel() for m in maps]).mean()
    histograms = intensity_histograms([[case.image for case in by_patient[p]] for p in patients])
    picks = select(uncertainty, similarity(histograms), budget, diversity)
    return [
        Suggestion(
            rank=rank,
            patient=patients[index],
            uncertainty=float(uncertainty[index]),
            max_similarity=closest,
            value=value,
            case_ids=[case.case_id for case in by_patient[patients[index]]],
        )
        for rank, (index, value, closest) in enumerate(picks, start=1)
    ]


def write_suggestions(suggestions: list[Suggestion], path: Path) -> Path:
    """CSV for annotators: rank, patient, number of cases, the criterion's terms, the case ids (';')."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "patient", "cases", "uncertainty", "max_similarity", "value", "case_ids"])
    for s in suggestions:
        writer.writerow(
            [
                s.rank,
                s.patient,
                len(s.case_ids),
                f"{s.uncertainty:.6f}",
                f"{s.max_similarity:.6f}",
                f"{s.value:.6f}",
                ";".join(s.case_ids),
            ]
        )
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
