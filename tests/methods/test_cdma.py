"""CDMA: KD temperature scaling, detached CDKD targets, entropy of the mean, warm-up, inference, configs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.losses import ce_dice_loss, distillation_kl
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.cdma import CDMA, cross_decoder_distillation, mean_prediction_entropy
from medsemi.nets.mtnet import BRANCHES, BranchView, UNetMTNet

REPO = Path(__file__).resolve().parents[2]
SMALL = NetSpec("unet", {"widths": (4, 8, 16, 32, 64)})


def _cdma(num_classes: int = 3, iterations: int = 100, net: NetSpec = SMALL, **options: object) -> CDMA:
    info = DatasetInfo("test", [f"c{i}" for i in range(num_classes)], spatial_dims=2, in_channels=1)
    method = create_method("cdma", options, MethodContext(info=info, net=net, iterations=iterations))
    assert isinstance(method, CDMA)
    return method


def test_distillation_kl_matches_hand_computation_and_temperature_scaling() -> None:
    a = 2.0
    student = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    teacher_logits = torch.tensor([a, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    for temperature in (1.0, 4.0):
        p = torch.sigmoid(torch.tensor(a / temperature)).item()
        expected = temperature**2 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
        got = distillation_kl(student, (teacher_logits / temperature).softmax(1), temperature)
        assert got.item() == pytest.approx(expected, rel=1e-5)
    # T^2 keeps the magnitude as T grows: T^2 KL -> a^2 / 8 for two classes and a uniform student.
    large = distillation_kl(student, (teacher_logits / 100).softmax(1), 100.0)
    assert large.item() == pytest.approx(a**2 / 8, rel=1e-3)
    assert distillation_kl(student, (teacher_logits / 100).softmax(1), 1.0).item() < 1e-3
    same = torch.randn(2, 3, 4, 4)
    assert distillation_kl(same, (same / 10).softmax(1), 10.0).abs().item() < 1e-6


def test_distillation_kl_averages_over_pixels_not_batch() -> None:
    student, teacher = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    one = distillation_kl(student, teacher.softmax(1), 1.0)
    tiled = distillation_kl(student.repeat(2, 1, 2, 2), teacher.repeat(2, 1, 2, 2).softmax(1), 1.0)
    assert tiled.item() == pytest.approx(one.item(), rel=1e-5)


def test_cdkd_gradient_reaches_only_the_student_of_each_term() -> None:
    temperature, pixels = 10.0, 2 * 5 * 5
    logits = [torch.randn(2, 3, 5, 5, requires_grad=True) for _ in range(3)]
    cross_decoder_distillation(logits, temperature).backward()
    soft = [(z.detach() / temperature).softmax(1) for z in logits]
    for k, z in enumerate(logits):
        others = [soft[j] for j in range(3) if j != k]
        # d/dz_k of (1/3) sum_j T^2 KL(p_j || q_k) with constant p_j; gradient through a teacher adds terms.
        expected = temperature * (2 * soft[k] - others[0] - others[1]) / (3 * pixels)
        assert torch.allclose(z.grad, expected, atol=1e-7)
        # The same as distilling from the mean of the other two, counted twice (the reading).
        student = z.detach().clone().requires_grad_(True)
        (2 * distillation_kl(student, (others[0] + others[1]) / 2, temperature) / 3).backward()
        assert torch.allclose(z.grad, student.grad, atol=1e-7)


def test_cdkd_is_zero_when_branches_agree_and_positive_otherwise() -> None:
    z = torch.randn(2, 4, 6, 6)
    assert cross_decoder_distillation([z, z.clone(), z.clone()], 10.0).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_decoder_distillation([z, torch.randn_like(z), torch.randn_like(z)], 10.0).item() > 0


def test_entropy_of_the_mean_decreases_when_predictions_sharpen() -> None:
    base = torch.randn(2, 4, 8, 8)
    values = [mean_prediction_entropy([base * s, base * s + 0.1, base * s - 0.1]).item() for s in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert mean_prediction_entropy([torch.zeros(1, 4, 2, 2)] * 3).item() == pytest.approx(1.0, abs=1e-5)
    # Confident but contradicting branches keep the mean uncertain: the term also pulls branches together.
    a, b = torch.tensor([9.0, 0.0]).view(1, 2, 1, 1), torch.tensor([0.0, 9.0]).view(1, 2, 1, 1)
    assert mean_prediction_entropy([a, b, a]).item() > mean_prediction_entropy([a, a, a]).item() + 0.5


def test_training_step_losses_and_hard_warm_up(make_batch: Callable[..., Batch]) -> None:
    method = _cdma(iterations=100)
    method.eval()  # deterministic forward (no dropout) so the terms can be recomputed by hand
    batch = make_batch((16, 16))
    early = method.training_step(batch, step=9)
    late = method.training_step(batch, step=10)
    assert set(early) == {"supervised", "cdkd", "entropy"}
    assert early["cdkd"].item() == 0 and early["entropy"].item() == 0
    assert method.diagnostics["cdkd"] > 0 and method.diagnostics["unsupervised_on"] == 1.0
    with torch.no_grad():
        outputs = method.net.branch_outputs(torch.cat([batch.image_l, batch.image_u]))
    logits = [outputs[name][0] for name in BRANCHES]
    supervised = sum(ce_dice_loss(z[:2], batch.label_l) for z in logits) / 3
    assert late["supervised"].item() == pytest.approx(supervised.item(), rel=1e-5)
    assert late["cdkd"].item() == pytest.approx(0.1 * cross_decoder_distillation(logits, 10.0).item(), rel=1e-5)
    assert late["entropy"].item() == pytest.approx(0.1 * mean_prediction_entropy(logits).item(), rel=1e-5)


def test_summed_supervised_loss_gives_each_decoder_a_full_gradient(make_batch: Callable[..., Batch]) -> None:
    batch = make_batch((16, 16))
    torch.manual_seed(0)
    mean = _cdma().eval()
    torch.manual_seed(0)
    summed = _cdma(supervised_reduction="sum").eval()
    mean_loss = mean.training_step(batch, step=0)["supervised"]
    summed_loss = summed.training_step(batch, step=0)["supervised"]
    assert summed_loss.item() == pytest.approx(3 * mean_loss.item(), rel=1e-5)
    mean_loss.backward()
    summed_loss.backward()
    for name in BRANCHES:
        head_mean = next(mean.net.decoders[name].parameters()).grad
        head_sum = next(summed.net.decoders[name].parameters()).grad
        torch.testing.assert_close(head_sum, 3 * head_mean)
    with pytest.raises(ValueError, match="supervised_reduction"):
        _cdma(supervised_reduction="max")


def test_unsupervised_terms_train_every_branch_and_the_shared_encoder(make_batch: Callable[..., Batch]) -> None:
    method = _cdma(iterations=10)
    losses = method.training_step(make_batch((16, 16)), step=5)
    (losses["cdkd"] + losses["entropy"]).backward()
    for name in BRANCHES:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.net.decoders[name].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.net.encoder.parameters())


def test_inference_modes_and_ensemble_members() -> None:
    x = torch.randn(1, 1, 16, 16)
    method = _cdma().eval()
    with torch.no_grad():
        outputs = method.net.branch_outputs(x)
        assert torch.equal(method.predictor()(x), outputs["csa"][0])
        members = [m(x) for m in method.ensemble_members()]
    assert [m.branches for m in method.ensemble_members()] == [(b,) for b in BRANCHES]
    assert all(torch.equal(m, outputs[b][0]) for m, b in zip(members, BRANCHES, strict=True))
    mean = _cdma(inference="mean").predictor()
    assert isinstance(mean, BranchView) and mean.branches == BRANCHES
    with pytest.raises(ValueError, match="inference"):
        _cdma(inference="vote")


def test_backbone_choice() -> None:
    assert isinstance(_cdma().net, UNetMTNet)
    assert isinstance(_cdma(net=NetSpec("mtnet", {"widths": (4, 8, 16, 32, 64)})).net, UNetMTNet)
    with pytest.raises(ValueError, match="MTNet"):
        _cdma(net=NetSpec("vnet", {"n_filters": 4}))


DOCUMENTED_DEVIATIONS = {
    "configs/acdc/cdma.yaml": {"supervised_reduction": "sum"},  # from-scratch U-Net MTNet: docs/methods/cdma.md
    "configs/pathology/cdma.yaml": {},
}


@pytest.mark.parametrize("config", sorted(DOCUMENTED_DEVIATIONS))
def test_configs_load_and_name_every_option(config: str) -> None:
    """The Options defaults are the official code's; a config differs only where its page says why."""
    cfg = load_config(REPO / config)
    assert cfg.method_name == "cdma"
    assert set(cfg.method_options) == set(CDMA.Options.__dataclass_fields__)
    expected = {k: getattr(CDMA.Options(), k) for k in cfg.method_options} | DOCUMENTED_DEVIATIONS[config]
    assert cfg.method_options == expected
    assert CDMA.Options().supervised_reduction == "mean"  # the official (1/3) sum over the decoders
    assert cfg.net.name in ("mtnet", "mtnet_resnet50")


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_short_run_trains_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    run = short_run(
        "acdc/cdma.yaml",
        acdc_root,
        "data.options.splits=[train, test]",
        "net.options.widths=[8, 16, 32, 64, 128]",
        "train.val_split=test",
        limit=100,
        patch=(64, 64),
        batch=4,
        iterations=20,
        val_limit=1,
        cases=2,
    )
    on = [float(row["unsupervised_on"]) for row in run.rows]
    assert on == [0.0, 0.0] + [1.0] * 18  # warm-up: 10 % of 20 iterations
    assert all(float(row["loss/cdkd"]) > 0 for row in run.rows[2:])


def _write_rgb_folder(root: Path, generator: np.random.Generator) -> None:
    """DigestPath-like: pink tissue with dark purple elliptic lesions, RGB PNG images, {0, 1} PNG masks."""
    from PIL import Image

    names = {"imagesTr": 5, "imagesTs": 2, "imagesUnlabeled": 2}
    labels = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}
    for folder, count in names.items():
        (root / folder).mkdir(parents=True)
        if folder in labels:
            (root / labels[folder]).mkdir()
        for i in range(count):
            height, width = 96, 80
            yy, xx = np.mgrid[:height, :width]
            cy, cx = generator.uniform(25, 70), generator.uniform(20, 60)
            ry, rx = generator.uniform(10, 22, size=2)
            mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
            colour = np.where(mask[..., None], [120, 50, 140], [235, 185, 205]).astype(float)
            image = np.clip(colour + generator.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image, "RGB").save(root / folder / f"case{folder[6:]}{i:02d}_0000.png")
            if folder in labels:
                Image.fromarray(mask).save(root / labels[folder] / f"case{folder[6:]}{i:02d}.png")
    meta = {"name": "rgb", "labels": {"background": 0, "lesion": 1}, "channel_names": {"0": "RGB"}}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".png"}))


@pytest.mark.slow
def test_rgb_png_folder_trains_predicts_by_sliding_window_and_evaluates(
    tmp_path: Path, short_run: Callable[..., Any]
) -> None:
    from PIL import Image

    from medsemi.eval.predict import predict_files

    root = tmp_path / "data"
    _write_rgb_folder(root, np.random.default_rng(0))
    run = short_run(
        "pathology/cdma.yaml",
        root,
        "data.labeled=2",
        "data.options.val_from_train=1",
        "net.options.widths=[4, 8, 16, 32, 64]",
        "eval.patch_size=[48, 48]",
        "eval.stride=[36, 36]",
        limit=None,
        patch=(48, 48),
        iterations=20,
        val_limit=1,
        cases=2,  # all of imagesTs
    )
    images = sorted((root / "imagesTs").iterdir())
    written = predict_files(run.dir, images, tmp_path / "predictions")
    for image, result in zip(images, written, strict=True):
        mask = np.asarray(Image.open(result.mask))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]  # 96 x 80 from 48 x 48 windows
        assert set(np.unique(mask)) <= {0, 1}
