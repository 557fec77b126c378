"""`medsemi suggest`: which unlabeled patients to annotate next, for a trained run.

Criterion (docs/how-to/label-next.md):
- uncertainty u_i of patient i: the mean, over all voxels of its scored unlabeled cases (all of them unless
  `--max-cases` / `--time-limit` bound the work), of the normalised entropy of the mean softmax over the
  test-time flips the training recipe allows and the method's ensemble members (medsemi.eval.uncertainty),
  in [0, 1];
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
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medsemi.data.augment import recipe
from medsemi.data.cases import Case
from medsemi.data.splits import across_patients, describe_split, load_split
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.eval.evaluate import LoadedRun, load_run
from medsemi.eval.inference import flip_subsets, resize_2d
from medsemi.eval.uncertainty import flip_axes, normalised_entropy, uncertainty_map
from medsemi.progress import progress, say

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
    scored: int


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
    _check_diversity(diversity)
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


def _check_diversity(diversity: float) -> None:
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"--diversity must be in [0, 1], got {diversity}")


@dataclass
class Ranking:
    """What `suggest` returns: the picks, and how much of the pool they were ranked on."""

    picks: list[Suggestion]
    pool_cases: int
    scored_cases: int
    unscored_patients: list[str]
    seconds: float


@torch.no_grad()
def _slice_scores(
    members: Sequence[nn.Module],
    planes: Tensor,
    patch: tuple[int, ...],
    axes: tuple[int, ...],
) -> Tensor:
    """(B,) summed normalised entropy of B same-sized (C, H, W) planes, as `uncertainty_map` computes it
    (flip at the native size, resize to the patch, softmax, resize back, unflip), but with all flips of the
    batch in one forward pass per member."""
    subsets = flip_subsets(axes)
    native = tuple(planes.shape[2:])
    variants = torch.cat([planes.flip([2 + a for a in subset]) if subset else planes for subset in subsets])
    inputs = resize_2d(variants, patch, "nearest")
    total: Tensor | None = None
    for net in members:
        probs = resize_2d(torch.softmax(net(inputs).float(), dim=1), native, "nearest")
        probs = probs.view(len(subsets), planes.shape[0], *probs.shape[1:])
        for index, subset in enumerate(subsets):
            unflipped = probs[index].flip([2 + a for a in subset]) if subset else probs[index]
            total = unflipped if total is None else total + unflipped
    assert total is not None
    mean = total / (len(subsets) * len(members))
    return normalised_entropy(mean.movedim(1, 0)).sum(dim=(1, 2))


def _planes(image: np.ndarray) -> list[np.ndarray]:
    """A 2D network's inputs: the image itself, or each slice of a (C, D, H, W) volume."""
    return [image] if image.ndim == 3 else [image[:, d] for d in range(image.shape[1])]


def _score(
    cases: list[Case], loaded: LoadedRun, flips: bool, batch_size: int, deadline: float, counter: Any
) -> dict[int, tuple[float, int]]:
    """{index of a case: (summed uncertainty, voxels)} for the cases scored before `deadline` (at least one
    batch). Networks trained on resized slices get `batch_size` inputs per forward pass: slices from any
    cases, each with all its flips; others (sliding window, 3D) one case at a time."""
    info, config, device = loaded.info, loaded.config, loaded.device
    members = loaded.method.ensemble_members()
    scores: dict[int, tuple[float, int]] = {}
    if info.spatial_dims == 3 or recipe(config.data.augment, info.spatial_dims).crops(info.spatial_dims):
        for index, case in enumerate(cases):
            if scores and time.monotonic() > deadline:
                break
            values = uncertainty_map(members, case.image, info, config, device, flips=flips)
            scores[index] = (float(values.sum(dtype=np.float64)), values.size)
            counter.update(1)
        return scores
    axes = flip_axes(info, _planes(cases[0].image)[0], config) if flips else ()
    patch = tuple(config.eval.patch_size or config.data.patch_size)
    items = [(index, plane) for index, case in enumerate(cases) for plane in _planes(case.image)]
    slices = max(1, batch_size // len(flip_subsets(axes)))
    last = {index: position for position, (index, _) in enumerate(items)}
    sums = np.zeros(len(cases))
    voxels = np.zeros(len(cases), dtype=np.int64)
    for start in range(0, len(items), slices):
        if start and time.monotonic() > deadline:
            break
        chunk = items[start : start + slices]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, (_, plane) in enumerate(chunk):
            by_shape.setdefault(plane.shape, []).append(position)
        for shape, positions in by_shape.items():
            planes = torch.from_numpy(np.stack([chunk[p][1] for p in positions])).to(device, torch.float32)
            values = _slice_scores(members, planes, patch, axes).cpu().numpy()
            for position, value in zip(positions, values, strict=True):
                sums[chunk[position][0]] += value
                voxels[chunk[position][0]] += int(np.prod(shape[1:]))
        finished = [index for index, _ in chunk if last[index] < start + len(chunk) and index not in scores]
        for index in dict.fromkeys(finished):
            scores[index] = (float(sums[index]), int(voxels[index]))
            counter.update(1)
    return scores


def suggest(
    run_dir: Path,
    budget: int,
    checkpoint: str = "best",
    diversity: float = 1.0,
    flips: bool = True,
    *,
    max_cases: int | None = None,
    time_limit: float | None = None,
    batch_size: int | None = None,
    show_progress: bool = True,
) -> Ranking:
    """Rank the run's unlabeled patients by the documented criterion and return the first `budget`.

    The pool is visited round robin over the patients, each patient's cases in a seeded random order
    (`across_patients`), so `max_cases` (score only that many) and `time_limit` (stop scoring after that many
    seconds) leave every patient sampled alike; a patient with no scored case is not ranked (`Ranking`).
    A forward pass of each ensemble member takes `batch_size` inputs (default eval.batch_size): slices from
    any cases with all their flips (4 flips: a quarter as many slices).
    """
    for name, value, low in (("--budget", budget, 1), ("--max-cases", max_cases, 1), ("--batch-size", batch_size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"--time-limit must be a positive number of seconds, got {time_limit!r}")
    _check_diversity(diversity)  # before the pool is read, not after
    loaded = load_run(Path(run_dir), checkpoint)
    config = loaded.config
    _, split = load_split(config.data)
    if not split.unlabeled:
        raise ValueError(f"{run_dir}: the run's split has no unlabeled cases to suggest from")
    pool = across_patients(split.unlabeled, max_cases, config.seed)
    sampled = "" if max_cases is None else f", {len(pool)} of them sampled across patients (--max-cases)"
    say("\n".join(describe_split(split, {"unlabeled": f"the pool{sampled}"})))
    started = time.monotonic()
    deadline = started + (time_limit if time_limit is not None else math.inf)
    counter = progress(len(pool), "suggest", enabled=show_progress, unit="cases")
    try:
        scores = _score(pool, loaded, flips, batch_size or config.eval.batch_size, deadline, counter)
    finally:
        counter.close()
    seconds = time.monotonic() - started
    by_patient: dict[str, list[int]] = {}
    for index in sorted(scores):
        by_patient.setdefault(pool[index].patient, []).append(index)
    patients = list(by_patient)
    uncertainty = np.array(
        [sum(scores[i][0] for i in by_patient[p]) / sum(scores[i][1] for i in by_patient[p]) for p in patients]
    )
    histograms = intensity_histograms([[pool[i].image for i in by_patient[p]] for p in patients])
    picks = select(uncertainty, similarity(histograms), budget, diversity)
    all_cases: dict[str, list[str]] = {}
    for case in split.unlabeled:
        all_cases.setdefault(case.patient, []).append(case.case_id)
    suggestions = [
        Suggestion(
            rank=rank,
            patient=patients[index],
            uncertainty=float(uncertainty[index]),
            max_similarity=closest,
            value=value,
            case_ids=all_cases[patients[index]],
            scored=len(by_patient[patients[index]]),
        )
        for rank, (index, value, closest) in enumerate(picks, start=1)
    ]
    unscored = [patient for patient in all_cases if patient not in by_patient]
    return Ranking(suggestions, len(pool), len(scores), unscored, seconds)


def write_suggestions(suggestions: list[Suggestion], path: Path) -> Path:
    """CSV for annotators: rank, patient, number of cases (and of those scored), the criterion's terms, the
    case ids (';')."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "patient", "cases", "scored", "uncertainty", "max_similarity", "value", "case_ids"])
    for s in suggestions:
        writer.writerow(
            [
                s.rank,
                s.patient,
                len(s.case_ids),
                s.scored,
                f"{s.uncertainty:.6f}",
                f"{s.max_similarity:.6f}",
                f"{s.value:.6f}",
                ";".join(s.case_ids),
            ]
        )
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
