"""A bench protocol on the synthetic phantom that trains in seconds, shared by the bench tests."""

from pathlib import Path

from medsemi.bench.protocols import Protocol

REPO = Path(__file__).resolve().parents[2]
TINY = Protocol(
    name="tiny",
    description="phantom smoke test",
    datasets=("demo",),
    overrides=(
        "data.patch_size=[32, 32]",
        "data.batch_labeled=2",
        "data.batch_unlabeled=2",
        "data.options={n_train_patients: 3, n_val: 1, n_test: 2, n_unlabeled_patients: 1, size: [32, 32]}",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        "train.val_every=2",
        "train.checkpoint_every=2",
        "eval.batch_size=64",
    ),
    iterations=4,
)
