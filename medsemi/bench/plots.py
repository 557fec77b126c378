"""Leaderboard figures, drawn on bare matplotlib `Figure`s (Agg canvas: no pyplot state, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib import rcParams
from matplotlib.figure import Figure

from medsemi.bench.worker import RULES
from medsemi.engine.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from medsemi.bench.leaderboard import RunResult


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(Path(path), buffer.getvalue())


def _colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every panel and figure (matplotlib's default cycle)."""
    palette = rcParams["axes.prop_cycle"].by_key()["color"]
    return {method: palette[i % len(palette)] for i, method in enumerate(methods)}


def plot_dice_vs_budget(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Median test Dice (mean of classes) against the labeled budget, min-max over seeds as error bars."""
    mean_dice = [r for r in rows if r["class"] == "mean" and r["metric"] == "dice"]
    rules = [rule for rule in RULES if any(r["checkpoint"] == rule for r in mean_dice)] or ["best"]
    methods = list(dict.fromkeys(r["method"] for r in mean_dice))
    colours = _colours(methods)
    figure = Figure(figsize=(max(6.5, 4.5 * len(rules)), 3.8))
    axes = figure.subplots(1, len(rules), squeeze=False)[0]
    for axis, rule in zip(axes, rules, strict=True):
        for method in methods:
            points = sorted(
                (r["labeled"], r["median"], r["min"], r["max"])
                for r in mean_dice
                if r["method"] == method and r["checkpoint"] == rule
            )
            if not points:
                continue
            budgets, median, low, high = (list(values) for values in zip(*points, strict=True))
            errors = [
                [m - lo for m, lo in zip(median, low, strict=True)],
                [h - m for m, h in zip(median, high, strict=True)],
            ]
            axis.errorbar(budgets, median, yerr=errors, marker="o", capsize=3, label=method, color=colours[method])
        axis.set_xticks(sorted({r["labeled"] for r in mean_dice}))
        axis.set_xlabel("labeled patients")
        axis.set_ylabel("test Dice (mean over classes)")
        axis.set_title(RULES[rule].title, fontsize=10)
        axis.grid(alpha=0.3)
        if methods:
            axis.legend(fontsize=8)
    figure.suptitle(f"Dice vs labeled budget ({title}; median, min-max over seeds)", fontsize=10)
    _save(figure, path)


def plot_learning_curves(results: list[RunResult], path: Path, title: str) -> None:
    """Validation Dice against the global iteration (pre-training stages included), one panel per budget, one
    line per run, coloured by method."""
    budgets = sorted({r.run.budget for r in results}) or [0]
    methods = list(dict.fromkeys(r.run.method for r in results))
    colours = _colours(methods)
    figure = Figure(figsize=(max(6.5, 4.5 * len(budgets)), 3.8))
    axes = figure.subplots(1, len(budgets), squeeze=False)[0]
    for axis, budget in zip(axes, budgets, strict=True):
        labelled: set[str] = set()
        for result in results:
            if result.run.budget != budget or not result.curve:
                continue
            steps, dice = zip(*result.curve, strict=True)
            method = result.run.method
            axis.plot(
                steps,
                dice,
                color=colours[method],
                alpha=0.8,
                linewidth=1,
                label=None if method in labelled else method,
            )
            labelled.add(method)
        axis.set_xlabel("iteration")
        axis.set_ylabel("val Dice")
        axis.set_title(f"{budget} labeled", fontsize=10)
        axis.grid(alpha=0.3)
        if labelled:
            axis.legend(fontsize=8)
    figure.suptitle(f"Learning curves ({title}; one line per seed)", fontsize=10)
    _save(figure, path)
