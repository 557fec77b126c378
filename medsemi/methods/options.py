"""Method options as typed config: the base class, the option groups several methods share, and schedule units.

A method's `Options` dataclass is the single source of its hyper-parameters: the config loader types the
`method:` section by it (medsemi.config), `medsemi list --options` and the method pages print it, and the bench
rescales the options whose field carries a schedule unit (`iterations(...)`, `epochs(...)`,
`epoch_length(...)`) when a protocol shortens the run.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from medsemi.losses import consistency_weight
from medsemi.tables import markdown_table
from medsemi.typed import type_name

Unit = Literal["iterations", "epochs", "iterations/epoch"]


def iterations(default: int) -> Any:
    """A length of the schedule in iterations (a stage, a switch-on step): scaled with the run's length."""
    return dataclasses.field(default=default, metadata={"unit": "iterations"})


def epochs(default: float) -> Any:
    """A length in epochs of the method's `epoch_length` option (scaled through it), or of the run."""
    return dataclasses.field(default=default, metadata={"unit": "epochs"})


def epoch_length(default: int) -> Any:
    """How many iterations one epoch of the method's `epochs` options has: scaled with the run's length."""
    return dataclasses.field(default=default, metadata={"unit": "iterations/epoch"})


def option_unit(option: dataclasses.Field[Any]) -> Unit | None:
    return option.metadata.get("unit")


@dataclass
class MethodOptions:
    """Base class of every method's options; subclasses add their hyper-parameters with paper defaults."""


@dataclass
class TeacherEMAOptions(MethodOptions):
    """ema_decay: how much of the EMA teacher each optimizer step keeps (medsemi.engine.ema.ema_update)."""

    ema_decay: float = 0.99


@dataclass
class ConsistencyRampOptions(MethodOptions):
    """The SSL4MIS ramp-up of an unsupervised weight: `consistency` reached by a sigmoid over `rampup_epochs`
    epochs of `iterations_per_epoch` iterations (the ramp steps once per epoch)."""

    consistency: float = 0.1
    rampup_epochs: float = epochs(200.0)
    iterations_per_epoch: int = epoch_length(150)

    def ramped(self, step: int, max_weight: float | None = None) -> float:
        """The ramp at `step`, towards `max_weight` (default: `consistency`)."""
        weight = self.consistency if max_weight is None else max_weight
        return consistency_weight(step, weight, self.rampup_epochs, self.iterations_per_epoch)


def check_units(options: type[MethodOptions]) -> None:
    """A unit sits on a number, and a field that redeclares a base class's field keeps its unit (a new default
    written without `epochs(...)` would otherwise silently stop being scaled)."""
    hints = typing.get_type_hints(options)
    for option in dataclasses.fields(options):
        unit = option_unit(option)
        if unit is not None and hints[option.name] not in (int, float):
            raise TypeError(f"{options.__name__}.{option.name}: a {unit} option must be an int or a float")
        for base in options.__mro__[1:]:
            inherited = getattr(base, "__dataclass_fields__", {}).get(option.name)
            if inherited is not None and option_unit(inherited) != unit:
                raise TypeError(
                    f"{options.__name__}.{option.name} redeclares {base.__name__}.{option.name} without its unit "
                    f"{option_unit(inherited)!r}; declare the default with the same unit helper"
                )


@dataclass(frozen=True)
class OptionRow:
    name: str
    type: str
    default: str
    unit: str


def option_default(option: dataclasses.Field) -> Any:
    """An option's default (its factory called), or dataclasses.MISSING when it has none."""
    return option.default_factory() if option.default_factory is not dataclasses.MISSING else option.default


def option_rows(options: type[MethodOptions]) -> list[OptionRow]:
    """Every option of a method with its type, default and schedule unit, in declaration order."""
    hints = typing.get_type_hints(options)
    rows = []
    for option in dataclasses.fields(options):
        default = option_default(option)
        rows.append(OptionRow(option.name, type_name(hints[option.name]), repr(default), option_unit(option) or ""))
    return rows


def options_markdown(options: type[MethodOptions]) -> list[str]:
    """The option table of a method page (docs/methods/<name>.md), one row per option."""
    rows = option_rows(options)
    if not rows:
        return ["This method has no options."]
    intro = [
        "Set under `method:` in the config or as `method.<option>=<value>`; the bench scales the options with a unit",
        "when a protocol shortens the run. `medsemi list --options` prints the same table.",
        "",
    ]
    body = [
        (f"`{row.name}`", f"`{row.type.replace('|', chr(92) + '|')}`", f"`{row.default}`", row.unit) for row in rows
    ]
    return intro + markdown_table(("option", "type", "default", "unit"), body)


def options_text(options: type[MethodOptions]) -> list[str]:
    """The option table as `medsemi list --options` prints it: name, default, unit and type in aligned columns."""
    rows = [(row.name, row.default, row.unit, row.type) for row in option_rows(options)]
    if not rows:
        return ["  (no options)"]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"  {n:<{widths[0]}}  {d:<{widths[1]}}  {u:<{widths[2]}}  {t}" for n, d, u, t in rows]
