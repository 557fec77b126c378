"""Network registry: every segmenter is created by name with the same constructor vocabulary."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medsemi.registry import Registry

NETS: Registry[nn.Module] = Registry("network")


def register_net(name: str) -> Callable:
    """Register `factory(in_channels: int, num_classes: int, **options) -> nn.Module`.

    The module's forward is `forward(x, return_features=False)`: logits of shape (B, num_classes, *spatial),
    or `(logits, features)` with the last decoder feature map when `return_features=True`.
    """
    return NETS.register(name)


def create_net(name: str, *, in_channels: int, num_classes: int, **options) -> nn.Module:
    return NETS.get(name)(in_channels=in_channels, num_classes=num_classes, **options)


def list_nets() -> list[str]:
    return NETS.names()


BLOCKS: Registry[nn.Module] = Registry("block")


def register_block(name: str) -> Callable:
    """Register `factory(channels: int, **options) -> nn.Module`, a (B, C, *spatial) -> same-shape block that
    networks compose (attention gates); segmenters live in the network registry."""
    return BLOCKS.register(name)


def create_block(name: str, *, channels: int, **options) -> nn.Module:
    return BLOCKS.get(name)(channels=channels, **options)


def list_blocks() -> list[str]:
    return BLOCKS.names()
