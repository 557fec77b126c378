"""A 2D transformer segmenter (MONAI SwinUNETR), trainable from scratch or from a local weight file.

Cross teaching (ssl4mis.md §8) pairs the U-Net with a Swin-UNet "lite" (patch 4, embed 96, depths 2-2-2-2,
heads 3-6-12-24, window 7, drop-path 0.2; ImageNet Swin-T init). timm's Swin-UNet is not a dependency here,
so the transformer is MONAI's SwinUNETR in 2D with the same depths, heads, window and drop-path; feature
size 48 gives ~25 M parameters (Swin-UNet lite: ~27 M). There is no download path: `pretrained` names a
local state-dict file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets import SwinUNETR
from torch import Tensor, nn

from medsemi.nets.registry import register_net

_WRAPPER_KEYS = ("state_dict", "model", "net", "student")


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
    """Accept a bare state dict, one nested under a usual key, and DDP's `module.` prefix."""
    while isinstance(loaded, Mapping) and not any(isinstance(v, Tensor) for v in loaded.values()):
        key = next((k for k in _WRAPPER_KEYS if k in loaded), None)
        if key is None:
            raise ValueError(f"{path}: no tensors and none of the keys {_WRAPPER_KEYS} to look under")
        loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return {k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, Tensor)}


def load_pretrained(net: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a local state dict into `net`; a missing file or mismatching keys are errors that say which.

    With `strict=False` only the keys present in both with equal shapes are loaded (as SSL4MIS drops the
    mismatching keys of the Swin-T checkpoint) and the skipped ones are reported in a warning; loading
    nothing at all is still an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (give a local state-dict file)")
    state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    own = net.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(matching))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    problems = f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {reshaped[:5]}"
    if not matching:
        raise ValueError(f"{path}: no key of the file fits the network ({problems})")
    if strict and (missing or unexpected or reshaped):
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} with other shapes"
        raise ValueError(
            f"{path}: keys do not match the network ({counts}; {problems}); pretrained_strict=false loads the overlap"
        )
    if missing or unexpected or reshaped:
        warnings.warn(f"{path}: loaded {len(matching)} tensors, skipped ({problems})", stacklevel=2)
    net.load_state_dict(matching, strict=False)


class SwinSegmenter(SwinUNETR):
    """SwinUNETR with the registry's forward: logits, or logits and the last decoder feature map."""

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if not torch.jit.is_tracing():
            self._check_input_size(x.shape[2:])
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec3 = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        dec0 = self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1)
        features = self.decoder1(dec0, enc0)
        logits = self.out(features)
        return (logits, features) if return_features else logits


@register_net("swin_unetr")
def swin_unetr(
    in_channels: int,
    num_classes: int,
    feature_size: int = 48,
    depths: tuple[int, ...] = (2, 2, 2, 2),
    num_heads: tuple[int, ...] = (3, 6, 12, 24),
    window_size: int = 7,
    drop_path: float = 0.2,
    norm: str = "batch",
    pretrained: str | None = None,
    pretrained_strict: bool = True,
) -> SwinSegmenter:
    """Input sides must be multiples of 32 (224 and 256 both are); `feature_size` a multiple of 12."""
    net = SwinSegmenter(
        in_channels=in_channels,
        out_channels=num_classes,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_size=window_size,
        dropout_path_rate=drop_path,
        norm_name=norm,
        spatial_dims=2,
    )
    if pretrained:
        load_pretrained(net, pretrained, strict=pretrained_strict)
    return net
