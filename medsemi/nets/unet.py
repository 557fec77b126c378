"""The PyMIC/SSL4MIS 2D U-Net blocks with transposed-conv up-sampling (`unet`).

SSL4MIS's `Decoder` ignores its `bilinear` flag and always builds the 1x1-conv + bilinear path: that network is
`unet_bilinear` (BCP's and SCP-Net's backbone), not this one (1.94 M vs 1.81 M parameters at widths 16..256).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medsemi.nets.registry import register_net


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(skip_channels * 2, out_channels, dropout=0.0)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: list[int], dropouts: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock(in_channels, widths[0], dropouts[0])])
        for i in range(1, len(widths)):
            self.blocks.append(nn.Sequential(nn.MaxPool2d(2), ConvBlock(widths[i - 1], widths[i], dropouts[i])))

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    def __init__(self, widths: list[int], num_classes: int) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            UpBlock(widths[i], widths[i - 1], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)
        )
        self.head = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def decode(self, skips: list[Tensor]) -> Tensor:
        x = skips[-1]
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = up(x, skip)
        return x

    def forward(self, skips: list[Tensor]) -> Tensor:
        return self.head(self.decode(skips))


class UNet2D(nn.Module):
    """Encoder widths 16..256 with encoder dropout 0.05..0.5, transposed-conv up-sampling, concat skips."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        dropouts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
    ) -> None:
        super().__init__()
        if len(widths) != len(dropouts):
            raise ValueError(f"unet: {len(widths)} widths but {len(dropouts)} dropout rates")
        self.encoder = UNetEncoder(in_channels, list(widths), list(dropouts))
        self.decoder = UNetDecoder(list(widths), num_classes)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        features = self.decoder.decode(self.encoder(x))
        logits = self.decoder.head(features)
        return (logits, features) if return_features else logits


@register_net("unet")
def unet(in_channels: int, num_classes: int, **options) -> UNet2D:
    return UNet2D(in_channels, num_classes, **options)
