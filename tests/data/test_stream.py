"""The batch stream: pure function of (seed, step, rank), disjoint shards, aligned labels, optional views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsemi.data.augment import resize
from medsemi.data.cases import Case, DataError
from medsemi.data.stream import BatchStream
from medsemi.methods.base import Batch

CPU = torch.device("cpu")


def case(i: int, shape: tuple[int, ...], labeled: bool = True, channels: int = 1) -> Case:
    """Random image; the label is the image thresholded, so alignment is checkable after augmentation."""
    image = np.random.default_rng(i).uniform(0.01, 1.0, (channels, *shape)).astype(np.float32)
    label = (image[0] > 0.5).astype(np.uint8) if labeled else None
    return Case(f"case{i}", f"patient{i}", image, label, (1.0,) * len(shape))


def slices(n: int, labeled: bool = True, start: int = 0) -> list[Case]:
    return [case(start + i, (20 + i % 3, 18), labeled) for i in range(n)]


def stream(labeled: list[Case], unlabeled: list[Case], **overrides: object) -> BatchStream:
    options: dict = dict(
        spatial_dims=2, patch_size=(16, 16), batch_labeled=3, batch_unlabeled=4, augment="acdc",
        strong_view=False, seed=7, device=CPU,
    )  # fmt: skip
    options.update(overrides)
    return BatchStream(labeled, unlabeled, **options)


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.image_l, b.image_l) and torch.equal(a.label_l, b.label_l)
    assert torch.equal(a.image_u, b.image_u)
    assert (a.image_u_strong is None) == (b.image_u_strong is None)
    if a.image_u_strong is not None and b.image_u_strong is not None:
        assert torch.equal(a.image_u_strong, b.image_u_strong)


def test_batch_is_a_pure_function_of_seed_and_step() -> None:
    labeled, unlabeled = slices(7), slices(11, labeled=False, start=100)
    first = stream(labeled, unlabeled, strong_view=True)
    restarted = stream(labeled, unlabeled, strong_view=True)
    for step in (5, 0, 5, 123):
        assert_same(first.batch(step), restarted.batch(step))
    assert not torch.equal(first.batch(1).image_u, first.batch(2).image_u)
    assert not torch.equal(first.batch(1).image_u, stream(labeled, unlabeled, seed=8).batch(1).image_u)


def test_batch_shapes_types_and_views() -> None:
    labeled, unlabeled = slices(5), slices(6, labeled=False, start=50)
    batch = stream(labeled, unlabeled, strong_view=True).batch(0)
    assert batch.image_l.shape == (3, 1, 16, 16) and batch.label_l.shape == (3, 16, 16)
    assert batch.label_l.dtype == torch.int64 and batch.image_l.dtype == torch.float32
    assert batch.image_u.shape == (4, 1, 16, 16)
    assert batch.image_u_strong is not None and batch.image_u_strong.shape == batch.image_u.shape
    assert not torch.equal(batch.image_u_strong, batch.image_u)
    assert stream(labeled, unlabeled).batch(0).image_u_strong is None


@pytest.mark.parametrize(("unlabeled", "batch_unlabeled"), [([], 4), (slices(3, labeled=False, start=9), 0)])
def test_supervised_batches_have_an_empty_unlabeled_part(unlabeled: list[Case], batch_unlabeled: int) -> None:
    batch = stream(slices(4), unlabeled, batch_unlabeled=batch_unlabeled, strong_view=True).batch(3)
    assert batch.image_u.shape == (0, 1, 16, 16)
    assert batch.image_u_strong is not None and batch.image_u_strong.shape == (0, 1, 16, 16)


def test_labeled_epochs_cover_every_sample_once() -> None:
    labeled = slices(6)
    indices = stream(labeled, [], batch_labeled=3)
    epoch = torch.cat([indices.sample_indices(step)[0] for step in (0, 1)])
    assert sorted(epoch.tolist()) == list(range(6))
    next_epoch = torch.cat([indices.sample_indices(step)[0] for step in (2, 3)])
    assert sorted(next_epoch.tolist()) == list(range(6)) and not torch.equal(epoch, next_epoch)


def test_two_ranks_split_the_global_batch_into_disjoint_shards() -> None:
    labeled, unlabeled = slices(12), slices(16, labeled=False, start=30)
    single = stream(labeled, unlabeled, batch_labeled=6, batch_unlabeled=8)
    ranks = [stream(labeled, unlabeled, batch_labeled=3, batch_unlabeled=4, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 1, 2):
        shards = [r.sample_indices(step) for r in ranks]
        for part in (0, 1):
            a, b = shards[0][part], shards[1][part]
            assert not set(a.tolist()) & set(b.tolist())
            assert torch.equal(torch.cat([a, b]), single.sample_indices(step)[part])
    images = [r.batch(0).image_l for r in ranks]
    assert not torch.equal(images[0], images[1])


def test_labeled_and_unlabeled_views_get_independent_augmentation() -> None:
    one = [case(3, (20, 18))]
    same_source = stream(one, [case(3, (20, 18), labeled=False)], batch_labeled=1, batch_unlabeled=1)
    equal = [torch.equal(b.image_l, b.image_u) for b in map(same_source.batch, range(20))]
    assert not all(equal)


@pytest.mark.parametrize("augment", ["acdc", "acdc_head", "crop", "none"])
def test_2d_labels_stay_aligned_with_images(augment: str) -> None:
    labeled = [case(i, (24, 28)) for i in range(4)]
    batch = stream(labeled, [], augment=augment, batch_labeled=8).batch(1)
    assert torch.equal(batch.label_l, (batch.image_l[:, 0] > 0.5).long())


def test_3d_crops_are_padded_augmented_and_aligned() -> None:
    volumes = [case(i, (14 + i, 12, 9)) for i in range(3)]
    unlabeled = [case(20 + i, (13, 15, 10), labeled=False) for i in range(2)]
    batches = stream(volumes, unlabeled, spatial_dims=3, patch_size=(12, 12, 8), augment="la", batch_labeled=2)
    for step in range(3):
        batch = batches.batch(step)
        assert batch.image_l.shape == (2, 1, 12, 12, 8) and batch.image_u.shape == (4, 1, 12, 12, 8)
        assert torch.equal(batch.label_l, (batch.image_l[:, 0] > 0.5).long())


def test_none_resizes_slices_like_the_reference_zoom() -> None:
    labeled = [case(1, (20, 18))]
    batch = stream(labeled, [], augment="none", batch_labeled=1).batch(0)
    image = torch.from_numpy(labeled[0].image)[None]
    assert torch.equal(batch.image_l, resize(image, None, (16, 16))[0])


def test_volumes_feed_a_2d_network_as_slices() -> None:
    volumes = [case(i, (5, 20, 18)) for i in range(2)]
    slices_stream = stream(volumes, [], batch_labeled=5, augment="none")
    epoch = torch.cat([slices_stream.sample_indices(step)[0] for step in (0, 1)])
    assert sorted(epoch.tolist()) == list(range(10))


def test_rgb_images_get_a_colour_strong_view() -> None:
    images = [case(i, (20, 20), channels=3) for i in range(3)]
    batch = stream(images, images, strong_view=True, augment="crop").batch(0)
    assert batch.image_u_strong is not None and batch.image_u_strong.shape == (4, 3, 16, 16)


def test_bad_settings_are_reported() -> None:
    with pytest.raises(DataError, match="no label"):
        stream([case(1, (20, 18), labeled=False)], [])
    with pytest.raises(DataError, match="augment"):
        stream(slices(2), [], augment="randaugment")
    with pytest.raises(DataError, match="2D recipe"):
        stream([case(1, (8, 8, 8))], [], spatial_dims=3, patch_size=(8, 8, 8))
    with pytest.raises(DataError, match="patch_size"):
        stream(slices(2), [], patch_size=(16, 16, 16))
