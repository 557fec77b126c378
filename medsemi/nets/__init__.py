"""Segmentation networks; importing this package registers them all."""

from medsemi.nets import unet, vnet  # noqa: F401
from medsemi.nets.registry import create_net, list_nets, register_net

__all__ = ["create_net", "list_nets", "register_net"]
