"""The throughput benchmark: both data paths feed real training steps and the report holds their ratios."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medsemi.bench.throughput import (
    ThroughputSpec,
    TwoStreamBatches,
    _load_split,
    _reference_batches,
    native_slices,
)
from medsemi.methods import list_methods

REPO = Path(__file__).resolve().parents[2]
PHANTOM = "{n_train_patients: 3, n_val: 1, n_test: 1, n_unlabeled_patients: 1, size: [40, 48]}"


def test_throughput_script_measures_both_paths_and_writes_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "throughput"
    argv = ["throughput.py", "--dataset", "synthetic2d", "--data-options", PHANTOM, "--labeled", "2"]
    argv += ["--net-options", "{widths: [4, 8, 16, 32, 64]}", "--batch", "4", "--patch", "32"]
    argv += ["--iterations", "2", "--warmup", "1", "--workers", "1", "--threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "benchmarks" / "throughput.py"), run_name="__main__")
    assert exit_.value.code == 0

    report = json.loads((out / "throughput.json").read_text())
    expected = [m for m in ("supervised", "mean_teacher", "bcp") if m in list_methods()]
    assert [r["method"] for r in report["ratios"]] == expected
    speed = {(r["method"], r["variant"]): r["iterations_per_s"] for r in report["results"]}
    for ratio in report["ratios"]:
        assert ratio["variant"] == "fast"
        assert ratio["speedup"] == pytest.approx(
            speed[(ratio["method"], "fast")] / speed[(ratio["method"], "reference")]
        )
    assert all(r["iterations_per_s"] > 0 and r["peak_mb"] > 0 for r in report["results"])
    assert report["settings"]["dataset"] == "synthetic2d" and report["torch_threads"] == 1
    table = (out / "throughput.md").read_text()
    assert "| reference it/s | fast it/s | fast / reference |" in table
    assert all(f"| {method} |" in table for method in expected)


def test_reference_path_batches_labeled_first_at_the_patch_size() -> None:
    spec = ThroughputSpec(
        dataset="synthetic2d",
        data_options={"n_train_patients": 3, "n_unlabeled_patients": 1, "size": [40, 48]},
        labeled=2,
        patch=(32, 32),
        workers=0,
    )
    split, _ = _load_split(spec)
    labeled = native_slices(split.labeled, True)
    assert all(image.shape == (40, 48) and label.shape == (40, 48) for image, label in labeled)
    assert any(label.any() for _, label in labeled)
    assert not any(label.any() for _, label in native_slices(split.unlabeled, False))

    sampler = iter(TwoStreamBatches(5, 7, 3, 2, seed=0))
    for _ in range(20):
        indices = np.array(next(sampler))
        assert (indices[:3] < 5).all() and (indices[3:] >= 5).all() and (indices < 12).all()

    batches = _reference_batches(split, spec, 3, 2, torch.device("cpu"))
    batch = next(batches)
    batches.close()
    assert batch.image_l.shape == (3, 1, 32, 32) and batch.image_u.shape == (2, 1, 32, 32)
    assert batch.label_l.shape == (3, 32, 32) and batch.label_l.dtype == torch.int64
    assert set(batch.label_l.unique().tolist()) <= {0, 1, 2, 3}
