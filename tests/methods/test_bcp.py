"""BCP: the official losses reproduced, provenance of mixed targets, alpha, LCC pseudo-labels, stages, EMA."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import medsemi.methods.bcp as bcp_module
from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.data.mixing import Mixed, Source, copy_paste
from medsemi.methods import Batch, MethodContext, create_method
from medsemi.methods.base import NetSpec, Stage
from medsemi.methods.bcp import BCP

REPO = Path(__file__).resolve().parents[2]
SHAPES = {2: (32, 32), 3: (32, 32, 16)}


def _bcp(dims: int = 2, num_classes: int = 4, deterministic: bool = False, **options: Any) -> BCP:
    """A small BCP; `deterministic` removes dropout so that a forward can be repeated exactly."""
    info = DatasetInfo("test", [f"c{i}" for i in range(num_classes)], spatial_dims=dims, in_channels=1)
    if dims == 2:
        net = NetSpec("unet", {"widths": (4, 8, 16, 32, 64), **({"dropouts": (0.0,) * 5} if deterministic else {})})
    else:
        net = NetSpec("vnet", {"n_filters": 4, **({"dropout": 0.0} if deterministic else {})})
    method = create_method("bcp", options, MethodContext(info=info, net=net, iterations=100))
    assert isinstance(method, BCP)
    return method.train()


def _selftraining(method: BCP) -> BCP:
    method.start_stage(Stage("selftrain", 100), method.state_dict())
    return method


class MixSpy:
    """Records every copy_paste the method makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Source, Source, Mixed]] = []

    def __call__(self, base: Source, patch: Source, mask: torch.Tensor) -> Mixed:
        mixed = copy_paste(base, patch, mask)
        self.calls.append((base, patch, mixed))
        return mixed


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> MixSpy:
    recorder = MixSpy()
    monkeypatch.setattr(bcp_module, "copy_paste", recorder)
    return recorder


# The official losses, transcribed from DeepMed-Lab-ECNU/BCP (code/utils/losses.py, ACDC_BCP_train.py,
# code/LA&ACDC/utils/BCP_utils.py) so that ours can be checked against them term by term.


def official_acdc_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, fixed: bool) -> torch.Tensor:
    """DiceLoss(n_classes).forward(softmax, target, mask); before the #25 fix class 0 had an all-ones mask."""
    loss = torch.zeros(())
    classes = probs.shape[1]
    for i in range(classes):
        m = mask if fixed or i > 0 else torch.ones_like(mask)
        t = (target == i).float()
        intersect, y_sum, z_sum = (probs[:, i] * t * m).sum(), (t * t * m).sum(), (probs[:, i] ** 2 * m).sum()
        loss = loss + 1 - (2 * intersect + 1e-10) / (z_sum + y_sum + 1e-10)
    return loss / classes


def official_la_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """mask_DiceLoss(nclass=2).forward (softmax inside)."""
    n, classes = probs.shape[:2]
    p = probs.reshape(n, classes, -1)
    t = F.one_hot(target.reshape(n, -1), classes).permute(0, 2, 1).float()
    m = torch.ones(n, 1, p.shape[2]) if mask is None else mask.reshape(n, 1, -1)
    intersect, union = (p * t * m).sum(2), ((p + t) * m).sum(2)
    return 1 - ((2 * intersect + 1e-5) / (union + 1e-5)).mean()


def official_mix_loss(
    output: torch.Tensor,
    img_l: torch.Tensor,
    patch_l: torch.Tensor,
    mask: torch.Tensor,
    dice: Any,
    u_weight: float,
    unlab: bool = False,
) -> torch.Tensor:
    """mix_loss: image_l on the mask (weight 1, or u_weight when unlab), patch_l on 1 - mask."""
    image_weight, patch_weight = (u_weight, 1.0) if unlab else (1.0, u_weight)
    ce = F.cross_entropy(output, img_l, reduction="none")
    ce_patch = F.cross_entropy(output, patch_l, reduction="none")
    loss_dice = (
        dice(output.softmax(1), img_l, mask) * image_weight + dice(output.softmax(1), patch_l, 1 - mask) * patch_weight
    )
    loss_ce = image_weight * (ce * mask).sum() / (mask.sum() + 1e-16)
    loss_ce = loss_ce + patch_weight * (ce_patch * (1 - mask)).sum() / ((1 - mask).sum() + 1e-16)
    return (loss_dice + loss_ce) / 2


OFFICIAL_DICE = {
    "batch_squared_bg_unmasked": lambda p, t, m: official_acdc_dice(p, t, m, fixed=False),
    "batch_squared": lambda p, t, m: official_acdc_dice(p, t, m, fixed=True),
    "sample_linear": official_la_dice,
}
FLAVOURS = [(2, 4, "batch_squared_bg_unmasked"), (2, 4, "batch_squared"), (3, 2, "sample_linear")]


@pytest.mark.parametrize(("dims", "classes", "dice"), FLAVOURS, ids=[f[2] for f in FLAVOURS])
def test_selftrain_loss_equals_the_official_mix_loss(
    dims: int, classes: int, dice: str, spy: MixSpy, make_batch: Callable[..., Batch]
) -> None:
    method = _selftraining(_bcp(dims, classes, deterministic=True, dice=dice, teacher_mode="eval"))
    batch = make_batch(SHAPES[dims], classes, n=4)
    losses = method.training_step(batch, step=0)
    (_, pseudo_a, inward), (pseudo_b, _, outward) = spy.calls
    mask = inward.base_region
    out_in, out_out = (method.student(m.image) for m in (inward, outward))
    y_a, y_b = batch.label_l[:2], batch.label_l[2:]
    # LA_BCP_train.py: loss_l = mix_loss(out_l, lab_a, plab_a, mask), loss_u = mix_loss(out_u, plab_b, lab_b,
    # mask, unlab=True); ACDC_BCP_train.py computes the same two terms with its operands renamed.
    reference = official_mix_loss(out_in, y_a, pseudo_a.target, mask, OFFICIAL_DICE[dice], 0.5)
    reference = reference + official_mix_loss(out_out, pseudo_b.target, y_b, mask, OFFICIAL_DICE[dice], 0.5, unlab=True)
    assert set(losses) == {"supervised", "pseudo"}
    torch.testing.assert_close(losses["supervised"] + losses["pseudo"], reference)


@pytest.mark.parametrize(("dims", "classes"), [(2, 4), (3, 2)], ids=["acdc-regions", "la-whole"])
def test_pretrain_loss_equals_the_official_one(
    dims: int, classes: int, spy: MixSpy, make_batch: Callable[..., Batch]
) -> None:
    method = _bcp(dims, classes, deterministic=True)
    batch = make_batch(SHAPES[dims], classes, n=4)
    batch.image_u = torch.full_like(batch.image_u, float("nan"))  # pre-training must not look at them
    losses = method.training_step(batch, step=0)
    ((base, patch, mixed),) = spy.calls
    assert torch.equal(base.image, batch.image_l[:2]) and torch.equal(patch.image, batch.image_l[2:])
    output = method.student(mixed.image)
    if dims == 2:  # ACDC: mix_loss(out, lab_a, lab_b, loss_mask, u_weight=1.0, unlab=True)
        dice = OFFICIAL_DICE["batch_squared"]  # 2D auto: the official HEAD (#25 fixed)
        reference = official_mix_loss(output, base.target, patch.target, mixed.base_region, dice, 1.0, unlab=True)
    else:  # LA: (CE + mask_DiceLoss) / 2 on the mixed label
        reference = (
            F.cross_entropy(output, mixed.target) + official_la_dice(output.softmax(1), mixed.target, None)
        ) / 2
    assert set(losses) == {"supervised"} and torch.isfinite(losses["supervised"])
    torch.testing.assert_close(losses["supervised"], reference)


@pytest.mark.parametrize("dims", [2, 3])
def test_mixed_targets_are_ground_truth_wherever_pixels_are_labeled(
    dims: int, spy: MixSpy, make_batch: Callable[..., Batch]
) -> None:
    classes = 4 if dims == 2 else 2
    method = _selftraining(_bcp(dims, classes))
    batch = make_batch(SHAPES[dims], classes, n=4)
    method.training_step(batch, step=0)
    (_, _, inward), (_, _, outward) = spy.calls
    labeled_in, labeled_out = inward.base_region.bool(), outward.patch_region.bool()
    assert labeled_in.any() and (~labeled_in).any()
    y_a, y_b = batch.label_l[:2], batch.label_l[2:]
    assert torch.equal(inward.target[labeled_in], y_a[labeled_in])
    assert torch.equal(outward.target[labeled_out], y_b[labeled_out])
    # ... and the images there are the labeled images, elsewhere the unlabeled ones.
    x_a, x_b, u_a, u_b = batch.image_l[:2], batch.image_l[2:], batch.image_u[:2], batch.image_u[2:]
    assert torch.equal(inward.image[:, 0][labeled_in], x_a[:, 0][labeled_in])
    assert torch.equal(inward.image[:, 0][~labeled_in], u_a[:, 0][~labeled_in])
    assert torch.equal(outward.image[:, 0][labeled_out], x_b[:, 0][labeled_out])
    assert torch.equal(outward.image[:, 0][~labeled_out], u_b[:, 0][~labeled_out])
    assert torch.equal(inward.base_region, outward.base_region)  # one mask per step


def test_alpha_weights_the_pseudo_labeled_region_only(make_batch: Callable[..., Batch]) -> None:
    method = _selftraining(_bcp())
    batch = make_batch(SHAPES[2], 4, n=4)
    results = {}
    for alpha in (0.0, 0.5, 1.0):
        variant = copy.deepcopy(method)
        variant.options.alpha = alpha
        torch.manual_seed(3)
        results[alpha] = variant.training_step(batch, step=0)
    assert results[0.0]["pseudo"] == 0
    torch.testing.assert_close(results[1.0]["pseudo"], 2 * results[0.5]["pseudo"])
    assert results[0.5]["pseudo"] > 0
    torch.testing.assert_close(results[1.0]["supervised"], results[0.5]["supervised"])


def test_supervised_term_ignores_the_teacher_and_pseudo_term_ignores_the_labels(
    make_batch: Callable[..., Batch],
) -> None:
    method = _selftraining(_bcp())
    batch = make_batch(SHAPES[2], 4, n=4)
    other_teacher = copy.deepcopy(method)
    with torch.no_grad():
        for p in other_teacher.teacher.parameters():
            p.add_(torch.randn_like(p))
    other_labels = Batch(batch.image_l, torch.randint(0, 4, batch.label_l.shape), batch.image_u)
    runs = []
    for variant, data in ((method, batch), (other_teacher, batch), (copy.deepcopy(method), other_labels)):
        torch.manual_seed(4)
        runs.append(variant.training_step(data, step=0))
    reference, changed_teacher, changed_labels = runs
    torch.testing.assert_close(changed_teacher["supervised"], reference["supervised"])
    assert not torch.allclose(changed_teacher["pseudo"], reference["pseudo"])
    torch.testing.assert_close(changed_labels["pseudo"], reference["pseudo"])
    assert not torch.allclose(changed_labels["supervised"], reference["supervised"])


def _logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return 10.0 * F.one_hot(labels, classes).movedim(-1, 1).float()


def test_acdc_pseudo_labels_keep_each_class_largest_component_per_slice() -> None:
    method = _bcp(2, 4)
    labels = torch.zeros(2, 12, 12, dtype=torch.long)
    labels[0, 1:4, 1:4] = 1  # class 1: 9 pixels ...
    labels[0, 8:10, 8:10] = 1  # ... and 4 pixels, dropped
    labels[0, 4, 10] = 2  # one pixel, first in raster order ...
    labels[0, 5, 5] = labels[0, 6, 6] = 2  # ... loses to diagonal neighbours: one component (full connectivity)
    labels[0, 0, 11] = 3  # single pixels of equal size: the first in raster order stays
    labels[0, 11, 0] = 3
    labels[1, 8:10, 8:10] = 1  # the other slice's only class-1 component stays although it is smaller
    expected = labels.clone()
    expected[0, 8:10, 8:10] = 0
    expected[0, 11, 0] = expected[0, 4, 10] = 0
    assert torch.equal(method._pseudo_label(_logits(labels, 4)), expected)
    assert method.diagnostics["pseudo_lcc_removed"] == pytest.approx(6 / (2 * 144))
    assert torch.equal(_bcp(2, 4, lcc=False)._pseudo_label(_logits(labels, 4)), labels)


def test_la_pseudo_labels_threshold_foreground_at_half_and_keep_the_largest_volume() -> None:
    method = _bcp(3, 2)
    logits = torch.zeros(1, 2, 8, 8, 8)
    logits[:, 0] = 5.0  # background everywhere ...
    logits[0, 0, 1:3, 1:3, 1:3] = -5.0  # ... except a 2x2x2 cube
    logits[0, 0, 3, 1, 1] = 0.0  # p_fg = 0.5 exactly: foreground (>= threshold), extends the cube
    logits[0, 0, 6, 6, 6] = -5.0  # an isolated voxel: not the largest component
    expected = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    expected[0, 1:3, 1:3, 1:3] = 1
    expected[0, 3, 1, 1] = 1
    assert torch.equal(method._pseudo_label(logits), expected)
    assert _bcp(3, 2, threshold=0.6)._pseudo_label(logits)[0, 3, 1, 1] == 0


def test_student_gets_gradient_the_teacher_none(make_batch: Callable[..., Batch]) -> None:
    method = _selftraining(_bcp())
    sum(method.training_step(make_batch(SHAPES[2], 4, n=4), step=0).values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())


def test_selftraining_starts_from_the_previous_best_student_and_resume_stage_restores_it(
    make_batch: Callable[..., Batch],
) -> None:
    method, pretrained = _bcp(), _bcp()
    assert [s.name for s in method.stages()] == ["pretrain", "selftrain"]
    assert [s.iterations for s in method.stages()] == [10000, 100]
    assert [s.name for s in _bcp(pretrain_iterations=0).stages()] == ["selftrain"]
    method.start_stage(method.stages()[1], pretrained.state_dict())
    for net in (method.student, method.teacher):
        for key, value in net.state_dict().items():
            assert torch.equal(value, pretrained.student.state_dict()[key]), key
    assert "selftraining" not in method.state_dict()  # the stage is the trainer's to tell, not a weight
    resumed = _bcp()
    resumed.load_state_dict(method.state_dict())
    assert set(resumed.training_step(make_batch(SHAPES[2], 4, n=4), step=0)) == {"supervised"}
    resumed.resume_stage(method.stages()[1])
    assert set(resumed.training_step(make_batch(SHAPES[2], 4, n=4), step=0)) == {"supervised", "pseudo"}


def test_a_checkpoint_with_the_old_selftraining_buffer_still_loads() -> None:
    method, old = _bcp(), _bcp()
    state = {**old.state_dict(), "selftraining": torch.tensor(True)}
    method.load_state_dict(state)
    for key, value in old.state_dict().items():
        assert torch.equal(method.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="unexpected_key"):
        method.load_state_dict({**state, "unexpected_key": torch.tensor(0.0)})


@pytest.mark.parametrize(("scope", "buffers_follow"), [("state", True), ("parameters", False)])
def test_ema_has_constant_decay_from_the_first_step(scope: str, buffers_follow: bool) -> None:
    method = _bcp(ema_scope=scope)
    before = copy.deepcopy(method.teacher.state_dict())
    method.after_step(0)  # pre-training: the teacher is not updated
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in before.items())
    _selftraining(method)
    teacher = copy.deepcopy(method.teacher.state_dict())
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
        for name, b in method.student.named_buffers():
            if name.endswith("running_mean"):
                b.add_(1.0)
    method.after_step(0)  # with SSL4MIS's warm-up, step 0 would copy the student
    for name, value in method.teacher.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        moved = name.endswith("running_mean")
        shift = 0.01 if (moved and buffers_follow) or name in dict(method.teacher.named_parameters()) else 0.0
        torch.testing.assert_close(value, teacher[name] + shift)


def test_auto_options_follow_the_acdc_script_in_2d_and_the_la_script_in_3d() -> None:
    acdc, la = _bcp(2, 4), _bcp(3, 2)
    assert (acdc.dice_variant, acdc.ema_buffers, acdc.pretrain_regions) == (
        "batch_squared",
        True,
        True,
    )
    assert (la.dice_variant, la.ema_buffers, la.pretrain_regions) == ("sample_linear", False, False)
    assert _bcp(3, 2, dice="batch_squared").dice_variant == "batch_squared"


@pytest.mark.parametrize("bad", [{"dice": "squared"}, {"ema_scope": "buffers"}, {"teacher_mode": "frozen"}])
def test_unknown_option_values_are_errors(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="bcp"):
        _bcp(**bad)


def test_teacher_mode_eval_gives_deterministic_pseudo_labels(spy: MixSpy, make_batch: Callable[..., Batch]) -> None:
    method = _selftraining(_bcp(teacher_mode="eval"))
    batch = make_batch(SHAPES[2], 4, n=4)
    method.training_step(batch, step=0)
    method.training_step(batch, step=0)
    first, second = spy.calls[0][1].target, spy.calls[2][1].target
    assert torch.equal(first, second)
    assert not method.teacher.training


def test_unet_bilinear_is_the_official_unet_2d() -> None:
    """BCP's UNet_2d: PyMIC blocks, 1x1 conv + bilinear x2 up-sampling, 3x3 head (parameters counted by hand)."""
    from medsemi.nets.registry import create_net

    def block(cin: int, cout: int) -> int:  # conv3x3 + BN + conv3x3 + BN
        return cin * cout * 9 + cout + 2 * cout + cout * cout * 9 + cout + 2 * cout

    widths, classes = [16, 32, 64, 128, 256], 4
    encoder = block(1, 16) + sum(block(a, b) for a, b in zip(widths, widths[1:]))
    decoder = sum(a * b + b + block(2 * b, b) for a, b in zip(widths[:0:-1], widths[-2::-1]))
    net = create_net("unet_bilinear", in_channels=1, num_classes=classes)
    assert sum(p.numel() for p in net.parameters()) == encoder + decoder + 16 * classes * 9 + classes
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert net.eval()(torch.randn(1, 1, 48, 64)).shape == (1, classes, 48, 64)


def _synthetic_config(run_dir: Path, *overrides: str) -> Any:
    """configs/acdc/bcp.yaml on the synthetic phantom with a tiny U-Net: 2 pre-training iterations, no validation."""
    return load_config(
        REPO / "configs/acdc/bcp.yaml",
        [
            "data.dataset=synthetic2d",
            "data.root=null",
            "data.labeled=2",
            "data.options={size: [32, 32], depth: 4}",
            "data.patch_size=[32,32]",
            "data.batch_labeled=4",
            "data.batch_unlabeled=4",
            "net.options={widths: [4, 8, 16, 32, 64]}",
            "method.pretrain_iterations=2",
            "train.val_split=none",
            "train.progress=false",
            f"run.dir={run_dir}",
            *overrides,
        ],
    )


def test_a_run_killed_inside_selftraining_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trainer-level: both stages on the synthetic phantom, interrupted at self-training step 2, resumed: the
    trainer tells the method its stage (resume_stage), so the resumed run continues self-training at step 2."""
    from medsemi.engine.checkpoint import load_checkpoint
    from medsemi.engine.trainer import train

    def config(run_dir: Path) -> Any:
        return _synthetic_config(run_dir, "train.iterations=4", "train.checkpoint_every=1")

    reference = load_checkpoint(train(config(tmp_path / "reference")) / "checkpoints" / "last.pt")
    original = BCP.training_step

    def killed_at_selftrain_step_2(self: BCP, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if self.selftraining and step == 2:
            raise KeyboardInterrupt
        return original(self, batch, step)

    monkeypatch.setattr(BCP, "training_step", killed_at_selftrain_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed"))
    interrupted = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert (interrupted["state"]["stage_index"], interrupted["state"]["step"]) == (1, 2)
    steps: list[tuple[bool, int]] = []

    def recorded(self: BCP, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        steps.append((self.selftraining, step))
        return original(self, batch, step)

    monkeypatch.setattr(BCP, "training_step", recorded)
    train(config(tmp_path / "killed"), resume=True)
    assert steps == [(True, 2), (True, 3)]
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert resumed["state"]["finished"] and resumed["state"]["global_step"] == 6
    for key, value in reference["method"].items():
        torch.testing.assert_close(resumed["method"][key], value, msg=key)


@pytest.mark.parametrize(("choice", "inherited"), [("pretrained", True), ("fresh", False)])
def test_selftraining_continues_the_pretrained_sgd_state_as_the_acdc_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str, inherited: bool
) -> None:
    """ACDC's `load_net_opt` restores the pre-training optimizer with its weights; LA builds a fresh SGD."""
    from medsemi.engine import trainer
    from medsemi.engine.checkpoint import load_checkpoint

    assert _bcp(2, 4).inherit_optimizer and not _bcp(3, 2).inherit_optimizer
    started: list[list[dict[str, Any]]] = []
    original = trainer.OptimisationStep.__init__

    def record(self: Any, method: Any, optimizers: Any, *args: Any, **kwargs: Any) -> None:
        started.append([copy.deepcopy(o.state_dict()["state"]) for o in optimizers])
        original(self, method, optimizers, *args, **kwargs)

    monkeypatch.setattr(trainer.OptimisationStep, "__init__", record)
    config = _synthetic_config(tmp_path / "run", f"method.selftrain_optimizer={choice}", "train.iterations=1")
    run_dir = trainer.train(config)
    pretrained = load_checkpoint(run_dir / "checkpoints" / "last_pretrain.pt")["optimizers"]["student"]["state"]
    assert started[0] == [{}] and len(started) == 2
    selftrain_start = started[1][0]
    if inherited:
        assert selftrain_start.keys() == pretrained.keys() and len(pretrained) > 0
        for key, value in pretrained.items():
            torch.testing.assert_close(selftrain_start[key]["momentum_buffer"], value["momentum_buffer"])
    else:
        assert selftrain_start == {}


@pytest.mark.real_data
@pytest.mark.slow
def test_acdc_two_stage_run_hands_over_and_evaluates(acdc_root: Path, short_run: Callable[..., Any]) -> None:
    """configs/acdc/bcp.yaml at 64x64: 4 pre-training + 4 self-training iterations, 1 val, 1 test volume."""
    run = short_run(
        "acdc/bcp.yaml",
        acdc_root,
        "method.pretrain_iterations=4",
        limit=None,
        patch=(64, 64),
        batch=4,
        iterations=4,
        val_limit=1,
        rows=8,
    )
    rows = run.rows
    assert [r["stage"] for r in rows] == ["pretrain"] * 4 + ["selftrain"] * 4
    assert all(r["loss/pseudo"] == "" for r in rows[:4]) and all(float(r["loss/pseudo"]) > 0 for r in rows[4:])
    assert all(0.0 <= float(r["pseudo_lcc_removed"]) <= 1.0 for r in rows[4:])
    assert (run.dir / "checkpoints" / "best_pretrain.pt").exists() and (run.dir / "checkpoints" / "best.pt").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_la_two_stage_run_hands_over_and_evaluates(la_root: Path, short_run: Callable[..., Any]) -> None:
    """configs/la/bcp.yaml with a 4-filter V-Net on 48x48x32 crops: 2 + 2 iterations, 1 test scan (LCC on)."""
    run = short_run(
        "la/bcp.yaml",
        la_root,
        "data.options={val_from_train: 1}",
        "net.options={n_filters: 4}",
        "method.pretrain_iterations=2",
        "eval.stride=[40,40,24]",
        limit=None,
        patch=(48, 48, 32),
        iterations=2,
        validate=False,
        rows=4,
        checkpoint="last",
    )
    assert [r["stage"] for r in run.rows] == ["pretrain"] * 2 + ["selftrain"] * 2
    assert all(float(r["loss/pseudo"]) >= 0 for r in run.rows[2:])
