"""Two gloo processes under torchrun train like one process with the whole global batch.

What is compared, and why it can be exact:
- Replication (mean_teacher on the BatchNorm U-Net with dropout, teacher noise, augmentation and sharded
  validation): every rank sees different data and random draws, yet after training the student, the EMA
  teacher and all buffers are bit-identical on both ranks (averaged gradients, rank 0's buffers at each
  checkpoint), and only rank 0 wrote the run folder.
- Equivalence with one process on the same global batch: data parallelism averages per-rank gradients, which
  equals the gradient of the whole batch only when the loss is a mean over samples and no layer couples
  samples. BatchNorm does (per-rank statistics; SyncBatchNorm, which would fix it, has no CPU kernel) and so
  does the SSL4MIS Dice (one ratio over the whole batch). So this part uses a probe method (pixel CE + softmax
  MSE to an EMA teacher) on a normalisation-free net with `augment: none` (augmentation draws are seeded per
  rank): losses and weights then match to float rounding.

The file is also the torchrun worker (`python -m torch.distributed.run ... test_distributed.py OUT`).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.engine.checkpoint import load_checkpoint
from medsemi.engine.distributed import DistContext, per_rank_batch

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = 3


def _probe_config(run_dir: Path) -> dict:
    return {
        "seed": 7,
        "data": {
            "dataset": "synthetic2d",
            "labeled": 2,
            "patch_size": [32, 32],
            "batch_labeled": 4,
            "batch_unlabeled": 4,
            "augment": "none",
            "options": {"n_train_patients": 4, "n_val": 1, "n_test": 1, "size": [32, 32], "depth": 4},
        },
        "net": {"name": "ddp_probe"},
        "method": {"name": "ddp_probe"},
        "optim": {"lr": 0.5},
        "train": {"iterations": ITERATIONS, "val_split": "none", "progress": False, "device": "cpu"},
        "run": {"dir": str(run_dir)},
    }


def _mean_teacher_overrides(run_dir: Path) -> list[str]:
    return [
        "data.patch_size=[32,32]",
        "data.batch_labeled=4",
        "data.batch_unlabeled=4",
        "data.options={n_train_patients: 4, n_val: 2, n_test: 1, size: [32, 32], depth: 4}",
        "net.options={widths: [4, 8, 16, 32, 64]}",
        f"train.iterations={ITERATIONS}",
        f"train.val_every={ITERATIONS}",
        "train.progress=false",
        "train.device=cpu",
        "eval.batch_size=64",
        f"run.dir={run_dir}",
    ]


def _register_probe() -> None:
    """A decomposable method and a normalisation-free net; registered only inside the worker processes."""
    from medsemi.engine.ema import ema_update, make_teacher
    from medsemi.methods.base import Method, MethodOptions, register_method
    from medsemi.nets.registry import register_net

    class ProbeNet(nn.Module):
        def __init__(self, in_channels: int, num_classes: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.Tanh())
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
            features = self.body(x)
            logits = self.head(features)
            return (logits, features) if return_features else logits

    @dataclass
    class ProbeOptions(MethodOptions):
        ema_decay: float = 0.9

    class Probe(Method):
        Options = ProbeOptions

        def __init__(self, options: ProbeOptions, context) -> None:
            super().__init__(options, context)
            self.student = context.build_net()
            self.teacher = make_teacher(self.student)

        def training_step(self, batch, step: int) -> dict[str, Tensor]:
            logits = self.student(torch.cat([batch.image_l, batch.image_u]))
            labeled = batch.image_l.shape[0]
            with torch.no_grad():
                target = self.teacher(batch.image_u).softmax(1)
            return {
                "ce": F.cross_entropy(logits[:labeled], batch.label_l),
                "consistency": F.mse_loss(logits[labeled:].softmax(1), target),
            }

        def after_step(self, step: int) -> None:
            ema_update(self.teacher, self.student, self.options.ema_decay, step)

        def predictor(self) -> nn.Module:
            return self.student

        def ema_teachers(self) -> list[nn.Module]:
            return [self.teacher]

        def optimised_modules(self) -> dict[str, nn.Module]:
            return {"student": self.student}

    register_net("ddp_probe")(lambda in_channels, num_classes: ProbeNet(in_channels, num_classes))
    register_method("ddp_probe")(Probe)


def _worker(out: Path) -> None:
    import torch.distributed as dist

    from medsemi.config import config_from_dict, load_config
    from medsemi.engine.trainer import Trainer, train

    _register_probe()
    rank = int(os.environ["RANK"])
    probe = Trainer(config_from_dict(_probe_config(out / "probe_ddp")))
    probe.fit()
    torch.save(probe.method.state_dict(), out / f"probe_rank{rank}.pt")
    teacher = Trainer(load_config(REPO / "configs/demo/mean_teacher.yaml", _mean_teacher_overrides(out / "mt")))
    teacher.fit()
    torch.save(teacher.method.state_dict(), out / f"mt_rank{rank}.pt")
    dist.destroy_process_group()
    if rank == 0:  # the single-process reference, same global batch
        os.environ.update(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
        train(config_from_dict(_probe_config(out / "probe_single")))


def _losses(run_dir: Path) -> list[dict[str, float]]:
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    return [{k: float(v) for k, v in row.items() if k.startswith("loss")} for row in rows]


def _assert_same(first: dict[str, Tensor], second: dict[str, Tensor], atol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key].double(), second[key].double(), rtol=0.0, atol=atol), key


@pytest.mark.slow
def test_two_gloo_ranks_stay_identical_and_match_one_process_with_the_global_batch(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, __file__, str(tmp_path)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    teacher = [torch.load(tmp_path / f"mt_rank{rank}.pt") for rank in (0, 1)]
    _assert_same(teacher[0], teacher[1])
    assert any(key.startswith("teacher.") and "running_mean" in key for key in teacher[0])
    saved = load_checkpoint(tmp_path / "mt" / "checkpoints" / "last.pt")["method"]
    _assert_same(saved, teacher[0])
    log = list(csv.DictReader((tmp_path / "mt" / "log.csv").open()))
    assert [int(row["global_step"]) for row in log] == list(range(1, ITERATIONS + 1))
    assert log[-1]["val_dice"] != ""
    assert sorted(p.name for p in (tmp_path / "mt").iterdir()) == [
        "checkpoints",
        "config.yaml",
        "learning_curves.png",
        "log.csv",
        "log.jsonl",
    ]

    probe = [torch.load(tmp_path / f"probe_rank{rank}.pt") for rank in (0, 1)]
    _assert_same(probe[0], probe[1])
    single = load_checkpoint(tmp_path / "probe_single" / "checkpoints" / "last.pt")["method"]
    _assert_same(probe[0], single, atol=1e-6)
    distributed_losses, single_losses = _losses(tmp_path / "probe_ddp"), _losses(tmp_path / "probe_single")
    assert len(distributed_losses) == len(single_losses) == ITERATIONS
    assert distributed_losses[0]["loss"] != distributed_losses[-1]["loss"]
    for ours, reference in zip(distributed_losses, single_losses, strict=True):
        assert ours.keys() == reference.keys()
        for key in ours:
            assert ours[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key


def test_the_configured_batch_is_global_and_must_split_evenly() -> None:
    assert per_rank_batch(12, DistContext(rank=1, world_size=4), "data.batch_labeled") == 3
    assert per_rank_batch(12, DistContext(), "data.batch_labeled") == 12
    with pytest.raises(ValueError, match="divisible by the 5 processes"):
        per_rank_batch(12, DistContext(rank=0, world_size=5), "data.batch_labeled")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
