"""SSL methods; importing this package registers every module in it."""

from medsemi.methods.base import Batch, Method, MethodContext, create_method, list_methods, register_method
from medsemi.registry import import_submodules

import_submodules(__name__)

__all__ = ["Batch", "Method", "MethodContext", "create_method", "list_methods", "register_method"]
