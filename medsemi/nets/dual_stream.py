"""Semiformer's coupled CNN + transformer network made dense (vit_ssl.md §2.1 and §3.3).

The CNN stream is the SSL4MIS U-Net; the transformer stream is a plain ViT (DeiT-S: patch 16, width 384,
12 blocks, 6 heads) whose patch embedding reads the CNN stem, as Conformer/Semiformer do. At each coupling
level (default: the U-Net levels at strides 4, 8, 16, Semiformer's three stages) a Feature Coupling Unit
pair exchanges features: FCU-down (1x1 conv, average-pool to the token grid, LayerNorm, GELU) is added to
the tokens entering that stage's blocks, and FCU-up (reshape, 1x1 conv, BN, ReLU, nearest upsampling) is
added to the CNN map that leaves the level, so each stream's later layers see the other's features.
Each stream has its own decoder and head: the U-Net decoder, and for the tokens a progressive up-sampling
decoder over the concatenated stage outputs (SETR-MLA-like).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from torch import Tensor, nn

from medsemi.nets.registry import register_net
from medsemi.nets.transformer import load_pretrained
from medsemi.nets.unet import UNetDecoder, UNetEncoder

HEADS = ("cnn", "transformer", "mean")


class FCUDown(nn.Module):
    """CNN map -> tokens: project to the token width, average-pool by `factor` to the token grid, LN + GELU.

    Fixed pooling and upsampling factors (a level's stride to the token stride), as Conformer's, also keep the
    network exportable to ONNX.
    """

    def __init__(self, channels: int, dim: int, factor: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, 1)
        self.pool = nn.AvgPool2d(factor)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.pool(self.proj(x)).flatten(2).transpose(1, 2)))


class FCUUp(nn.Module):
    """Tokens -> CNN map: reshape to the grid, project (1x1 conv, BN, ReLU), nearest-upsample."""

    def __init__(self, dim: int, channels: int, factor: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, channels, 1), nn.BatchNorm2d(channels), nn.ReLU())
        self.up = nn.Upsample(scale_factor=factor, mode="nearest")

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        return self.up(self.proj(x))


class TokenDecoder(nn.Module):
    """Stage token maps (concatenated) -> full resolution by x2 transposed-conv steps, then a 3x3 head."""

    def __init__(self, in_channels: int, width: int, min_width: int, steps: int, num_classes: int) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        ups = []
        for _ in range(steps):
            out = max(width // 2, min_width)
            ups.append(
                nn.Sequential(
                    nn.ConvTranspose2d(width, out, 2, stride=2),
                    nn.Conv2d(out, out, 3, padding=1),
                    nn.BatchNorm2d(out),
                    nn.ReLU(),
                )
            )
            width = out
        self.ups = nn.Sequential(*ups)
        self.head = nn.Conv2d(width, num_classes, 3, padding=1)

    def decode(self, maps: Tensor) -> Tensor:
        return self.ups(self.fuse(maps))


class CNNStream(nn.Module):
    """The U-Net encoder and decoder, and the FCU-up units through which tokens enter them."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int],
        dropouts: list[float],
        embed_dim: int,
        patch_size: int,
        levels: tuple[int, ...],
        coupling: bool,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, widths, dropouts)
        self.decoder = UNetDecoder(widths, num_classes)
        self.fcu_up = (
            nn.ModuleList(FCUUp(embed_dim, widths[level], patch_size >> level) for level in levels)
            if coupling
            else None
        )


class TransformerStream(nn.Module):
    """Patch embedding of the CNN stem, ViT stages, FCU-down units (CNN maps -> tokens), token decoder."""

    def __init__(
        self,
        num_classes: int,
        widths: list[int],
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        img_size: int,
        levels: tuple[int, ...],
        coupling: bool,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(widths[0], embed_dim, patch_size, stride=patch_size)
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        per_stage = [depth // len(levels) + (i < depth % len(levels)) for i in range(len(levels))]
        mlp_dim = int(embed_dim * mlp_ratio)
        self.stages = nn.ModuleList(
            nn.Sequential(*(TransformerBlock(embed_dim, mlp_dim, num_heads, qkv_bias=True) for _ in range(n)))
            for n in per_stage
        )
        self.fcu_down = (
            nn.ModuleList(FCUDown(widths[level], embed_dim, patch_size >> level) for level in levels)
            if coupling
            else None
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = TokenDecoder(
            embed_dim * len(levels), widths[-1], widths[0], int(math.log2(patch_size)), num_classes
        )

    def embed(self, stem: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Tokens (B, N, D) of the CNN stem map and their grid; the position embedding is resized to fit."""
        x = self.patch_embed(stem)
        grid = (x.shape[2], x.shape[3])
        pos = self.pos_embed
        if pos.shape[2:] != x.shape[2:]:
            pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return (x + pos).flatten(2).transpose(1, 2), grid


class DualStreamNet(nn.Module):
    """U-Net stream + ViT stream with FCU coupling; `head` picks what `forward` returns.

    `forward_streams(x)` gives both heads' (logits, features); `forward` returns the `head` stream's
    (for "mean": the log of the averaged softmaxes, so its argmax is the fused prediction). The two streams
    are separate submodules (`cnn`, `transformer`), so each may get its own optimiser.
    Input sides must be multiples of `patch_size` and of 16 (the U-Net pools four times).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        dropouts: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        img_size: int = 224,
        coupling_levels: tuple[int, ...] = (2, 3, 4),
        coupling: bool = True,
        head: str = "cnn",
    ) -> None:
        super().__init__()
        if len(widths) != len(dropouts):
            raise ValueError(f"dual_stream: {len(widths)} widths but {len(dropouts)} dropout rates")
        if patch_size & (patch_size - 1) or patch_size < 2:
            raise ValueError(f"dual_stream: patch_size must be a power of two, got {patch_size}")
        levels = tuple(coupling_levels)
        if not levels or list(levels) != sorted(set(levels)) or levels[-1] >= len(widths):
            raise ValueError(f"dual_stream: coupling_levels {levels} must be increasing U-Net levels < {len(widths)}")
        if any(2**level > patch_size for level in levels):
            raise ValueError(
                f"dual_stream: coupling level strides {[2**lv for lv in levels]} exceed patch {patch_size}"
            )
        if depth < len(levels):
            raise ValueError(f"dual_stream: depth {depth} < {len(levels)} coupling stages")
        self.head = head
        self.coupling_levels = levels
        self.cnn = CNNStream(
            in_channels, num_classes, list(widths), list(dropouts), embed_dim, patch_size, levels, coupling
        )
        self.transformer = TransformerStream(
            num_classes,
            list(widths),
            patch_size,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
            img_size,
            levels,
            coupling,
        )

    @property
    def head(self) -> str:
        return self._head

    @head.setter
    def head(self, value: str) -> None:
        if value not in HEADS:
            raise ValueError(f"dual_stream: head must be one of {HEADS}, got {value!r}")
        self._head = value

    def forward_streams(self, x: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """((cnn logits, cnn features), (transformer logits, transformer features))."""
        cnn, vit = self.cnn, self.transformer
        skips, stage_tokens = [], []
        h = cnn.encoder.blocks[0](x)
        tokens, grid = vit.embed(h)
        for level, block in enumerate(cnn.encoder.blocks):
            if level > 0:
                h = block(h)
            if level in self.coupling_levels:
                stage = self.coupling_levels.index(level)
                if vit.fcu_down is not None:
                    tokens = tokens + vit.fcu_down[stage](h)
                tokens = vit.stages[stage](tokens)
                stage_tokens.append(tokens)
                if cnn.fcu_up is not None:
                    h = h + cnn.fcu_up[stage](tokens, grid)
            skips.append(h)
        cnn_features = cnn.decoder.decode(skips)
        maps = [vit.norm(t).transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid) for t in stage_tokens]
        token_features = vit.decoder.decode(torch.cat(maps, 1))
        return (
            (cnn.decoder.head(cnn_features), cnn_features),
            (vit.decoder.head(token_features), token_features),
        )

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        (cnn_logits, cnn_features), (token_logits, token_features) = self.forward_streams(x)
        if self.head == "cnn":
            logits, features = cnn_logits, cnn_features
        elif self.head == "transformer":
            logits, features = token_logits, token_features
        else:
            logits = torch.log((cnn_logits.softmax(1) + token_logits.softmax(1)) / 2)
            features = torch.cat([cnn_features, token_features], 1)
        return (logits, features) if return_features else logits


@register_net("dual_stream")
def dual_stream(
    in_channels: int,
    num_classes: int,
    pretrained: str | None = None,
    pretrained_strict: bool = True,
    **options,
) -> DualStreamNet:
    net = DualStreamNet(in_channels, num_classes, **options)
    if pretrained:
        load_pretrained(net, pretrained, strict=pretrained_strict)
    return net
