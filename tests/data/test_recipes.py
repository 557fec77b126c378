"""Augmentation recipes: the reference names reproduce their batches bit for bit, mapping recipes compose."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medsemi.config import ConfigError, load_config
from medsemi.data.augment import recipe
from medsemi.data.cases import Case
from medsemi.data.splits import load_split
from medsemi.data.stream import BatchStream

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]

PINNED = {
    ("acdc", 2, False): "1fa282ae81cf0bfeedfb3c421b1e1d734b6e7c299932e1ff288af89e89b7c504",
    ("acdc", 2, True): "8bb9dcaf381ea483e591041faf5e0471595150aa04cbdb36956e4d12088281c4",
    ("acdc_head", 2, False): "81cdee9faa3692a4dd92bc2a0bad786987e7a7e24f573a811a28edc4e289b305",
    ("crop", 2, False): "7a9737360ef743f44d78daaccc69bef3d9c34bfe118cbf9802da9921d77505d4",
    ("none", 2, False): "8378c3f2066cdbb65b110fa57c3ce0cf46af35ed6637b1dad42a5c29476b87b0",
    ("la", 2, False): "7a9737360ef743f44d78daaccc69bef3d9c34bfe118cbf9802da9921d77505d4",
    ("la", 3, False): "98d091907c8bf73882beb0ac79fa894a316060db6c78157f7e9156f3e89251df",
    ("none", 3, False): "54e38d56e04ba8163f3cbfb577ed98d8738bc74bf5ba192a4f1c9e1df28c2d3e",
}
"""sha256 of the batches of steps 0, 1 and 7 of each reference recipe, computed with the code before
composable recipes existed (commit e7018e5 plus the working tree of issue 17): they must never change."""


def _cases(shapes: list[tuple[int, ...]], labeled: bool, start: int) -> list[Case]:
    cases = []
    for i, shape in enumerate(shapes):
        image = np.random.default_rng(start + i).uniform(0.01, 1.0, (1, *shape)).astype(np.float32)
        label = (image[0] * 3.99).astype(np.uint8) if labeled else None
        cases.append(Case(f"case{start + i}", f"patient{(start + i) // 2}", image, label, (1.0,) * len(shape)))
    return cases


def _batch_digest(augment: str, dims: int, strong: bool) -> str:
    if dims == 2:
        labeled = _cases([(20 + i % 3, 18 + i % 2) for i in range(7)], True, 0)
        unlabeled = _cases([(22, 17 + i % 4) for i in range(9)], False, 100)
        patch: tuple[int, ...] = (16, 16)
    else:
        labeled = _cases([(14 + i, 12, 9) for i in range(3)], True, 0)
        unlabeled = _cases([(13, 15, 10) for _ in range(2)], False, 100)
        patch = (12, 12, 8)
    stream = BatchStream(
        labeled, unlabeled, spatial_dims=dims, patch_size=patch, batch_labeled=3, batch_unlabeled=4,
        augment=augment, strong_view=strong, seed=11, device=CPU,
    )  # fmt: skip
    digest = hashlib.sha256()
    for step in (0, 1, 7):
        batch = stream.batch(step)
        parts = [batch.image_l, batch.label_l, batch.image_u]
        parts += [batch.image_u_strong] if batch.image_u_strong is not None else []
        for tensor in parts:
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


CASES = [("acdc", 2, False), ("acdc", 2, True), ("acdc_head", 2, False), ("crop", 2, False), ("none", 2, False),
         ("la", 2, False), ("la", 3, False), ("none", 3, False)]  # fmt: skip


@pytest.mark.parametrize(("augment", "dims", "strong"), CASES)
def test_reference_recipes_give_the_same_batches_as_before(augment: str, dims: int, strong: bool) -> None:
    assert _batch_digest(augment, dims, strong) == PINNED[(augment, dims, strong)]


ACDC_PINNED = "67ee1ab338c1c0e35d3690b56d68ec4b48f72d3eb2e07aed037d2a89c3c3b273"
"""The same, for steps 0, 1 and 1000 of configs/acdc/mean_teacher.yaml on the real ACDC slices (limit 80)."""


@pytest.mark.real_data
def test_the_acdc_protocol_batches_are_unchanged(acdc_root: Path) -> None:
    config = load_config(
        REPO / "configs/acdc/mean_teacher.yaml", [f"data.root={acdc_root}", "data.options={limit: 80}"]
    )
    _, split = load_split(config.data)
    stream = BatchStream(
        split.labeled, split.unlabeled, spatial_dims=2, patch_size=tuple(config.data.patch_size),
        batch_labeled=config.data.batch_labeled, batch_unlabeled=config.data.batch_unlabeled,
        augment=config.data.augment, strong_view=False, seed=config.seed, device=CPU,
    )  # fmt: skip
    digest = hashlib.sha256()
    for step in (0, 1, 1000):
        batch = stream.batch(step)
        for tensor in (batch.image_l, batch.label_l, batch.image_u):
            digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == ACDC_PINNED


def _layers(n: int, size: int = 24) -> list[Case]:
    """Horizontal layers with a known up: class k from row 6k down (OCT-like), image = class / 3."""
    rows = np.arange(size)[:, None].repeat(size, 1)
    label = np.minimum(rows // 6, 3).astype(np.uint8)
    image = (label / 3.0).astype(np.float32)[None]
    return [Case(f"scan{i}", f"subject{i // 2}", image.copy(), label.copy(), None) for i in range(n)]


def _stream(augment: object, cases: list[Case], dims: int = 2, patch: tuple[int, ...] = (24, 24)) -> BatchStream:
    return BatchStream(
        cases, [], spatial_dims=dims, patch_size=patch, batch_labeled=8, batch_unlabeled=0, augment=augment,
        strong_view=False, seed=3, device=CPU,
    )  # fmt: skip


def _upright(label: torch.Tensor) -> bool:
    """Each layer's mean row lies below the one above it: the scan is not upside down."""
    rows = torch.arange(label.shape[0], dtype=torch.float64)[:, None].expand_as(label)
    means = [rows[label == k].mean() for k in (1, 2, 3) if (label == k).any()]
    return all(a < b for a, b in zip(means, means[1:], strict=False))


def test_a_recipe_without_vertical_flips_keeps_the_up_direction() -> None:
    upright = {"flip": [1], "rotate": 10, "zoom": [0.9, 1.1], "gamma": [0.8, 1.25], "noise": 0.05}
    stream = _stream(upright, _layers(4))
    labels = torch.cat([stream.batch(step).label_l for step in range(20)])
    assert all(_upright(label) for label in labels)
    assert any(not torch.equal(label, labels[0]) for label in labels)  # it did augment
    flipped = torch.cat([_stream("acdc", _layers(4)).batch(step).label_l for step in range(20)])
    assert not all(_upright(label) for label in flipped)  # acdc turns scans upside down


def test_composed_geometry_moves_image_and_label_together_and_intensity_only_the_image() -> None:
    geometry = _stream({"rot90": True, "flip": [0, 1], "rotate": 15, "zoom": [0.8, 1.2], "p": 1.0}, _layers(4))
    for step in range(5):
        batch = geometry.batch(step)
        assert torch.equal(torch.round(batch.image_l[:, 0] * 3).long(), batch.label_l)
    intensity = _stream({"brightness": 0.3, "contrast": 0.3, "gamma": [0.7, 1.5], "noise": 0.1, "p": 1.0}, _layers(4))
    batch = intensity.batch(0)
    assert torch.equal(batch.label_l, torch.from_numpy(_layers(1)[0].label).long().expand_as(batch.label_l))
    assert not torch.allclose(batch.image_l[:, 0] * 3, batch.label_l.float())


def test_a_composed_recipe_crops_when_asked_and_in_3d() -> None:
    large = [Case("big", "big", np.random.default_rng(0).random((1, 40, 36)).astype(np.float32), None, None)]
    large[0].label = (large[0].image[0] > 0.5).astype(np.uint8)
    batch = _stream({"crop": True, "flip": [1]}, large, patch=(16, 16)).batch(0)
    assert batch.image_l.shape == (8, 1, 16, 16) and torch.equal(batch.label_l, (batch.image_l[:, 0] > 0.5).long())
    volume = np.random.default_rng(1).random((1, 14, 12, 10)).astype(np.float32)
    cases = [Case("v", "v", volume, (volume[0] > 0.5).astype(np.uint8), (1.0, 1.0, 1.0))]
    batch = _stream({"rot90": True, "flip": [2], "noise": 0.05}, cases, dims=3, patch=(12, 12, 8)).batch(0)
    assert batch.image_l.shape == (8, 1, 12, 12, 8) and batch.label_l.shape == (8, 12, 12, 8)


def test_what_inference_reads_off_a_recipe() -> None:
    assert recipe("acdc", 2).mirrored_axes() == (0, 1) and not recipe("acdc", 2).crops(2)
    assert recipe("crop", 2).crops(2) and recipe("la", 3).mirrored_axes() == (0, 1)
    assert recipe("none", 2).mirrored_axes() == () and recipe("none", 3).crops(3) and not recipe("none", 2).crops(2)
    assert recipe({"flip": [1], "rotate": 10}, 2).mirrored_axes() == (1,)
    assert recipe({"rot90": True, "flip": [1]}, 2).mirrored_axes() == (0, 1)
    assert recipe({"rot90": True}, 2).mirrored_axes() == ()
    assert recipe({"crop": True}, 2).crops(2)


@pytest.mark.parametrize(
    ("spec", "dims", "says"),
    [
        ("flip", 2, "data.augment must be one of acdc, acdc_head, la, crop, none or a mapping"),
        ("acdc", 3, "is a 2D recipe"),
        ({"blur": 1.0}, 2, "unknown data.augment component(s) ['blur']"),
        ({"flip": [2]}, 2, "data.augment.flip must be a list of distinct spatial axes in 0..1"),
        ({"flip": [0, 0]}, 2, "data.augment.flip must be a list of distinct"),
        ({"rotate": 200}, 2, "data.augment.rotate must be a largest angle in degrees"),
        ({"zoom": [1.2, 0.8]}, 2, "data.augment.zoom must be [low, high] with 0 < low <= high"),
        ({"gamma": 1.5}, 2, "data.augment.gamma must be [low, high]"),
        ({"p": 2}, 2, "data.augment.p must be a probability"),
        ({"crop": "yes"}, 2, "data.augment.crop must be true or false"),
        ({"crop": False}, 3, "data.augment.crop must be true (or left out) for 3D data"),
        ({"rotate": 10}, 3, "rotate and zoom are 2D components"),
    ],
)
def test_bad_recipes_are_refused_at_config_load_naming_the_component(spec: object, dims: int, says: str) -> None:
    patch = "[16,16]" if dims == 2 else "[16,16,8]"
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, [f"data.patch_size={patch}", f"data.augment={json.dumps(spec)}"])
    assert load_config(None, ["data.augment={flip: [1], rotate: 10}"]).data.augment == {"flip": [1], "rotate": 10}
