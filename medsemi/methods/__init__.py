"""SSL methods; importing this package registers them all."""

from medsemi.methods import mean_teacher, supervised  # noqa: F401
from medsemi.methods.base import Batch, Method, MethodContext, create_method, list_methods, register_method

__all__ = ["Batch", "Method", "MethodContext", "create_method", "list_methods", "register_method"]
