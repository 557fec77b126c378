"""Every registered method, automatically: one step trains, EMA teachers get no gradient, 2D and 3D inputs."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from medsemi.bench.method_pages import options_section, page_options_block
from medsemi.config import load_config
from medsemi.data.cases import DatasetInfo
from medsemi.methods import Batch, Method, MethodContext, create_method, list_methods
from medsemi.methods.base import NetSpec, method_class

SMALL_NETS = {2: NetSpec("unet", {"widths": (4, 8, 16, 32, 64)}), 3: NetSpec("vnet", {"n_filters": 4})}
SHAPES = {2: (32, 32), 3: (16, 16, 16)}


def _batch(dims: int, num_classes: int, strong: bool) -> Batch:
    shape = SHAPES[dims]
    image_u = torch.randn(2, 1, *shape)
    return Batch(
        image_l=torch.randn(2, 1, *shape),
        label_l=torch.randint(0, num_classes, (2, *shape)),
        image_u=image_u,
        image_u_strong=image_u + 0.1 * torch.randn_like(image_u) if strong else None,
    )


def _method(name: str, dims: int, num_classes: int = 3, **options: object) -> Method:
    info = DatasetInfo("test", [f"c{i}" for i in range(num_classes)], spatial_dims=dims, in_channels=1)
    context = MethodContext(info=info, net=SMALL_NETS[dims], iterations=100)
    return create_method(name, options, context)


def _last_stage_step(method: Method) -> int:
    """Put multi-stage methods into their final (semi-supervised) stage, seeded from their own weights."""
    stages = method.stages()
    for stage in stages[1:]:
        method.start_stage(stage, {k: v.clone() for k, v in method.state_dict().items()})
    return 2000


CASES = [(name, dims) for name in list_methods() for dims in method_class(name).supported_dims]


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_one_step_updates_networks_and_never_teachers(name: str, dims: int) -> None:
    method = _method(name, dims)
    step = _last_stage_step(method)
    method.train()
    modules = method.optimised_modules()
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in modules.items()}
    teachers = method.ema_teachers()
    teacher_before = [[p.detach().clone() for p in t.parameters()] for t in teachers]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in modules.values()]
    losses = method.training_step(_batch(dims, 3, method.needs_strong_view), step)
    assert losses, f"{name} returned no loss terms"
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for teacher in teachers:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters()), f"{name}: teacher got grad"
    for optimizer in optimizers:
        optimizer.step()
    method.after_step(step)
    for key, module in modules.items():
        changed = any(not torch.equal(a, b) for a, b in zip(before[key], module.parameters()))
        assert changed, f"{name}: optimised network {key!r} did not change after one step"
    for teacher, snapshot in zip(teachers, teacher_before):
        moved = any(not torch.equal(a, b) for a, b in zip(snapshot, teacher.parameters()))
        assert moved, f"{name}: EMA teacher did not follow the student"


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}d" for n, d in CASES])
def test_predictor_gives_logits_of_the_input_shape(name: str, dims: int) -> None:
    method = _method(name, dims)
    predictor = method.predictor().eval()
    with torch.no_grad():
        logits = predictor(torch.randn(1, 1, *SHAPES[dims]))
    assert logits.shape == (1, 3, *SHAPES[dims])


@pytest.mark.parametrize("name", [n for n in list_methods() if method_class(n).uses_unlabeled])
def test_unlabeled_loss_reaches_the_trained_networks(name: str) -> None:
    """Zeroing the labeled batch's supervision must still leave gradient from the unlabeled images."""
    cls = method_class(name)
    dims = cls.supported_dims[0]
    # Untrained networks are never 95 % confident: open confidence thresholds so pseudo-labels exist at all.
    thresholds = {f.name: 0.0 for f in dataclasses.fields(cls.Options) if f.name == "threshold"}
    method = _method(name, dims, **thresholds)
    step = _last_stage_step(method)
    method.train()
    batch = _batch(dims, 3, method.needs_strong_view)
    losses = method.training_step(batch, step)
    unsupervised = [v for k, v in losses.items() if not k.startswith("supervised")]
    assert unsupervised, f"{name} has no unsupervised loss term"
    sum(unsupervised).backward()
    grads = [p.grad for m in method.optimised_modules().values() for p in m.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), f"{name}: unsupervised loss sends no gradient"


REPO = Path(__file__).resolve().parents[2]
WITHOUT_ACDC_CONFIG: dict[str, str] = {}
"""Methods that cannot train on ACDC, each with the reason (none today)."""


@pytest.mark.parametrize("name", list_methods())
def test_every_method_has_an_acdc_config_and_a_page_listing_its_options(name: str) -> None:
    if name not in WITHOUT_ACDC_CONFIG:
        config = load_config(REPO / f"configs/acdc/{name}.yaml")
        assert config.method_name == name
    page = REPO / f"docs/methods/{name}.md"
    assert page.is_file(), f"{page}: every method has a page (docs/how-to/add-a-method.md)"
    block = page_options_block(page.read_text())
    assert block == options_section(name), (
        f"{page}: option table stale; run `python benchmarks/method_pages.py --options`"
    )
    for option in dataclasses.fields(method_class(name).Options):
        assert f"| `{option.name}` |" in block


def test_no_method_imports_from_another_method() -> None:
    """Shared building blocks live in modules of their own (pseudo_labels.py, options.py), not in a sibling method."""
    folder = REPO / "medsemi/methods"
    methods = {path.stem for path in folder.glob("*.py")} & set(list_methods())
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        siblings = {module.rsplit(".", 1)[-1] for module in imported if module.startswith("medsemi.methods.")}
        allowed = {"cps"} if path.stem == "cross_teaching" else set()  # cross teaching is CPS with a transformer
        assert not (siblings & methods) - allowed, f"{path.name} imports from {sorted(siblings & methods)}"
