"""FixMatch: the confidence mask really ignores unconfident pixels, and geometry moves pseudo-labels too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.data.cases import DatasetInfo
from medsemi.losses import one_hot
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.fixmatch import FixMatch, apply_dihedral, random_dihedral

INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)


class PixelNet(nn.Module):
    """Per-pixel logits (gain * x, 0, -gain * x): confident where |x| is large, uncertain near 0."""

    def __init__(self, gain: float = 10.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.gain * x, torch.zeros_like(x), -self.gain * x], 1)


def _fixmatch(**options) -> FixMatch:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    method = create_method("fixmatch", options, context)
    method.student = PixelNet()
    return method  # type: ignore[return-value]


def _batch(weak: Tensor, strong: Tensor) -> Batch:
    return Batch(torch.rand(1, 1, *weak.shape[2:]), torch.zeros(1, *weak.shape[2:], dtype=torch.long), weak, strong)


def test_low_confidence_pixels_get_no_loss_and_no_gradient() -> None:
    weak = torch.zeros(2, 1, 8, 8)
    weak[:, :, :4] = 1.0  # confident (class 0); the lower half is uniform: max-prob 1/3
    weak.requires_grad_()
    strong = torch.randn(2, 1, 8, 8).requires_grad_()
    method = _fixmatch(threshold=0.95)
    losses = method.training_step(_batch(weak, strong), 0)
    losses["unsupervised"].backward()
    grad = strong.grad[:, 0]
    assert torch.all(grad[:, 4:] == 0), "an unconfident pixel sent gradient (the SSL4MIS FixMatch bug)"
    assert torch.all(grad[:, :4] != 0)
    assert weak.grad is None or torch.all(weak.grad == 0), "pseudo-labels must be detached"
    assert method.diagnostics["mask_ratio"] == 0.5
    per_pixel = F.cross_entropy(PixelNet()(strong.detach()), torch.zeros(2, 8, 8, dtype=torch.long), reduction="none")
    expected = per_pixel[:, :4].sum() / per_pixel.numel()  # normalised by ALL pixels, not by the mask
    assert torch.allclose(losses["unsupervised"], expected)


def test_nothing_confident_means_no_unsupervised_loss() -> None:
    weak = torch.zeros(2, 1, 8, 8)
    losses = _fixmatch(threshold=0.5).training_step(_batch(weak, torch.randn(2, 1, 8, 8)), 0)
    assert losses["unsupervised"].item() == 0.0


def test_dihedral_moves_images_and_label_maps_alike() -> None:
    labels = torch.randint(0, 3, (4, 6, 6))
    k, flip = torch.tensor([0, 1, 2, 3]), torch.tensor([True, False, True, False])
    assert torch.equal(apply_dihedral(one_hot(labels, 3), k, flip), one_hot(apply_dihedral(labels, k, flip), 3))
    assert torch.equal(apply_dihedral(labels, k, flip)[1], torch.rot90(labels[1], 1, (-2, -1)))
    assert torch.equal(apply_dihedral(labels, k, flip)[2], torch.rot90(labels[2], 2, (-2, -1)).flip(-1))
    k, _ = random_dihedral(64, square=False)
    assert set(k.tolist()) <= {0, 2}


def test_strong_geometry_applies_the_same_transform_to_the_pseudo_labels() -> None:
    """With strong = weak and a per-pixel net, a consistently transformed target leaves the loss unchanged."""
    weak = torch.randn(4, 1, 8, 8) * 0.3
    plain = _fixmatch(threshold=0.6).training_step(_batch(weak, weak.clone()), 0)["unsupervised"]
    rotated = _fixmatch(threshold=0.6, strong_geometry="dihedral").training_step(_batch(weak, weak.clone()), 0)
    assert plain > 0
    assert torch.allclose(rotated["unsupervised"], plain, atol=1e-6)


def test_unsupervised_loss_trains_the_student_from_the_weak_view_labels() -> None:
    context = MethodContext(info=INFO, net=NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), iterations=100)
    method = create_method("fixmatch", {"threshold": 0.0}, context)
    weak = torch.randn(2, 1, 32, 32)
    batch = Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), weak, weak + 0.1)
    method.train()
    losses = method.training_step(batch, 0)
    losses["unsupervised"].backward()
    assert method.diagnostics["mask_ratio"] == 1.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """3 iterations of configs/acdc/fixmatch.yaml at 32x32, every pixel pseudo-labeled (threshold 0)."""
    run = short_run("acdc/fixmatch.yaml", acdc_root, "method.threshold=0.0", "method.strong_geometry=dihedral")
    for row in run.rows:
        assert float(row["mask_ratio"]) == 1.0
        assert float(row["loss/unsupervised"]) > 0
