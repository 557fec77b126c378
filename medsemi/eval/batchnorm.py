"""Re-estimate BatchNorm running statistics with dropout off, for evaluation.

The SSL4MIS U-Nets train with dropout (up to 0.5) in front of BatchNorm layers, so the running statistics they
accumulate describe dropout-on activations while evaluation runs with dropout off (the variance shift of Li et
al., CVPR 2019). Under `quick` this alone turned fitted networks into poor predictors in eval mode
(docs/methods/supervised.md, "Why: BatchNorm statistics gathered under dropout"). Recalibrating is a forward pass
over training images, no labels and no gradient: the weights stay those of the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from medsemi.config import Config
from medsemi.data.splits import Split
from medsemi.data.stream import BatchStream


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace every BatchNorm layer's running mean and variance by their average over `batches`, computed in
    eval mode except for the BatchNorm layers (dropout off); returns how many images were seen (0, and nothing
    is run, for a network without BatchNorm: there is nothing to re-estimate).

    Every module's training flag and every BatchNorm momentum are restored afterwards.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    modes = {m: m.training for m in net.modules()}
    momenta = {m: m.momentum for m in norms}
    net.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over all batches, not an exponential one
        norm.train()
    seen = 0
    try:
        for images in batches:
            net(images)
            seen += images.shape[0]
    finally:
        for module, training in modes.items():
            module.train(training)
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    if seen == 0:
        raise ValueError("recalibrate_batchnorm: no batches")
    return seen


def training_images(
    config: Config, split: Split, uses_unlabeled: bool, batches: int, device: torch.device
) -> Iterator[Tensor]:
    """`batches` un-augmented training batches of the run's batch size: labeled and, for methods that train
    on them, unlabeled images (a supervised baseline never sees the unlabeled scans, not even here)."""
    unlabeled = split.unlabeled if uses_unlabeled else []
    stream = BatchStream(
        split.labeled,
        unlabeled,
        spatial_dims=len(config.data.patch_size),
        patch_size=tuple(config.data.patch_size),
        batch_labeled=config.data.batch_labeled,
        batch_unlabeled=config.data.batch_unlabeled if unlabeled else 0,
        augment="none",
        strong_view=False,
        seed=config.seed,
        device=device,
    )
    for step in range(batches):
        batch = stream.batch(step)
        yield torch.cat([batch.image_l, batch.image_u])
