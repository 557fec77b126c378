"""Annotation-driven checking and coercion of config values: one home for every section and every method's
Options (it imports nothing of medsemi, so the config, the methods and their options all build on it)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    pass


def typed_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` (known fields of dataclass `cls`) typed by its annotations, as every config section is."""
    hints = typing.get_type_hints(cls)
    return {name: coerce(value, hints[name], f"{where}{name}") for name, value in values.items()}


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against its annotation, converting what YAML and `key=value` overrides leave untyped.

    A float accepts an int or a numeric string (YAML 1.1 reads "1e-3" as a string); an int or a bool must be
    exactly one (True is no int, 1.5 no int); a `Literal` names the allowed values; list items are checked by
    their type; mappings are taken as they are.
    """
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} may not be null")
    choices: list[Any] = []
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is Literal:
            if any(type(value) is type(choice) and value == choice for choice in typing.get_args(option)):
                return value
            choices += typing.get_args(option)
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                continue
        if origin in (int, str, bool) and type(value) is origin:
            return value
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option) or (Any,)
            return [coerce(element, item, f"{where}[{i}]") for i, element in enumerate(value)]
        if origin is dict and isinstance(value, dict) or origin is Any:
            return value
    if choices and isinstance(value, str):
        mapping = " or a mapping" if any(typing.get_origin(option) is dict for option in options) else ""
        raise ConfigError(f"{where} must be one of {tuple(choices)}{mapping}, got {value!r}")
    raise ConfigError(f"{where}: {value!r} is not a valid {type_name(hint)}")


def type_name(hint: Any) -> str:
    """An annotation as a reader writes it: `int`, `'ce' | 'ce_dice'`, `dict[str, Any]`."""
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(hint))
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")
