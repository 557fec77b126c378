"""Batched augmentation: alignment, parameter distributions, agreement with the scipy reference path."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsemi.data.augment import (
    IDENTITY,
    ROT_FLIP,
    ROTATE,
    AcdcParams,
    StrongViewSpec,
    acdc_augment,
    apply_acdc,
    crop_padding,
    draw_acdc_params,
    la_augment,
    random_crop,
    reference_acdc_sample,
    resize,
    rot_flip,
    rotate,
    strong_view,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Values in (0, 1] with blobs, so thresholding gives a label with structure."""
    noise = np.random.default_rng(seed).random((height, width))
    image = ndimage.gaussian_filter(noise, 3)
    image = (image - image.min()) / (image.max() - image.min())
    return (0.01 + 0.99 * image).astype(np.float32)


def phantom(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A cardiac-like slice: rings with classes 1..3 on a textured background."""
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot((yy - height * 0.45) / (height * 0.35), (xx - width * 0.55) / (width * 0.3))
    label = np.select([radius < 0.45, radius < 0.7, radius < 0.95], [3, 2, 1], 0).astype(np.uint8)
    image = 0.2 + 0.25 * label + 0.05 * smooth_image(height, width)
    return image.astype(np.float32), label


def batch_of(image: np.ndarray, label: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(image)[None, None].repeat(n, 1, 1, 1)
    return x, torch.from_numpy(label)[None].repeat(n, 1, 1)


@pytest.mark.parametrize(("source", "size"), [((30, 45), (64, 64)), ((70, 50), (64, 32)), ((216, 256), (256, 256))])
def test_nearest_resize_is_scipy_order0_zoom(source: tuple[int, int], size: tuple[int, int]) -> None:
    image = np.random.default_rng(1).random(source).astype(np.float32)
    label = (image * 4).astype(np.uint8)
    x, y = resize(torch.from_numpy(image)[None, None], torch.from_numpy(label)[None], size)
    factors = (size[0] / source[0], size[1] / source[1])
    assert np.array_equal(x[0, 0].numpy(), ndimage.zoom(image, factors, order=0))
    assert np.array_equal(y[0].numpy(), ndimage.zoom(label, factors, order=0))


def test_linear_resize_is_scipy_order1_zoom() -> None:
    image = np.random.default_rng(2).random((30, 45)).astype(np.float32)
    x, _ = resize(torch.from_numpy(image)[None, None], None, (64, 50), mode="linear")
    np.testing.assert_allclose(x[0, 0].numpy(), ndimage.zoom(image, (64 / 30, 50 / 45), order=1), atol=1e-5)


def test_rot_flip_matches_numpy_for_every_k_and_axis() -> None:
    image = np.random.default_rng(3).random((8, 1, 6, 6, 3)).astype(np.float32)
    k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    axis = torch.tensor([0, 0, 0, 0, 1, 1, 1, -1])
    out, labels = rot_flip(torch.from_numpy(image), torch.from_numpy(image[:, 0] > 0.5), k, axis)
    for i in range(8):
        expected = np.rot90(image[i, 0], int(k[i]))
        expected = expected if axis[i] < 0 else np.flip(expected, int(axis[i]))
        assert np.array_equal(out[i, 0].numpy(), expected)
        assert np.array_equal(labels[i].numpy(), expected > 0.5)


def test_augmented_label_stays_the_threshold_of_the_augmented_image() -> None:
    image = smooth_image(40, 40)
    x, y = batch_of(image, (image > 0.5).astype(np.uint8), 64)
    out, labels = acdc_augment(x, y, generator(4))
    assert torch.equal(labels, (out[:, 0] > 0.5).to(labels.dtype))
    changed = (out != x).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 0.95  # ~75% of samples are transformed


def test_every_branch_keeps_image_and_label_aligned_on_non_square_slices() -> None:
    image = smooth_image(36, 48, seed=5)
    x, y = batch_of(image, (image > 0.5).astype(np.uint8), 6)
    params = AcdcParams(
        branch=torch.tensor([ROT_FLIP, ROT_FLIP, ROTATE, ROTATE, ROTATE, IDENTITY]),
        k=torch.tensor([1, 3, 0, 0, 0, 0]),
        flip_axis=torch.tensor([0, 1, -1, -1, -1, -1]),
        angle=torch.tensor([0.0, 0.0, -20.0, 7.0, 19.0, 0.0]),
    )
    out, labels = apply_acdc(x, y, params)
    assert out.shape == x.shape
    assert torch.equal(labels, (out[:, 0] > 0.5).to(labels.dtype))
    assert torch.equal(out[5], x[5])


def test_acdc_branch_probabilities_and_angle_range() -> None:
    published = draw_acdc_params(20000, generator(6))
    shares = torch.bincount(published.branch, minlength=3).float() / 20000
    assert shares[ROT_FLIP] == pytest.approx(0.5, abs=0.02)
    assert shares[ROTATE] == pytest.approx(0.25, abs=0.02)
    assert shares[IDENTITY] == pytest.approx(0.25, abs=0.02)
    angles = published.angle[published.branch == ROTATE]
    assert torch.equal(angles, angles.round())  # np.random.randint(-20, 20): whole degrees
    assert angles.min() == -20 and angles.max() == 19
    turns = published.k[published.branch == ROT_FLIP]
    assert torch.bincount(turns, minlength=4).min() > 0.2 * turns.numel()
    assert (published.flip_axis[published.branch == ROT_FLIP] >= 0).all()
    head = draw_acdc_params(20000, generator(7), published_era=False)
    assert (head.branch != IDENTITY).all()
    assert (head.branch == ROT_FLIP).float().mean() == pytest.approx(0.5, abs=0.02)


def bar_orientation(image: np.ndarray) -> float:
    """Principal-axis angle of the foreground in degrees, x right and y up."""
    ys, xs = np.nonzero(image > 0.5)
    d = np.linalg.eigh(np.cov(np.stack([xs - xs.mean(), ys.mean() - ys])))[1][:, -1]
    return (math.degrees(math.atan2(d[1], d[0])) + 90) % 180 - 90


@pytest.mark.parametrize("angle", [-20, -9, 4, 19])
def test_rotation_turns_a_bar_by_the_drawn_angle_like_scipy(angle: int) -> None:
    bar = np.zeros((41, 61), np.float32)
    bar[18:23, 5:56] = 1
    out, _ = rotate(torch.from_numpy(bar)[None, None], None, torch.tensor([float(angle)]))
    assert bar_orientation(out[0, 0].numpy()) == pytest.approx(angle, abs=0.5)
    assert bar_orientation(ndimage.rotate(bar, angle, order=0, reshape=False)) == pytest.approx(angle, abs=0.5)


def test_rotation_equals_scipy_rotate_pixel_for_pixel() -> None:
    image = np.random.default_rng(8).random((37, 52)).astype(np.float32) + 1
    label = (image * 3).astype(np.uint8)
    angles = [-20, -13, 5, 17]
    x, y = batch_of(image, label, len(angles))
    out, labels = rotate(x, y, torch.tensor(angles, dtype=torch.float32))
    for i, angle in enumerate(angles):
        reference = ndimage.rotate(image, angle, order=0, reshape=False)
        assert (out[i, 0].numpy() == reference).mean() > 0.999
        assert (labels[i].numpy() == ndimage.rotate(label, angle, order=0, reshape=False)).mean() > 0.999


def test_nearest_augmentation_only_moves_existing_values() -> None:
    image, label = phantom(30, 40)
    label[label == 2] = 0  # classes {0, 1, 3}: nothing may invent a 2
    x, y = batch_of(image, label, 32)
    out, labels = acdc_augment(x, y, generator(9))
    assert set(labels.unique().tolist()) <= {0, 1, 3}
    assert set(out.unique().tolist()) <= set(np.unique(image).tolist()) | {0.0}


def mirrored_draws(seed: int) -> AcdcParams:
    """The parameters `reference_acdc_sample` will draw from default_rng(seed), as (1,) tensors."""
    rng = np.random.default_rng(seed)
    branch, k, axis, angle = IDENTITY, 0, -1, 0.0
    if rng.random() > 0.5:
        branch, k, axis = ROT_FLIP, int(rng.integers(0, 4)), int(rng.integers(0, 2))
    elif rng.random() > 0.5:
        branch, angle = ROTATE, float(rng.integers(-20, 20))
    return AcdcParams(torch.tensor([branch]), torch.tensor([k]), torch.tensor([axis]), torch.tensor([angle]))


def within_one_pixel(labels: np.ndarray, reference: np.ndarray) -> bool:
    """Every pixel's class occurs in the reference's 3x3 neighbourhood (boundaries moved by <= 1 pixel)."""
    near = [ndimage.maximum_filter(reference == c, size=3) for c in range(int(reference.max()) + 1)]
    return all(near[c][labels == c].all() for c in np.unique(labels))


def test_fast_path_equals_reference_for_the_same_rot_flip_and_close_for_rotation() -> None:
    image, label = phantom(108, 128)  # the aspect and zoom of an ACDC slice, at half size
    x, y = resize(*batch_of(image, label, 1), (128, 128))
    sizes = torch.tensor([[108, 128]])
    seen: set[int] = set()
    for seed in range(40):
        params = mirrored_draws(seed)
        ref_image, ref_label = reference_acdc_sample(image, label, (128, 128), np.random.default_rng(seed))
        out, labels = apply_acdc(x, y, params, sizes)
        if int(params.branch) == ROTATE:  # resize-then-rotate vs rotate-then-resize: boundary pixels only
            assert (labels[0].numpy() == ref_label).mean() > 0.99
            assert within_one_pixel(labels[0].numpy(), ref_label)
        else:
            assert np.array_equal(out[0, 0].numpy(), ref_image)
            assert np.array_equal(labels[0].numpy(), ref_label)
        seen.add(int(params.branch) * 4 + int(params.k))
    assert {ROT_FLIP * 4 + k for k in range(4)} | {IDENTITY * 4, ROTATE * 4} <= seen


def test_fast_path_matches_reference_in_distribution() -> None:
    image, label = phantom(40, 52)
    n = 300
    rng = np.random.default_rng(10)
    reference = [reference_acdc_sample(image, label, (48, 48), rng) for _ in range(n)]
    ref_images = np.stack([r[0] for r in reference])
    ref_labels = np.stack([r[1] for r in reference])
    x, y = resize(*batch_of(image, label, n), (48, 48))
    out, labels = acdc_augment(x, y, generator(11), source_sizes=torch.tensor([[40, 52]] * n))
    for cls in range(4):
        assert (labels == cls).float().mean().item() == pytest.approx((ref_labels == cls).mean(), abs=0.01)
    mean_map, ref_mean_map = out[:, 0].mean(0).numpy(), ref_images.mean(0)
    assert np.abs(mean_map - ref_mean_map).mean() < 0.02
    assert np.corrcoef(mean_map.ravel(), ref_mean_map.ravel())[0, 1] > 0.98


def test_crop_padding_follows_ua_mt() -> None:
    assert crop_padding((200, 150, 88), (112, 112, 80)) == [0, 0, 0]
    assert crop_padding((100, 113, 88), (112, 112, 80)) == [9, 2, 0]  # any axis <= patch pads every axis
    assert crop_padding((112, 150, 80), (112, 112, 80)) == [3, 0, 3]


def test_random_crop_pads_small_volumes_and_stays_in_bounds() -> None:
    patch = (16, 16, 8)
    volume = torch.arange(1, 10 * 30 * 8 + 1, dtype=torch.float32).reshape(1, 10, 30, 8)  # value = position
    label = (volume[0] % 7 == 0).to(torch.uint8)
    padded = F.pad(volume, [3, 3, 0, 0, 6, 6])[0]
    assert list(padded.shape) == [22, 30, 14]
    crops, labels = random_crop([volume] * 60, [label] * 60, patch, generator(12))
    assert crops.shape == (60, 1, *patch) and labels.shape == (60, *patch)
    starts = []
    for crop, crop_label in zip(crops, labels, strict=True):
        inside = torch.nonzero(crop[0])[0]
        source = (padded == crop[0][tuple(inside)]).nonzero()[0]
        start = (source - inside).tolist()
        window = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
        assert torch.equal(crop[0], padded[window])
        assert torch.equal(crop_label, ((crop[0] % 7 == 0) & (crop[0] > 0)).to(torch.uint8))
        starts.append(start)
    starts_t = torch.tensor(starts)
    assert (starts_t.max(0).values < torch.tensor([22 - 16, 30 - 16, 14 - 8])).all()  # randint's open end
    assert (starts_t.min(0).values == 0).all()


def test_la_augment_keeps_alignment_and_non_square_shapes() -> None:
    volume = torch.rand(16, 1, 12, 12, 6)
    images, labels = la_augment(volume, (volume[:, 0] > 0.5).long(), generator(13))
    assert torch.equal(labels, (images[:, 0] > 0.5).long())
    assert not torch.equal(images, volume)
    flat = torch.rand(16, 1, 12, 10, 6)
    images, labels = la_augment(flat, (flat[:, 0] > 0.5).long(), generator(14))
    assert images.shape == flat.shape and torch.equal(labels, (images[:, 0] > 0.5).long())


def test_strong_view_keeps_shape_range_and_geometry() -> None:
    image = torch.full((1, 1, 40, 40), 0.2)
    image[..., 20:] = 0.8
    batch = image.repeat(16, 1, 1, 1)
    out = strong_view(batch, generator(15), spec=StrongViewSpec(noise_p=0.0))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0.2 - 1e-6 and out.max() <= 0.8 + 1e-6
    margin = 7  # beyond the blur radius ceil(3 * 2.0)
    left, right = out[..., : 20 - margin], out[..., 20 + margin :]
    assert left.flatten(1).std(1).max() < 1e-5 and right.flatten(1).std(1).max() < 1e-5
    assert (left.flatten(1).mean(1) < right.flatten(1).mean(1)).all()
    assert not torch.allclose(out, batch)


def test_strong_view_is_seeded_and_handles_rgb_and_3d() -> None:
    rgb = torch.rand(6, 3, 24, 24)
    first = strong_view(rgb, generator(16), rgb=True)
    assert torch.equal(first, strong_view(rgb, generator(16), rgb=True))
    assert not torch.equal(first, strong_view(rgb, generator(17), rgb=True))
    assert first.min() >= 0 and first.max() <= 1
    volume = torch.randn(2, 1, 12, 12, 8)
    out = strong_view(volume, generator(18))
    assert out.shape == volume.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="3 channels"):
        strong_view(volume, generator(19), rgb=True)


@pytest.mark.real_data
def test_fast_recipe_matches_the_reference_on_real_acdc_slices(acdc_root: Path) -> None:
    names = (acdc_root / "train_slices.list").read_text().split()[::220]
    slices = []
    for name in names:
        with h5py.File(acdc_root / "data" / "slices" / f"{name}.h5") as f:
            slices.append((f["image"][:].astype(np.float32), f["label"][:].astype(np.uint8)))
    draws, patch = 30, (256, 256)
    rng = np.random.default_rng(20)
    reference = np.stack([reference_acdc_sample(im, lb, patch, rng)[1] for im, lb in slices for _ in range(draws)])
    fast = []
    for i, (im, lb) in enumerate(slices):
        x, y = resize(*batch_of(im, lb, draws), patch)
        sizes = torch.tensor([im.shape] * draws)
        fast.append(acdc_augment(x, y, generator(21 + i), source_sizes=sizes)[1])
    labels = torch.cat(fast).numpy()
    for cls in range(4):
        expected = (reference == cls).mean()
        assert (labels == cls).mean() == pytest.approx(expected, rel=0.01)
    image, label = slices[1]
    for seed in range(12):
        params = mirrored_draws(seed)
        ref_label = reference_acdc_sample(image, label, patch, np.random.default_rng(seed))[1]
        x, y = resize(*batch_of(image, label, 1), patch)
        out = apply_acdc(x, y, params, torch.tensor([image.shape]))[1][0].numpy()
        assert (out == ref_label).mean() > (0.995 if int(params.branch) == ROTATE else 1.0 - 1e-12)
