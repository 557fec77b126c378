"""Feature-recalibration blocks of CBAM (Woo et al., ECCV 2018) as CDMA's MTNet uses them.

Each block maps (B, C, H, W) -> (B, C, H, W): the input rescaled by a sigmoid gate, per channel (CA),
per pixel (SA) or both in turn (CBAM, CDMA's "CSA"). Different gates make MTNet's decoders disagree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medsemi.nets.registry import create_block, register_block


class ChannelAttention(nn.Module):
    """Shared MLP C -> C/r -> C on the average- and max-pooled descriptors, summed, sigmoid per channel.

    The hidden width is at least 1 so that narrow test networks (C < r) still build.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Channel-wise mean and max (2 maps) -> k x k conv -> sigmoid per pixel."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Channel attention, then spatial attention on the channel-gated features."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


@register_block("ca")
def channel_attention(channels: int, reduction: int = 16) -> ChannelAttention:
    return ChannelAttention(channels, reduction)


@register_block("sa")
def spatial_attention(channels: int, kernel_size: int = 7) -> SpatialAttention:
    return SpatialAttention(kernel_size)


@register_block("csa")
def cbam(channels: int, reduction: int = 16, kernel_size: int = 7) -> CBAM:
    return CBAM(channels, reduction, kernel_size)


ATTENTION_KINDS = ("csa", "sa", "ca")


def make_attention(kind: str, channels: int) -> nn.Module:
    """CDMA's names: "csa" = CBAM, "sa" = spatial only, "ca" = channel only (paper defaults r=16, k=7)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention {kind!r} is not one of {ATTENTION_KINDS}")
    return create_block(kind, channels=channels)
