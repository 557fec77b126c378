"""The literature's backbones: parameter counts, output shapes, decoder features, 2D/3D."""

from __future__ import annotations

import pytest
import torch

from medsemi.nets import create_net, list_nets


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("name", "classes", "millions"),
    [("unet", 4, 1.944), ("unet_bilinear", 4, 1.813), ("vnet", 2, 9.449)],
)
def test_parameter_counts_match_the_reference_networks(name: str, classes: int, millions: float) -> None:
    """SSL4MIS U-Net (transposed conv) 1.94 M, BCP's bilinear UNet_2d 1.81 M, UA-MT V-Net 9.45 M."""
    assert _count(create_net(name, in_channels=1, num_classes=classes)) / 1e6 == pytest.approx(millions, abs=1e-3)


@pytest.mark.parametrize(("name", "shape"), [("unet", (2, 1, 32, 48)), ("vnet", (1, 1, 16, 16, 32))])
def test_logits_and_last_decoder_features(name: str, shape: tuple[int, ...]) -> None:
    options = {"widths": (4, 8, 16, 32, 64)} if name == "unet" else {"n_filters": 4}
    net = create_net(name, in_channels=1, num_classes=3, **options).eval()
    logits, features = net(torch.randn(shape), return_features=True)
    assert logits.shape == (shape[0], 3, *shape[2:])
    assert features.shape[0] == shape[0] and features.shape[2:] == shape[2:]
    assert net(torch.randn(shape)).shape == logits.shape


def test_registry_lists_and_rejects_unknown_names() -> None:
    assert {"unet", "vnet"} <= set(list_nets())
    with pytest.raises(KeyError, match="unknown network 'unet3'"):
        create_net("unet3", in_channels=1, num_classes=2)


def test_attention_blocks_are_registered_and_keep_shapes() -> None:
    from medsemi.nets import create_block, list_blocks

    assert {"ca", "sa", "csa"} <= set(list_blocks())
    x = torch.randn(2, 8, 6, 5)
    for name in ("ca", "sa", "csa"):
        block = create_block(name, channels=8)
        assert block(x).shape == x.shape
        assert not torch.equal(block(x), x)
