"""benchmarks/reference_data_path.py: one short real-ACDC run through the trainer with the per-sample path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("reference_data_path", REPO / "benchmarks/reference_data_path.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.real_data
def test_reference_path_trains_and_tests_a_run(acdc_root: Path, tmp_path: Path, one_thread: None) -> None:
    script = _script()
    run = tmp_path / "run"
    overrides = [
        f"data.root={acdc_root}",
        "data.patch_size=[64, 64]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "train.iterations=3",
        "train.val_every=3",
        "train.val_limit=1",
        "train.checkpoint_every=3",
        "data.options={limit: 20}",
        "data.labeled=1",
    ]
    script.main(str(REPO / "configs/acdc/supervised.yaml"), str(run), *overrides)
    assert (run / "checkpoints/best.pt").exists()
    for checkpoint in ("best", "last"):
        assert (run / f"eval/test_{checkpoint}/summary.csv").exists()


def test_reference_stream_draws_native_slices_at_the_patch_size() -> None:
    import numpy as np

    from medsemi.data.cases import Case

    script = _script()
    image = np.random.default_rng(0).random((1, 30, 20)).astype(np.float32)
    label = (image[0] > 0.5).astype(np.uint8)
    case = Case("a", "p", image, label, (1.0, 1.0))
    stream = script.ReferenceStream([case], [case], (16, 16), (3, 2), seed=1)
    batch = stream.batch(0)
    assert batch.image_l.shape == (3, 1, 16, 16) and batch.label_l.shape == (3, 16, 16)
    assert batch.image_u.shape == (2, 1, 16, 16)
    assert set(batch.label_l.unique().tolist()) <= {0, 1}
    again = script.ReferenceStream([case], [case], (16, 16), (3, 2), seed=1).batch(0)
    assert (again.image_l == batch.image_l).all()
