"""Semi-ViT made dense: EMA teacher, warm-start stage, probabilistic pseudo mixup on constructed inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medsemi.data.cases import DatasetInfo
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.semivit import SemiViT, probabilistic_pseudo_mixup, smooth_one_hot

INFO = DatasetInfo("test", ["bg", "a", "b"], spatial_dims=2, in_channels=1)
SMALL_UNET = NetSpec("unet", {"widths": (4, 8, 16, 32, 64)})


def _method(net: NetSpec = SMALL_UNET, **options) -> SemiViT:
    return create_method("semivit", options, MethodContext(info=INFO, net=net, iterations=100))  # type: ignore[return-value]


def _batch() -> Batch:
    weak = torch.randn(2, 1, 32, 32)
    return Batch(torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)), weak, weak + 0.1 * torch.randn_like(weak))


def _two_samples(size: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample 0: image 1, label 1, confidence 0.9; sample 1: image 2, label 2, confidence 0.3."""
    images = torch.stack([torch.full((1, size, size), 1.0), torch.full((1, size, size), 2.0)])
    labels = torch.stack([torch.full((size, size), 1), torch.full((size, size), 2)])
    confidence = torch.stack([torch.full((size, size), 0.9), torch.full((size, size), 0.3)])
    return images, labels, confidence


def test_cutmix_ratio_follows_the_confidences_and_pixels_carry_their_confidence() -> None:
    images, labels, confidence = _two_samples()
    mix = probabilistic_pseudo_mixup(images, labels, confidence, 3, partner=torch.tensor([1, 0]), smoothing=0.0)
    # lambda_0 = 0.9 / 1.2 = 0.75: a box of side sqrt(0.25) = 0.5 -> 10x10 of 20x20 comes from sample 1
    # lambda_1 = 0.25: side sqrt(0.75) = 0.866 -> 17x17 of 20x20 comes from sample 0
    assert mix.ratio.tolist() == pytest.approx([1 - 100 / 400, 1 - 289 / 400])
    from_self = mix.image[:, 0] == images[:, 0, :1, :1]
    assert from_self.flatten(1).float().mean(1).tolist() == pytest.approx(mix.ratio.tolist())
    own_conf = confidence[:, :1, :1]
    other_conf = confidence.flip(0)[:, :1, :1]
    assert torch.equal(mix.confidence, torch.where(from_self, own_conf, other_conf))
    assert torch.equal(mix.target.argmax(1), torch.where(from_self, labels, labels.flip(0)))
    mask = mix.confidence >= 0.5
    assert torch.equal(mask, torch.where(from_self, own_conf, other_conf) >= 0.5)
    assert mask[0].float().mean() == pytest.approx(0.75) and mask[1].float().mean() == pytest.approx(289 / 400)


def test_pixel_mixup_blends_by_per_pixel_confidence_and_keeps_the_larger() -> None:
    images, labels, confidence = _two_samples(4)
    mix = probabilistic_pseudo_mixup(
        images, labels, confidence, 3, mode="pixel_mixup", partner=torch.tensor([1, 0]), smoothing=0.1
    )
    assert mix.ratio.tolist() == pytest.approx([0.75, 0.25])
    assert torch.allclose(mix.image[0], torch.full((1, 4, 4), 0.75 * 1 + 0.25 * 2))
    assert torch.allclose(mix.confidence, torch.full((2, 4, 4), 0.9))
    expected = 0.75 * smooth_one_hot(labels[:1], 3, 0.1) + 0.25 * smooth_one_hot(labels[1:], 3, 0.1)
    assert torch.allclose(mix.target[:1], expected)
    assert mix.target[0, :, 0, 0].tolist() == pytest.approx([0.1 / 3, 0.75 * 0.9 + 0.1 / 3, 0.25 * 0.9 + 0.1 / 3])
    assert torch.allclose(mix.target.sum(1), torch.ones(2, 4, 4))


def test_teacher_labels_in_eval_mode_and_follows_the_student_by_ema() -> None:
    method = _method(ema_decay=0.5, ema_warmup=False).train()
    losses = method.training_step(_batch(), 0)
    assert method.teacher.training, "the teacher's mode must be restored after labelling"
    assert set(losses) == {"supervised", "unsupervised"}
    assert 0.0 < method.diagnostics["mix_ratio"] < 1.0
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_step(0)
    for t0, t1, s in zip(teacher_before, method.teacher.parameters(), method.student.parameters(), strict=True):
        assert torch.allclose(t1, 0.5 * t0 + 0.5 * s)
    assert all(not p.requires_grad for p in method.teacher.parameters())


def test_unconfident_pixels_are_masked() -> None:
    method = _method(threshold=1.0)
    assert method.training_step(_batch(), 0)["unsupervised"].item() == 0.0
    assert method.diagnostics["mask_ratio"] == 0.0
    plain = _method(threshold=0.0, pseudo_mixup="none")
    plain.training_step(_batch(), 0)["unsupervised"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in plain.student.parameters())


def test_warm_start_stage_then_student_and_teacher_start_from_its_best_state() -> None:
    method = _method(warmstart_iterations=7)
    assert [(s.name, s.iterations) for s in method.stages()] == [("warmstart", 7), ("train", 100)]
    assert [s.name for s in _method().stages()] == ["train"]
    warm, train = method.stages()
    method.start_stage(warm, None)
    assert set(method.training_step(_batch(), 0)) == {"supervised"}
    best = {k: v + 1.0 if v.is_floating_point() else v for k, v in method.state_dict().items()}
    assert method.warming_up and "warming_up" not in best
    method.start_stage(train, {**best, "warming_up": torch.tensor(True)})  # an older checkpoint's buffer
    assert not method.warming_up
    for name, value in method.student.state_dict().items():
        assert torch.equal(value, best[f"student.{name}"])
        assert torch.equal(method.teacher.state_dict()[name], value)
    assert set(method.training_step(_batch(), 0)) == {"supervised", "unsupervised"}
    method.resume_stage(warm)
    assert set(method.training_step(_batch(), 0)) == {"supervised"}


def test_transformer_backbone() -> None:
    tiny = NetSpec("swin_unetr", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]})
    method = _method(net=tiny, threshold=0.0)
    losses = method.training_step(_batch(), 0)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """3 iterations of configs/acdc/semivit.yaml, tiny Swin at 32x32, pseudo-CutMix on; 1 test volume."""
    run = short_run(
        "acdc/semivit.yaml",
        acdc_root,
        "net.options={feature_size: 12, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}",
        "method.threshold=0.0",
    )
    for row in run.rows:
        assert 0.0 < float(row["mix_ratio"]) < 1.0
        assert float(row["loss/unsupervised"]) > 0
