"""Attention blocks, MTNet on the U-Net and on ResNet-50 (weights from a local file), branch views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medsemi.nets import create_net
from medsemi.nets.attention import CBAM, ChannelAttention, SpatialAttention, make_attention
from medsemi.nets.mtnet import (
    BRANCHES,
    BranchView,
    DeepLabMTNet,
    FrozenBatchNorm2d,
    ResNet50,
    UNetMTNet,
    load_resnet50_weights,
)

SMALL = {"widths": (4, 8, 16, 32, 64)}


def _unet_mtnet(**options: object) -> UNetMTNet:
    net = create_net("mtnet", in_channels=1, num_classes=3, **{**SMALL, **options})
    assert isinstance(net, UNetMTNet)
    return net


def test_channel_attention_scales_whole_channels_and_spatial_attention_whole_pixels() -> None:
    x = torch.rand(2, 32, 8, 8) + 0.1
    ratio_ca = ChannelAttention(32)(x) / x
    assert torch.allclose(ratio_ca, ratio_ca[:, :, :1, :1].expand_as(ratio_ca))
    assert not torch.allclose(ratio_ca, ratio_ca[:, :1].expand_as(ratio_ca))
    ratio_sa = SpatialAttention()(x) / x
    assert torch.allclose(ratio_sa, ratio_sa[:, :1].expand_as(ratio_sa))
    assert not torch.allclose(ratio_sa, ratio_sa[:, :, :1, :1].expand_as(ratio_sa))
    cbam = CBAM(32)
    assert torch.allclose(cbam(x), cbam.spatial(cbam.channel(x)))
    assert ((ratio_ca > 0) & (ratio_ca < 1)).all() and ((ratio_sa > 0) & (ratio_sa < 1)).all()


def test_attention_kinds_and_narrow_channels() -> None:
    assert isinstance(make_attention("csa", 4), CBAM)
    assert isinstance(make_attention("sa", 4), SpatialAttention)
    assert make_attention("ca", 4)(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="attention"):
        make_attention("self", 4)


def test_unet_mtnet_branches_differ_and_forward_is_the_csa_branch() -> None:
    net = _unet_mtnet().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        outputs = net.branch_outputs(x)
        logits, features = net(x, return_features=True)
    assert list(outputs) == list(BRANCHES)
    for name in BRANCHES:
        assert outputs[name][0].shape == (2, 3, 32, 32) and outputs[name][1].shape == (2, 4, 32, 32)
    assert not torch.allclose(outputs["csa"][0], outputs["sa"][0])
    assert not torch.allclose(outputs["sa"][0], outputs["ca"][0])
    assert not torch.allclose(outputs["csa"][0], outputs["ca"][0])
    assert torch.equal(logits, outputs["csa"][0]) and torch.equal(features, outputs["csa"][1])


def test_decoders_share_the_encoder_and_differ_only_by_attention() -> None:
    net = _unet_mtnet()
    decoders = [net.decoders[name] for name in BRANCHES]
    plain = [{k: v.shape for k, v in d.decoder.state_dict().items()} for d in decoders]
    assert plain[0] == plain[1] == plain[2]
    kinds = [{type(a) for a in d.attention} for d in decoders]
    assert kinds == [{CBAM}, {SpatialAttention}, {ChannelAttention}]
    assert not any(name.startswith("decoders") for name, _ in net.encoder.named_parameters())


def test_perturbation_only_in_training_and_only_on_sa_and_ca() -> None:
    x = torch.randn(2, 1, 16, 16)
    net = _unet_mtnet(dropouts=(0.0,) * 5, perturbation=0.3).train()
    first, second = net.branch_outputs(x), net.branch_outputs(x)
    assert torch.equal(first["csa"][0], second["csa"][0])
    assert not torch.allclose(first["sa"][0], second["sa"][0])
    assert not torch.allclose(first["ca"][0], second["ca"][0])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net.branch_outputs(x)["sa"][0], net.branch_outputs(x)["sa"][0])
    clean = _unet_mtnet(dropouts=(0.0,) * 5).train()
    assert torch.equal(clean.branch_outputs(x)["sa"][0], clean.branch_outputs(x)["sa"][0])


def test_branch_view_single_and_mean() -> None:
    net = _unet_mtnet().eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        outputs = net.branch_outputs(x)
        assert torch.equal(BranchView(net, ("sa",))(x), outputs["sa"][0])
        mean = BranchView(net, BRANCHES)(x)
    expected = torch.stack([outputs[b][0].softmax(1) for b in BRANCHES]).mean(0)
    assert torch.allclose(mean.softmax(1), expected, atol=1e-6)
    assert torch.allclose(mean.exp().sum(1), torch.ones(1, 16, 16), atol=1e-6)
    with pytest.raises(ValueError, match="branches"):
        BranchView(net, ("cbam",))


@pytest.fixture(scope="module")
def deeplab() -> DeepLabMTNet:
    torch.manual_seed(0)
    net = create_net("mtnet_resnet50", in_channels=3, num_classes=2)
    assert isinstance(net, DeepLabMTNet)
    return net


def test_deeplab_mtnet_shapes_groups_and_norms(deeplab: DeepLabMTNet) -> None:
    x = torch.randn(2, 3, 72, 56)
    deeplab.eval()
    with torch.no_grad():
        outputs = deeplab.branch_outputs(x)
        low, high = deeplab.backbone(x)
    assert low.shape == (2, 256, 18, 14) and high.shape == (2, 2048, 5, 4)
    for name in BRANCHES:
        assert outputs[name][0].shape == (2, 2, 72, 56) and outputs[name][1].shape == (2, 256, 18, 14)
    assert not torch.allclose(outputs["csa"][0], outputs["ca"][0])
    heads = [m for m in deeplab.aspp.modules()] + [m for m in deeplab.decoders.modules()]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in heads)
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in heads)
    # Without pre-trained weights the backbone keeps trainable batch statistics.
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in deeplab.backbone.modules())
    groups = deeplab.optimiser_groups()
    grouped = [id(p) for module in groups.values() for p in module.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in deeplab.parameters())
    assert len(grouped) == len(set(grouped))


def test_frozen_batch_norm_keeps_statistics_and_learns_affine() -> None:
    norm = FrozenBatchNorm2d(3)
    norm.running_mean.fill_(2.0)
    norm.running_var.fill_(4.0)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    out = norm.train()(x)
    assert torch.allclose(out, (x - 2.0) / torch.sqrt(torch.tensor(4.0) + norm.eps))
    assert torch.equal(norm.running_mean, torch.full((3,), 2.0))
    out.sum().backward()
    assert norm.weight.grad is not None and norm.bias.grad is not None


def test_pretrained_weights_load_from_a_local_file_and_freeze_bn(deeplab: DeepLabMTNet, tmp_path: Path) -> None:
    for module in deeplab.backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = {k: v for k, v in deeplab.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}  # as the 2017 torchvision file
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = DeepLabMTNet(3, 2, pretrained=str(path))
    loaded = net.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert any(isinstance(m, FrozenBatchNorm2d) for m in net.backbone.modules())
    grey = ResNet50(1, nn.BatchNorm2d)
    load_resnet50_weights(grey, path)
    image = torch.randn(1, 1, 9, 9)
    assert torch.allclose(grey.conv1(image), net.backbone.conv1(image.repeat(1, 3, 1, 1)), atol=1e-4)


def test_pretrained_errors_are_clear_and_load_nothing(deeplab: DeepLabMTNet, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        load_resnet50_weights(deeplab.backbone, tmp_path / "missing.pth")
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}, path)
    before = deeplab.backbone.conv1.weight.detach().clone()
    with pytest.raises(ValueError, match="not a torchvision ResNet-50"):
        load_resnet50_weights(deeplab.backbone, path)
    assert torch.equal(deeplab.backbone.conv1.weight, before)
