"""The CAML network: cross-sample mutual attention, the two V-Net sub-networks, one code path for 2D/3D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsemi.nets import create_net
from medsemi.nets.caml import _TO_2D, CAMLNet, CrossSampleMutualAttention, Interpolate


def _net(dims: int) -> CAMLNet:
    net = create_net("caml", in_channels=1, num_classes=3, spatial_dims=dims, n_filters=4)
    assert isinstance(net, CAMLNet)
    return net


@pytest.mark.parametrize("shape", [(3, 16, 4, 4, 2), (3, 16, 4, 4)])
def test_cma_keeps_shapes_and_mixes_samples_in_training(shape: tuple[int, ...]) -> None:
    cma = CrossSampleMutualAttention(16, heads=4, dropout=0.0).train()
    x = torch.randn(shape)
    y = cma(x)
    assert y.shape == x.shape
    changed = x.clone()
    changed[2] += torch.randn_like(changed[2])
    y_changed = cma(changed)
    assert not torch.allclose(y_changed[0], y[0]), "changing sample 2 must change sample 0's features"
    assert not torch.allclose(y_changed[1], y[1])


def test_cma_mixes_positions_within_a_sample() -> None:
    cma = CrossSampleMutualAttention(16, heads=4, dropout=0.0).train()
    x = torch.randn(2, 16, 4, 4, 2)
    changed = x.clone()
    changed[0, :, 0, 0, 0] += 5.0
    y, y_changed = cma(x), cma(changed)
    assert not torch.allclose(y_changed[0, :, 3, 3, 1], y[0, :, 3, 3, 1])


def test_cma_is_the_identity_in_eval_mode() -> None:
    cma = CrossSampleMutualAttention(16).eval()
    x = torch.randn(3, 16, 4, 4, 2)
    assert torch.equal(cma(x), x)


@pytest.mark.parametrize(("dims", "shape"), [(3, (16, 16, 16)), (2, (32, 32))])
def test_both_sub_networks_give_logits_and_last_decoder_features(dims: int, shape: tuple[int, ...]) -> None:
    net = _net(dims)
    x = torch.randn(4, 1, *shape)
    for branch in net.branches:
        logits, features = branch(x, return_features=True)
        assert logits.shape == (4, 3, *shape)
        assert features.shape == (4, 4, *shape)
    assert torch.equal(net.eval()(x), net.vanilla(x))


def test_2d_and_3d_come_from_one_code_path() -> None:
    net_2d, net_3d = _net(2), _net(3)
    assert not [m for m in net_2d.modules() if type(m) in _TO_2D], "a 3D layer survived in the 2D network"
    shapes_2d = {k: v.shape for k, v in net_2d.state_dict().items()}
    shapes_3d = {k: v.shape for k, v in net_3d.state_dict().items()}
    assert shapes_2d.keys() == shapes_3d.keys()
    for key, shape in shapes_3d.items():
        conv_weight = len(shape) == 5
        assert shapes_2d[key] == (shape[:-1] if conv_weight else shape), key


def test_sub_networks_differ_as_the_paper_says() -> None:
    net = _net(3)
    vanilla_ups = [type(m) for m in net.vanilla.decoder.ups.modules()]
    auxiliary_ups = [type(m) for m in net.auxiliary.decoder.ups.modules()]
    assert nn.ConvTranspose3d in vanilla_ups and Interpolate not in vanilla_ups
    assert Interpolate in auxiliary_ups and nn.ConvTranspose3d not in auxiliary_ups
    assert not any(isinstance(m, CrossSampleMutualAttention) for m in net.vanilla.modules())
    cma = [m for m in net.auxiliary.encoder.modules() if isinstance(m, CrossSampleMutualAttention)]
    assert len(cma) == 1 and cma[0].intra.self_attn.embed_dim == 8 * 4


def test_eval_predictions_do_not_depend_on_the_rest_of_the_batch() -> None:
    net = _net(2).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        alone, together = net.auxiliary(x[:1]), net.auxiliary(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_unet_backbone_is_the_mcnet_2d_pair_with_cma_on_the_auxiliary_stride_8_level() -> None:
    from medsemi.nets.unet import UpBlock
    from medsemi.nets.unet_bilinear import BilinearUpBlock

    net = create_net("caml", in_channels=1, num_classes=4, spatial_dims=2, n_filters=4, backbone="unet")
    assert all(isinstance(up, UpBlock) for up in net.vanilla.decoder.ups)
    assert all(isinstance(up, BilinearUpBlock) for up in net.auxiliary.decoder.ups)
    cma = [m for m in net.auxiliary.encoder.blocks[3].modules() if isinstance(m, CrossSampleMutualAttention)]
    assert len(cma) == 1 and not any(isinstance(m, CrossSampleMutualAttention) for m in net.vanilla.modules())
    x = torch.randn(3, 1, 32, 32)
    for branch in net.branches:
        logits, features = branch(x, return_features=True)
        assert logits.shape == (3, 4, 32, 32) and features.shape == (3, 4, 32, 32)
    with pytest.raises(ValueError, match="backbone"):
        create_net("caml", in_channels=1, num_classes=2, spatial_dims=3, backbone="unet")
