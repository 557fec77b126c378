import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from medsemi.eval.inference import (
    predict_case,
    predict_slices,
    resize_2d,
    sliding_window,
    tta_flips,
    window_starts,
)


def pointwise_net(dims: int, num_classes: int = 3) -> nn.Module:
    """A 1x1 convolution: each output voxel depends on its input voxel only, so tiling cannot change it."""
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, num_classes, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-4, 4, num_classes).view(num_classes, 1, *([1] * dims)))
        conv.bias.copy_(torch.linspace(1, -1, num_classes))
    return conv.eval()


class PositionNet(nn.Module):
    """Pointwise logits plus a fixed bias that depends on the voxel's place inside the patch."""

    def __init__(self, patch: tuple[int, ...], num_classes: int = 2) -> None:
        super().__init__()
        self.point = pointwise_net(len(patch), num_classes)
        self.bias = nn.Parameter(torch.randn(num_classes, *patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(x) + self.bias


def reference_window_average(net: PositionNet, image: np.ndarray, patch, stride) -> np.ndarray:
    """UA-MT `test_single_case` transcribed for N dims: symmetric zero pad, windows, sum / count, crop."""
    pads = [max(p - n, 0) for n, p in zip(image.shape, patch, strict=True)]
    padded = np.pad(image, [(p // 2, p - p // 2) for p in pads])
    score = np.zeros((2, *padded.shape))
    count = np.zeros(padded.shape)
    counts = [int(np.ceil((n - p) / s)) + 1 for n, p, s in zip(padded.shape, patch, stride, strict=True)]
    for index in itertools.product(*(range(c) for c in counts)):
        starts = [min(s * i, n - p) for s, i, n, p in zip(stride, index, padded.shape, patch, strict=True)]
        box = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
        with torch.no_grad():
            window = torch.from_numpy(padded[box][None, None]).float()
            score[(slice(None), *box)] += torch.softmax(net(window), 1)[0].numpy()
        count[box] += 1
    crop = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, image.shape, strict=True))
    return (score / count)[(slice(None), *crop)]


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(100, 40, 18) == [0, 18, 36, 54, 60]
    assert window_starts(40, 40, 18) == [0]


@pytest.mark.parametrize("shape, patch, stride", [((10, 7), (4, 4), (3, 2)), ((9, 5, 6), (4, 8, 3), (2, 3, 2))])
def test_sliding_window_matches_ua_mt_reference(shape, patch, stride):
    net = PositionNet(patch).eval()
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = reference_window_average(net, image, patch, stride)
    got = sliding_window(net, torch.from_numpy(image)[None], patch, stride, num_classes=2, batch_size=3)
    assert got.shape == (2, *shape)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_sliding_window_of_pointwise_net_equals_single_pass():
    net = pointwise_net(3)
    image = torch.randn(1, 13, 11, 6)
    single = torch.softmax(net(image[None]), 1)[0]
    tiled = sliding_window(net, image, (8, 8, 8), (3, 5, 2))
    torch.testing.assert_close(tiled, single)
    with pytest.raises(ValueError):
        sliding_window(net, image, (8, 8), (3, 5))


def test_nearest_resize_is_scipy_order0_zoom():
    image = torch.randn(2, 1, 37, 29)
    resized = resize_2d(image, (64, 48), "nearest")
    expected = ndimage.zoom(image.numpy(), (1, 1, 64 / 37, 48 / 29), order=0)
    np.testing.assert_array_equal(resized.numpy(), expected)
    assert resize_2d(image, (64, 48), "bilinear").shape == (2, 1, 64, 48)


def test_predict_slices_reproduces_the_papers_pipeline():
    net = pointwise_net(2, num_classes=4)
    volume = np.random.default_rng(1).normal(size=(1, 5, 37, 29)).astype(np.float32)
    probs = predict_slices(net, torch.from_numpy(volume), (64, 48), batch_size=2)
    assert probs.shape == (4, 5, 37, 29)
    torch.testing.assert_close(probs.sum(0), torch.ones(5, 37, 29))
    expected = np.zeros((5, 37, 29), np.int64)
    for index, image in enumerate(volume[0]):
        zoomed = ndimage.zoom(image, (64 / 37, 48 / 29), order=0)
        with torch.no_grad():
            labels = net(torch.from_numpy(zoomed)[None, None]).argmax(1)[0].numpy()
        expected[index] = ndimage.zoom(labels, (37 / 64, 29 / 48), order=0)
    np.testing.assert_array_equal(probs.argmax(0).numpy(), expected)
    bilinear = predict_slices(net, torch.from_numpy(volume), (64, 48), 16, "bilinear", "bilinear")
    assert bilinear.shape == probs.shape and not torch.equal(bilinear, probs)


def test_predict_case_dispatch():
    net2d, net3d = pointwise_net(2), pointwise_net(3)
    volume = torch.randn(1, 4, 12, 10)
    torch.testing.assert_close(predict_case(net2d, volume, 2, (16, 16)), predict_slices(net2d, volume, (16, 16)))
    whole = predict_case(net3d, volume, 3)
    torch.testing.assert_close(whole, torch.softmax(net3d(volume[None]), 1)[0])
    torch.testing.assert_close(predict_case(net3d, volume, 3, (4, 8, 8), (2, 4, 4)), whole)
    with pytest.raises(ValueError):
        predict_case(net3d, volume[:, 0], 3, (8, 8))


def test_tta_flips_are_flipped_back():
    image = torch.randn(2, 5, 6, 7)
    outputs = list(tta_flips(lambda x: x * torch.arange(7.0), image, dims=(0, 2)))
    assert len(outputs) == 4
    torch.testing.assert_close(outputs[0], image * torch.arange(7.0))
    torch.testing.assert_close(outputs[1], image * torch.arange(7.0))
    torch.testing.assert_close(outputs[2], image * torch.arange(7.0).flip(0))


@pytest.mark.real_data
def test_predict_slices_on_a_real_acdc_volume(acdc_root: Path):
    name = (acdc_root / "test.list").read_text().split()[0]
    with h5py.File(acdc_root / "data" / f"{name}.h5") as handle:
        volume = torch.from_numpy(handle["image"][:])[None]
    probs = predict_slices(pointwise_net(2, num_classes=4), volume, (256, 256))
    assert probs.shape == (4, *volume.shape[1:])
    torch.testing.assert_close(probs.sum(0), torch.ones(volume.shape[1:]))
