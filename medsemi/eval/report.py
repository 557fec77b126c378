"""Per-case tables, summaries and figures of an evaluation, written atomically into the run folder.

Averaging order (the papers'): each case gives one value per class and metric; a class's value is the mean
over cases; the reported mean is the mean over classes of those per-class means.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medsemi.engine.checkpoint import atomic_path
from medsemi.tables import markdown_table

KEY_COLUMNS = ("case_id", "patient", "class")
FLAG_COLUMNS = ("empty_pred", "empty_gt")
COUNT_COLUMN = "cases"
"""Per-patient rows: how many cases a patient's means are over (not a metric)."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the target folder, then rename: readers never see half a file."""
    with atomic_path(Path(path)) as temporary:
        write(temporary)


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Key columns first, then every other field in order of first appearance."""
    seen = dict.fromkeys(KEY_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _csv_text(header: list[str], rows: list[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_case_table(rows: list[dict[str, Any]], path: Path) -> None:
    """One CSV line per (case, class) with every metric and the empty-mask flags."""
    _write_text(path, _csv_text(_columns(rows), rows))


def write_patient_table(rows: list[dict[str, Any]], path: Path) -> None:
    """One CSV line per (patient, class): its number of cases and the mean of every metric over them."""
    _write_text(path, _csv_text(list(dict.fromkeys(key for row in rows for key in row)), rows))


def patient_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Case rows (with a `patient`) -> one row per (patient, class), each metric the mean over its cases."""
    metrics = _metric_names(rows)
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["patient"], row["class"]), []).append(row)
    return [
        {"patient": patient, "class": name, COUNT_COLUMN: len(group)}
        | {m: float(np.mean([r[m] for r in group])) for m in metrics}
        for (patient, name), group in groups.items()
    ]


def _metric_names(rows: list[dict[str, Any]]) -> list[str]:
    excluded = {*KEY_COLUMNS, *FLAG_COLUMNS, COUNT_COLUMN}
    return [
        name
        for name in _columns(rows)
        if name not in excluded
        and all(isinstance(row.get(name), int | float) and not isinstance(row.get(name), bool) for row in rows)
    ]


def summarise(rows: list[dict[str, Any]], unit: str = "case_id") -> dict[str, Any]:
    """Per-class means over cases (or over patients, for `patient_rows` and unit "patient"), their mean over
    classes, and how often a class was predicted empty.

    Returns {"per_class": {class: {metric: mean}}, "mean": {metric: mean over classes},
    "std": {class: {metric: sd over cases}}, "empty_pred": {class: count}, "empty_gt": {class: count},
    "num_cases": n (distinct `unit` values), "classes": [...]}. Every row must carry every metric (no silent
    NaN dropping).
    """
    metrics = _metric_names(rows)
    by_class: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    per_class = {c: {m: float(np.mean([r[m] for r in group])) for m in metrics} for c, group in by_class.items()}
    spread = {c: {m: float(np.std([r[m] for r in group])) for m in metrics} for c, group in by_class.items()}
    mean = {m: float(np.mean([values[m] for values in per_class.values()])) for m in metrics}
    return {
        "per_class": per_class,
        "mean": mean,
        "std": spread,
        "empty_pred": {c: sum(bool(r.get("empty_pred")) for r in group) for c, group in by_class.items()},
        "empty_gt": {c: sum(bool(r.get("empty_gt")) for r in group) for c, group in by_class.items()},
        "num_cases": len({row[unit] for row in rows}),
        "classes": list(by_class),
    }


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {"class": c, **values, "empty_pred": summary["empty_pred"][c]} for c, values in summary["per_class"].items()
    ]
    rows.append({"class": "mean", **summary["mean"], "empty_pred": sum(summary["empty_pred"].values())})
    return rows


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(
    summary: dict[str, Any], path_md: Path, path_csv: Path, header: Mapping[str, Any] | None = None
) -> None:
    """Markdown table (header lines name protocol, seed, checkpoint rule, ...) and a tidy CSV.

    The CSV repeats the header entries as leading columns on every line, so tables of many runs concatenate.
    """
    header = dict(header or {})
    rows = _summary_rows(summary)
    columns = ["class", *summary["mean"], "empty_pred"]
    units = (
        "hd95/asd in voxels, *_mm in millimetres"
        if any(name.endswith("_mm") for name in summary["mean"])
        else "hd95/asd in pixels/voxels; no *_mm columns: the spacing is unknown (declare it, dataset-format.md)"
    )
    lines = ["# Evaluation summary", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        f"- cases: {summary['num_cases']}; metrics averaged per class over cases, then over classes",
        "- dice/jaccard/hd95/asd: papers' convention (empty prediction scores 0); *_strict: empty prediction",
        f"  scores dice 0 and hd95/asd = image diagonal; {units}",
        "",
        *_table(columns, rows),
    ]
    per_patient = summary.get("per_patient")
    if per_patient is not None:
        lines += ["", "## Per patient", ""]
        if per_patient["num_cases"] == summary["num_cases"]:
            lines.append("- one case per patient: the per-patient means are the per-case ones above")
        else:
            lines += [
                f"- patients: {per_patient['num_cases']}; each patient's value is the mean over its cases "
                "(patients.csv), then averaged per class over patients, then over classes",
                "",
                *_table(["class", *per_patient["mean"]], _summary_rows(per_patient)),
            ]
    _write_text(path_md, "\n".join(lines) + "\n")
    _write_text(path_csv, _csv_text([*header, *columns], [{**header, **row} for row in rows]))


def _table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    return markdown_table(columns, ([_format(row.get(col, "")) for col in columns] for row in rows))


def plot_case_dice(rows: list[dict[str, Any]], path: Path, metric: str = "dice") -> None:
    """Strip plot of the per-case `metric`, one column per class with its mean marked: shows outlier cases.

    Drawn on a bare `Figure` (Agg canvas), so no pyplot state or GUI backend is involved.
    """
    classes = list(dict.fromkeys(row["class"] for row in rows))
    jitter = np.random.default_rng(0)
    figure = Figure(figsize=(1.2 + 1.3 * len(classes), 3.5))
    axis = figure.subplots()
    for position, name in enumerate(classes):
        values = [row[metric] for row in rows if row["class"] == name]
        axis.scatter(position + jitter.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7)
        axis.hlines(np.mean(values), position - 0.3, position + 0.3, color="black")
    axis.set_xticks(range(len(classes)), [str(c) for c in classes])
    axis.set_ylabel(metric)
    axis.set_title(f"per-case {metric} ({len({row['case_id'] for row in rows})} cases)")
    figure.tight_layout()
    _atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
