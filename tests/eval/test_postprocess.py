import numpy as np
import pytest
import torch
from scipy import ndimage

from medsemi.eval.postprocess import largest_component_torch, largest_connected_component


def test_keeps_the_bigger_blob_of_each_class():
    labels = np.zeros((10, 12), np.uint8)
    labels[1:3, 1:3] = 1  # small blob of class 1
    labels[5:9, 5:9] = 1  # big blob of class 1
    labels[0, 10:12] = 2  # lone class-2 blob stays
    result = largest_connected_component(labels, num_classes=3)
    expected = labels.copy()
    expected[1:3, 1:3] = 0
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == labels.dtype


def test_connectivity_full_by_default_faces_on_request():
    labels = np.zeros((6, 6), np.int64)
    labels[0:2, 0:2] = 1
    labels[2, 2] = 1  # touches the first blob by a corner only
    labels[4:6, 3:6] = 1  # the largest under face connectivity (6 > 4)
    full = largest_connected_component(labels, 2)
    faces = largest_connected_component(labels, 2, connectivity=1)
    assert full.sum() == 6 and full[4:6, 3:6].all()
    labels[4:6, 3:6] = 0
    labels[5, 5] = 1
    assert largest_connected_component(labels, 2).sum() == 5  # corner-joined blob of 5 wins
    assert largest_connected_component(labels, 2, connectivity=1).sum() == 4
    assert faces.sum() == 6


def test_per_slice_mode_keeps_the_largest_of_every_slice():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[0, 0:2, 0:2] = 1  # the only blob of slice 0
    labels[1, 4:8, 4:8] = 1  # the largest blob of the volume
    labels[1, 0, 5:8] = 1  # a small second blob in slice 1
    volume = largest_connected_component(labels, 2)
    per_slice = largest_connected_component(labels, 2, per_slice=True)
    assert volume.sum() == 16 and volume[1, 4:8, 4:8].all()
    np.testing.assert_array_equal(per_slice[0], labels[0])
    assert per_slice[1].sum() == 16 and per_slice[1, 0].sum() == 0


def _random_maps(shape: tuple[int, ...], seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, (0,) + (1.0,) * (len(shape) - 1))
    return np.clip(np.round(smooth * 3), 0, 3).astype(np.int64)


@pytest.mark.parametrize("shape", [(4, 24, 20), (2, 8, 10, 12)])
@pytest.mark.parametrize("connectivity", [None, 1])
def test_torch_propagation_equals_scipy(shape, connectivity):
    labels = _random_maps(shape, seed=len(shape))
    expected = np.stack([largest_connected_component(s, 4, connectivity=connectivity) for s in labels])
    for backend in ("propagate", "scipy", "auto"):
        result = largest_component_torch(torch.from_numpy(labels), 4, connectivity, backend=backend)
        np.testing.assert_array_equal(result.numpy(), expected)
    assert not np.array_equal(expected, labels)  # the case really removes components


def test_torch_handles_a_long_snake_and_ties_like_scipy():
    snake = np.zeros((1, 15, 15), np.int64)
    snake[0, ::2, :] = 1
    snake[0, 1::4, -1] = 1
    snake[0, 3::4, 0] = 1
    snake[0, 14, 0:3] = 0
    snake[0, 14, 0] = 1  # a separate one-voxel tail
    kept = largest_component_torch(torch.from_numpy(snake), 2, backend="propagate").numpy()
    assert kept.sum() == snake.sum() - 1 and kept[0, 14, 0] == 0
    ties = np.zeros((1, 6, 9), np.int64)
    ties[0, 3:5, 0:2] = 1
    ties[0, 0:2, 6:8] = 1  # same size, first in raster order: scipy keeps this one
    kept = largest_component_torch(torch.from_numpy(ties), 2, backend="propagate").numpy()
    np.testing.assert_array_equal(kept[0], largest_connected_component(ties[0], 2))
    assert kept[0, 0:2, 6:8].all()
    with pytest.raises(ValueError):
        largest_component_torch(torch.from_numpy(ties), 2, connectivity=3, backend="propagate")
