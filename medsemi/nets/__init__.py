"""Segmentation networks; importing this package registers every module in it."""

from medsemi.nets.registry import create_block, create_net, list_blocks, list_nets, register_block, register_net
from medsemi.registry import import_submodules

import_submodules(__name__)

__all__ = ["create_block", "create_net", "list_blocks", "list_nets", "register_block", "register_net"]
