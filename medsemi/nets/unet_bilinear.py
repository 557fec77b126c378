"""The PyMIC/SSL4MIS 2D U-Net on its bilinear path: the backbone of BCP's ACDC code (`UNet_2d`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.nets.registry import register_net
from medsemi.nets.unet import ConvBlock, UNet2D


class BilinearUpBlock(nn.Module):
    """1x1 conv to the skip width, bilinear x2 (align_corners=True), concat [skip, up], ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        self.conv = ConvBlock(skip_channels * 2, out_channels, dropout=0.0)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class BilinearUNet2D(UNet2D):
    """`unet` with its transposed-conv up-sampling replaced by PyMIC's bilinear path; all else identical."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        dropouts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
    ) -> None:
        super().__init__(in_channels, num_classes, widths, dropouts)
        self.decoder.ups = nn.ModuleList(
            BilinearUpBlock(widths[i], widths[i - 1], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)
        )


@register_net("unet_bilinear")
def unet_bilinear(in_channels: int, num_classes: int, **options) -> BilinearUNet2D:
    return BilinearUNet2D(in_channels, num_classes, **options)
