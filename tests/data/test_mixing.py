"""Copy-paste mixing: box geometry in 2D and 3D, complementary regions, exact pixel provenance."""

from __future__ import annotations

import pytest
import torch

from medsemi.data.mixing import Source, box_mask, copy_paste


def _box_extent(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, side) of the zero box along each spatial axis of one sample's mask."""
    inside = mask == 0
    extent = []
    for axis in range(inside.dim()):
        others = [d for d in range(inside.dim()) if d != axis]
        hit = inside.any(dim=others) if others else inside
        where = hit.nonzero().flatten()
        extent.append((int(where[0]), int(where[-1]) - int(where[0]) + 1))
    return extent


@pytest.mark.parametrize(
    ("shape", "sides"),
    [((256, 256), (170, 170)), ((112, 112, 80), (74, 74, 53)), ((96, 96, 96), (64, 64, 64))],
    ids=["acdc-2d", "la-3d", "pancreas-3d"],
)
def test_box_has_the_papers_size_and_lies_inside_the_image(shape: tuple[int, ...], sides: tuple[int, ...]) -> None:
    mask = box_mask(3, shape, 2 / 3)
    assert mask.shape == (3, *shape) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for sample in mask:
        extent = _box_extent(sample)
        assert tuple(side for _, side in extent) == sides
        assert all(0 <= start < size - side for (start, side), size in zip(extent, shape, strict=True))
        assert int((sample == 0).sum()) == torch.tensor(sides).prod()  # one solid box, nothing else


def test_one_box_is_shared_by_the_batch_unless_per_sample() -> None:
    shared = box_mask(6, (40, 40), 0.5)
    assert all(torch.equal(shared[0], m) for m in shared)
    generator = torch.Generator().manual_seed(0)
    separate = box_mask(6, (40, 40), 0.5, per_sample=True, generator=generator)
    assert len({tuple(map(tuple, _box_extent(m))) for m in separate}) > 1
    assert all(int((m == 0).sum()) == 20 * 20 for m in separate)


def test_box_start_is_uniform_over_the_official_range() -> None:
    """np.random.randint(0, size - side): every start in [0, size - side) occurs, size - side never does."""
    generator = torch.Generator().manual_seed(1)
    masks = box_mask(300, (12, 9), 0.5, per_sample=True, generator=generator)
    starts = {tuple(start for start, _ in _box_extent(m)) for m in masks}
    assert {s[0] for s in starts} == set(range(6)) and {s[1] for s in starts} == set(range(5))


def test_per_sample_ratios_and_bad_ratios() -> None:
    masks = box_mask(2, (30, 30), torch.tensor([0.2, 0.8]), per_sample=True)
    assert [int((m == 0).sum()) for m in masks] == [36, 576]
    with pytest.raises(ValueError, match="ratio"):
        box_mask(2, (30, 30), 1.5)
    with pytest.raises(ValueError, match="ratios"):
        box_mask(3, (30, 30), torch.tensor([0.2, 0.8]), per_sample=True)


def test_same_generator_seed_same_mask() -> None:
    first = box_mask(2, (20, 20, 10), 2 / 3, generator=torch.Generator().manual_seed(5))
    second = box_mask(2, (20, 20, 10), 2 / 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)], ids=["2d", "3d"])
def test_copy_paste_takes_every_pixel_from_exactly_one_source(shape: tuple[int, ...]) -> None:
    base = Source(torch.randn(2, 3, *shape), torch.randint(0, 4, (2, *shape)), torch.rand(2, *shape))
    patch = Source(torch.randn(2, 3, *shape), torch.randint(4, 8, (2, *shape)), torch.rand(2, *shape))
    mask = box_mask(2, shape, 2 / 3)
    mixed = copy_paste(base, patch, mask)
    outside, inside = mask.bool(), ~mask.bool()
    assert torch.equal(mixed.base_region, mask)
    assert torch.equal(mixed.base_region + mixed.patch_region, torch.ones_like(mask))
    assert mixed.target.dtype == torch.int64
    assert torch.equal(mixed.target[outside], base.target[outside])
    assert torch.equal(mixed.target[inside], patch.target[inside])
    assert torch.equal(mixed.confidence[inside], patch.confidence[inside])
    channels_outside = outside.unsqueeze(1).expand_as(base.image)
    assert torch.equal(mixed.image[channels_outside], base.image[channels_outside])
    assert torch.equal(mixed.image[~channels_outside], patch.image[~channels_outside])


def test_targets_are_mixed_only_when_both_sources_have_them() -> None:
    mask = box_mask(1, (8, 8), 0.5)
    mixed = copy_paste(Source(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8)), Source(torch.ones(1, 1, 8, 8)), mask)
    assert mixed.target is None and mixed.confidence is None
    assert mixed.image.sum() == 16
