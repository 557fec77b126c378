"""Regression tests for methods that once did not learn ACDC (issue: "every method learns on ACDC").

Each fits the method's own network with the method's own supervised loss (the configured `configs/acdc/`
network and options) on real labeled ACDC slices, and asserts a training Dice per foreground class. The
failures they guard against: CAML's foreground-only Dice left background unsupervised for C > 2 (the net
over-segmented); CDMA's MTNet gated the classifier's features to a quarter of their scale (no foreground after
200 iterations); Semiformer's eval-mode labels were confidently background on most of the foreground.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsemi.config import load_config
from medsemi.data.splits import load_split
from medsemi.data.stream import BatchStream
from medsemi.engine.optim import build_optimizer
from medsemi.engine.step import OptimisationStep
from medsemi.methods import Batch, Method, MethodContext, create_method
from medsemi.methods.base import NetSpec
from medsemi.methods.pseudo_labels import confident_labels, eval_mode

REPO = Path(__file__).resolve().parents[2]
PATCH = 64
BATCH = 8

pytestmark = [pytest.mark.slow, pytest.mark.real_data, pytest.mark.usefixtures("one_thread")]


def _method_and_stream(
    name: str,
    acdc_root: Path,
    iterations: int,
    *overrides: str,
    augment: str = "none",
    patch: int = PATCH,
    batch: int = BATCH,
) -> tuple[Method, BatchStream, Batch]:
    """The configured method, its training stream, and 16 held-out labeled slices (two val volumes)."""
    config = load_config(
        REPO / "configs" / "acdc" / f"{name}.yaml",
        [f"data.root={acdc_root}", "data.options={limit: 120}", f"train.iterations={iterations}", *overrides],
    )
    torch.manual_seed(0)
    info, split = load_split(config.data)
    context = MethodContext(info, NetSpec(config.net.name, dict(config.net.options)), iterations)
    method = create_method(config.method_name, config.method_options, context)
    common = {"spatial_dims": 2, "patch_size": (patch, patch), "seed": 0, "device": torch.device("cpu")}
    stream = BatchStream(
        split.labeled,
        split.unlabeled,
        batch_labeled=batch,
        batch_unlabeled=batch,
        augment=augment,
        strong_view=method.needs_strong_view,
        **common,
    )
    held_out = BatchStream(
        split.val[:2], [], batch_labeled=16, batch_unlabeled=0, augment="none", strong_view=False, **common
    )
    return method, stream, held_out.batch(0)


def _optimisation(method: Method, name: str) -> OptimisationStep:
    config = load_config(REPO / "configs" / "acdc" / f"{name}.yaml")
    modules = method.optimised_modules()
    optimizers = [build_optimizer(m, config.optim.settings_for(k)) for k, m in modules.items()]
    return OptimisationStep(method, optimizers, torch.device("cpu"))


def _class_dice(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[float]:
    dice = []
    for c in range(1, num_classes):
        p, t = prediction == c, label == c
        dice.append(float(2 * (p & t).sum() / (p.sum() + t.sum()).clamp_min(1)))
    return dice


SUPERVISED_TERMS = {
    "caml": ("supervised",),
    "cdma": ("supervised",),
    "semiformer": ("supervised_cnn", "supervised_transformer"),
}


def fit_supervised(name: str, acdc_root: Path, iterations: int) -> list[float]:
    """Training Dice per foreground class (RV, Myo, LV) of the predictor, in eval mode, after fitting one
    fixed batch of 4 labeled slices with the method's supervised terms only."""
    method, stream, _ = _method_and_stream(name, acdc_root, 10 * iterations, batch=4)
    batch = stream.batch(0)
    optimisation = _optimisation(method, name)
    method.train()
    for step in range(iterations):
        losses = optimisation.losses(batch, step)
        optimisation.update(sum(losses[k] for k in SUPERVISED_TERMS[name]), step)
    predictor = method.predictor().eval()
    with torch.no_grad():
        prediction = predictor(batch.image_l).argmax(1)
    return _class_dice(prediction, batch.label_l, 4)


@pytest.mark.parametrize(("name", "iterations"), [("caml", 200), ("cdma", 200), ("semiformer", 150)])
def test_own_network_and_supervised_loss_fit_every_foreground_class(
    name: str, iterations: int, acdc_root: Path
) -> None:
    """Measured (RV, Myo, LV): caml 0.82 / 0.18 / 0.88, cdma 0.66 / 0.28 / 0.73, semiformer 0.84 / 0.72 / 0.77; the
    first CDMA MTNet 0 / 0 / 0 and the V-Net CAML with foreground-only Dice 0.14 / 0.03 / 0.13. Myo, a thin ring, is the
    slowest class: the bar is that every class is found, not a quality level."""
    dice = fit_supervised(name, acdc_root, iterations)
    assert min(dice) >= 0.15, f"{name}: training Dice per class (RV, Myo, LV) {dice}"


def semiformer_pseudo_label_foreground(acdc_root: Path, *overrides: str) -> tuple[float, bool]:
    """(share of the held-out slices' foreground confidently labelled background, any confident foreground
    label) after the burn-in and 200 steps of the ACDC config under `quick`'s data settings (128x128, 4 + 4,
    DeiT-Ti). Held-out slices, not training ones: the labeled slices are fitted, the unlabeled ones are not."""
    method, stream, held_out = _method_and_stream(
        "semiformer",
        acdc_root,
        1000,
        "net.options={embed_dim: 192, num_heads: 3}",
        *overrides,
        augment="acdc",
        patch=128,
        batch=4,
    )
    optimisation = _optimisation(method, "semiformer")
    method.train()
    for step in range(200):
        losses = optimisation.losses(stream.batch(step), step)
        optimisation.update(sum(losses.values()), step)
    with torch.no_grad(), eval_mode(method.net, method.options.pseudo_label_eval_mode):
        (weak_cnn, _), _ = method.net.forward_streams(held_out.image_l)
    labels, confidence = confident_labels(weak_cnn)
    confident = confidence >= method.options.threshold
    foreground = held_out.label_l > 0
    missed = float((confident & (labels == 0) & foreground).sum() / foreground.sum())
    return missed, bool((confident & (labels > 0)).any())


def test_semiformer_confident_pseudo_labels_include_foreground_after_the_burn_in(acdc_root: Path) -> None:
    """With the release's eval-mode labels most held-out foreground was confidently background at this point
    (the run then collapsed to background); the ACDC config labels in train mode."""
    missed, any_foreground = semiformer_pseudo_label_foreground(acdc_root)
    assert any_foreground, "no confident foreground pseudo-label at all"
    # Measured: 14 % with the config's train-mode labels, 25 % with `pseudo_label_eval_mode=true`.
    assert missed < 0.2, f"{missed:.0%} of the foreground is confidently labelled background"
