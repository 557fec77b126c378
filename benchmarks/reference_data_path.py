"""Train one ACDC run with the SSL4MIS per-sample data path in place of medsemi's batched one, then test it.

Each slice is augmented at its native size exactly as SSL4MIS's `RandomGenerator` does (rot90/flip or rotation,
scipy order 0; `medsemi.data.augment.reference_acdc_sample`) and then zoomed to the patch, in shuffled epochs
as its sampler draws them; everything else (network, losses, optimizer, validation, checkpoints) is medsemi's
trainer. It isolates the data path when a result differs from a reference code's (docs/benchmarks.md, the
baselines' network). Usage, with a bench run's resolved config:

    OMP_NUM_THREADS=1 python benchmarks/reference_data_path.py \\
        runs/bench/v5_bilinear/supervised/labeled_3/seed_1/config.yaml runs/reference_path/seed_1 seed=1
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from medsemi.config import load_config
from medsemi.data.augment import reference_acdc_sample
from medsemi.data.cases import Case
from medsemi.engine.trainer import Trainer
from medsemi.eval.evaluate import evaluate_run
from medsemi.methods.base import Batch


class ReferenceStream:
    """Batches of natively augmented slices; labeled and unlabeled slices walk their own shuffled epochs."""

    def __init__(
        self, labeled: list[Case], unlabeled: list[Case], patch: tuple[int, int], sizes: tuple[int, int], seed: int
    ):
        self.pools = [
            [(case.image[0], case.label) for case in labeled],
            [(case.image[0], np.zeros(case.image.shape[1:], np.uint8)) for case in unlabeled],
        ]
        self.patch, self.sizes = patch, sizes
        self.rng = np.random.default_rng(seed)
        self.orders: list[list[int]] = [[], []]

    def _draw(self, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = []
        for _ in range(self.sizes[pool]):
            if not self.orders[pool]:
                self.orders[pool] = list(self.rng.permutation(len(self.pools[pool])))
            image, label = self.pools[pool][self.orders[pool].pop()]
            pairs.append(reference_acdc_sample(image, label, self.patch, self.rng))
        images = torch.from_numpy(np.stack([image for image, _ in pairs]))[:, None]
        return images, torch.from_numpy(np.stack([label for _, label in pairs])).long()

    def batch(self, step: int) -> Batch:
        image_l, label_l = self._draw(0)
        image_u = self._draw(1)[0] if self.sizes[1] else torch.empty(0, 1, *self.patch)
        return Batch(image_l=image_l, label_l=label_l, image_u=image_u)


def main(config_path: str, run_dir: str, *overrides: str) -> None:
    config = load_config(config_path, [*overrides, f"run.dir={run_dir}", "train.progress=false"])
    if config.data.dataset != "acdc" or config.data.augment != "acdc" or config.method_name == "semiformer":
        raise SystemExit("the reference path reproduces the `acdc` recipe on ACDC, without a strong view")
    trainer = Trainer(config)
    uses_unlabeled = trainer.method.uses_unlabeled
    trainer.stream = ReferenceStream(
        trainer.split.labeled,
        trainer.split.unlabeled if uses_unlabeled else [],
        (config.data.patch_size[0], config.data.patch_size[1]),
        (config.data.batch_labeled, config.data.batch_unlabeled if uses_unlabeled else 0),
        config.seed,
    )
    trainer.fit()
    for checkpoint in ("best", "last"):
        evaluate_run(Path(run_dir), "test", checkpoint)


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main(*sys.argv[1:])
