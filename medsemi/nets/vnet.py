"""The UA-MT 3D V-Net (n_filters 16, additive skips): the backbone of the LA literature."""

from __future__ import annotations

from torch import Tensor, nn

from medsemi.nets.registry import register_net


def conv_stage(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 2, stride=2), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)
    )


def up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class VNetEncoder(nn.Module):
    def __init__(self, in_channels: int, n_filters: int, dropout: float) -> None:
        super().__init__()
        f = n_filters
        self.stages = nn.ModuleList(
            [
                conv_stage(1, in_channels, f),
                conv_stage(2, 2 * f, 2 * f),
                conv_stage(3, 4 * f, 4 * f),
                conv_stage(3, 8 * f, 8 * f),
                conv_stage(3, 16 * f, 16 * f),
            ]
        )
        self.downs = nn.ModuleList([down(f, 2 * f), down(2 * f, 4 * f), down(4 * f, 8 * f), down(8 * f, 16 * f)])
        self.dropout = nn.Dropout3d(dropout)

    def forward(self, x: Tensor) -> list[Tensor]:
        skips = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.downs[i - 1](skips[-1]))
            skips.append(x)
        skips[-1] = self.dropout(skips[-1])
        return skips


class VNetDecoder(nn.Module):
    def __init__(self, n_filters: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        f = n_filters
        self.ups = nn.ModuleList([up(16 * f, 8 * f), up(8 * f, 4 * f), up(4 * f, 2 * f), up(2 * f, f)])
        self.stages = nn.ModuleList(
            [
                conv_stage(3, 8 * f, 8 * f),
                conv_stage(3, 4 * f, 4 * f),
                conv_stage(2, 2 * f, 2 * f),
                conv_stage(1, f, f),
            ]
        )
        self.dropout = nn.Dropout3d(dropout)
        self.head = nn.Conv3d(f, num_classes, 1)

    def decode(self, skips: list[Tensor]) -> Tensor:
        x = skips[-1]
        for upsample, stage, skip in zip(self.ups, self.stages, reversed(skips[:-1])):
            x = stage(upsample(x) + skip)
        return self.dropout(x)

    def forward(self, skips: list[Tensor]) -> Tensor:
        return self.head(self.decode(skips))


class VNet3D(nn.Module):
    """Strided-conv down-sampling, transposed-conv up-sampling, skips added; Dropout3d(0.5) as UA-MT."""

    def __init__(self, in_channels: int, num_classes: int, n_filters: int = 16, dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = VNetEncoder(in_channels, n_filters, dropout)
        self.decoder = VNetDecoder(n_filters, num_classes, dropout)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        features = self.decoder.decode(self.encoder(x))
        logits = self.decoder.head(features)
        return (logits, features) if return_features else logits


@register_net("vnet")
def vnet(in_channels: int, num_classes: int, **options) -> VNet3D:
    return VNet3D(in_channels, num_classes, **options)
