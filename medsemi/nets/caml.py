"""The CAML network (Gao et al., MICCAI 2023): two V-Nets on one input, one with cross-sample attention.

Built from the UA-MT V-Net of `medsemi.nets.vnet` (`CAML3d_v1` of the official code); `spatial_dims=2` gives
the same network with every 3D layer swapped for its 2D counterpart (the official code is 3D only).
`backbone="unet"` (2D only) builds the pair from the SSL4MIS U-Net instead, as MC-Net, the code CAML is built
on, does for ACDC: f_v up-samples with transposed convolutions, f_a bilinearly, CMA on f_a's stride-8 level.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.nets.registry import register_net
from medsemi.nets.unet import UNet2D
from medsemi.nets.unet_bilinear import BilinearUNet2D
from medsemi.nets.vnet import VNet3D

_TO_2D: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv3d: nn.Conv2d,
    nn.ConvTranspose3d: nn.ConvTranspose2d,
    nn.BatchNorm3d: nn.BatchNorm2d,
    nn.Dropout3d: nn.Dropout2d,
}


def as_2d(module: nn.Module) -> nn.Module:
    """Replace, in place, each 3D conv/norm/dropout layer by its 2D counterpart with the same sizes.

    The V-Net blocks are written for 3D; swapping layers keeps one code path for both dimensionalities
    instead of a second copy of the blocks. The new layers are freshly initialised.
    """
    for name, child in module.named_children():
        target = _TO_2D.get(type(child))
        if target is None:
            as_2d(child)
        elif isinstance(child, (nn.Conv3d, nn.ConvTranspose3d)):
            layer = target(
                child.in_channels,
                child.out_channels,
                child.kernel_size[1:],
                stride=child.stride[1:],
                padding=child.padding[1:],
                bias=child.bias is not None,
            )
            setattr(module, name, layer)
        elif isinstance(child, nn.BatchNorm3d):
            setattr(module, name, target(child.num_features, eps=child.eps, momentum=child.momentum))
        else:
            setattr(module, name, target(child.p))
    return module


class CrossSampleMutualAttention(nn.Module):
    """CMA: a Transformer layer over the positions of each sample, then one over the samples at each position.

    Identity in eval mode (as in the official code): attention across the batch would make a prediction
    depend on the other images that happen to share its batch. No positional encoding.
    """

    def __init__(self, channels: int, heads: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        self.intra = nn.TransformerEncoderLayer(channels, heads, 4 * channels, dropout, batch_first=True)
        self.inter = nn.TransformerEncoderLayer(channels, heads, 4 * channels, dropout, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        tokens = x.flatten(2).transpose(1, 2)  # (B, positions, C): sequence = the positions of one sample
        tokens = self.intra(tokens)
        tokens = self.inter(tokens.transpose(0, 1)).transpose(0, 1)  # sequence = the samples at one position
        return tokens.transpose(1, 2).reshape(x.shape)


class Interpolate(nn.Module):
    """x2 (tri/bi)linear up-sampling with aligned corners, picked by the input's dimensionality."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="trilinear" if x.dim() == 5 else "bilinear", align_corners=True)


def interpolation_up(in_channels: int, out_channels: int) -> nn.Sequential:
    """The auxiliary decoder's up-sampling (`up_type=1`): interpolation, 3x3x3 conv, BN, ReLU."""
    return nn.Sequential(
        Interpolate(),
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def embedding_head(in_features: int, out_features: int) -> nn.Sequential:
    """Per-voxel MLP head (projection or prediction): Linear, BN1d, ReLU, Linear; no L2 normalisation."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
        nn.Linear(out_features, out_features),
    )


class CAMLNet(nn.Module):
    """Vanilla V-Net f_v (transposed-conv up-sampling) and auxiliary V-Net f_a (CMA after encoder stage 4,
    interpolation up-sampling), each with a projection and a prediction head on its last decoder features.

    `forward` is the vanilla sub-network, the one used for inference. Heads are indexed 0 = f_v, 1 = f_a.
    `backbone="unet"`: the same pair from the SSL4MIS U-Net (widths n_filters x 1..16, its encoder dropout;
    `dropout` is the V-Net's). The 2D V-Net learns ACDC too slowly for a short schedule (docs/methods/caml.md).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 3,
        n_filters: int = 16,
        dropout: float = 0.5,
        feat_dim: int = 32,
        attention_heads: int = 4,
        attention_dropout: float = 0.5,
        backbone: str = "vnet",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"caml: spatial_dims must be 2 or 3, got {spatial_dims}")
        if backbone not in ("vnet", "unet") or (backbone == "unet" and spatial_dims != 2):
            raise ValueError(f"caml: backbone must be vnet, or unet in 2D; got {backbone!r} in {spatial_dims}D")
        f = n_filters
        self.feat_dim = feat_dim
        cma = CrossSampleMutualAttention(8 * f, attention_heads, attention_dropout)
        self.vanilla: nn.Module
        self.auxiliary: nn.Module
        if backbone == "unet":
            widths = (f, 2 * f, 4 * f, 8 * f, 16 * f)
            self.vanilla = UNet2D(in_channels, num_classes, widths)
            self.auxiliary = BilinearUNet2D(in_channels, num_classes, widths)
            self.auxiliary.encoder.blocks[3] = nn.Sequential(self.auxiliary.encoder.blocks[3], cma)
        else:
            self.vanilla = VNet3D(in_channels, num_classes, n_filters, dropout)
            self.auxiliary = VNet3D(in_channels, num_classes, n_filters, dropout)
            self.auxiliary.encoder.stages[3] = nn.Sequential(self.auxiliary.encoder.stages[3], cma)
            ups = (interpolation_up(c, c // 2) for c in (16 * f, 8 * f, 4 * f, 2 * f))
            self.auxiliary.decoder.ups = nn.ModuleList(ups)
        self.projection_heads = nn.ModuleList([embedding_head(f, feat_dim), embedding_head(f, feat_dim)])
        self.prediction_heads = nn.ModuleList([embedding_head(feat_dim, feat_dim), embedding_head(feat_dim, feat_dim)])
        if spatial_dims == 2 and backbone == "vnet":
            as_2d(self)

    @property
    def branches(self) -> tuple[nn.Module, nn.Module]:
        return self.vanilla, self.auxiliary

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return self.vanilla(x, return_features=return_features)


@register_net("caml")
def caml(in_channels: int, num_classes: int, **options) -> CAMLNet:
    return CAMLNet(in_channels, num_classes, **options)
