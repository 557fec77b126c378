"""Leaderboard: per method x budget x checkpoint rule, the median and min-max over seeds of every test metric.

Inputs are what each run folder already holds (eval/test_<rule>/summary.csv from `evaluate_run`, log.csv
from the trainer, bench.json from the worker), so a leaderboard can be rebuilt from folders alone.
Outputs in the bench folder: leaderboard.md (Dice, Jaccard, HD95, ASD per class and mean, and the verdicts
against `supervised`), leaderboard.csv (tidy: every metric, including the strict and millimetre variants,
median/min/max over seeds), seeds.csv (tidy, one value per run: protocol, method, labeled, checkpoint, seed,
class, metric, value; with, per seed, the mean Dice minus `supervised`'s on the same seed as metric
`dice_minus_supervised`), verdicts.csv (per method, budget and rule: the paired seeds, median/min/max of those
differences, the verdict), runs.csv (cost and validation of each run), dice_vs_budget.png and
learning_curves.png.

A leaderboard can also be extended after its folders are gone: `BenchSpec.recorded` names the folder of an
earlier leaderboard's seeds.csv, runs.csv and leaderboard.csv (the text outputs that get committed), and every
run they hold whose own folder is not complete enters the tables from them, with status `recorded` (no learning
curve: log.csv is not among them).

Verdicts are paired by seed (same budget and rule): a run and the `supervised` run of its seed share the seed's
labeled batches (order and augmentation), so with a few seeds the per-seed differences can say "better on every
seed", which two medians over seeds with overlapping ranges cannot.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medsemi.bench.grid import BenchError, BenchSpec, RunSpec
from medsemi.bench.worker import RULES, is_complete, read_record, summary_csv
from medsemi.engine.checkpoint import atomic_write_text
from medsemi.tables import markdown_table

DISPLAY_METRICS = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
"""The papers' columns (empty prediction scores 0, HD95/ASD in voxels); the CSV carries every variant."""

PERCENT = ("dice", "jaccard")
RULE_TITLES = {name: rule.title for name, rule in RULES.items()}
MEAN = "mean"
BASELINE = "supervised"
"""Every other method is paired with it, seed by seed, on the mean Dice."""
PAIRED_METRIC = f"dice_minus_{BASELINE}"
RECORDED = "recorded"
COST_COLUMNS = ("train_wall_s", "eval_wall_s", "peak_rss_mb", "peak_cuda_mb")
"""The numeric cost of a run, as `run_cost` measures it and runs.csv keeps it."""
"""The status of a run taken from an earlier leaderboard's tidy outputs instead of its folder."""


@dataclass
class RunResult:
    """What one run folder says: test summaries per rule ({class: {metric: value}}, class "mean" included),
    its cost, and its validation curve (global step, val Dice)."""

    run: RunSpec
    status: str
    summaries: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    test_cases: dict[str, int] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    iterations: int = 0
    best_step: int | None = None
    best_val_dice: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_summary(path: Path) -> tuple[dict[str, dict[str, float]], int]:
    """{class: {metric: value}} of an evaluation summary.csv and its number of cases.

    The metric columns are those after `class` (the leading columns repeat the header), minus the count
    of empty predictions.
    """
    rows = read_csv_rows(path)
    columns = list(rows[0])
    metrics = [c for c in columns[columns.index("class") + 1 :] if c != "empty_pred"]
    table = {row["class"]: {m: float(row[m]) for m in metrics} for row in rows}
    return table, int(rows[0].get("cases") or 0)


def read_curve(path: Path) -> tuple[list[tuple[int, float]], int, int | None, float | None]:
    """(global step, val Dice) pairs, the iterations done, and the best validation of the last stage (the
    trainer's rule: first strict maximum)."""
    if not path.exists():
        return [], 0, None, None
    rows = read_csv_rows(path)
    if not rows:
        return [], 0, None, None
    curve = [(int(r["global_step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
    final = rows[-1]["stage"]
    best_step, best = None, None
    for row in rows:
        if row["stage"] == final and row.get("val_dice") and (best is None or float(row["val_dice"]) > best):
            best_step, best = int(row["step"]), float(row["val_dice"])
    return curve, int(rows[-1]["global_step"]), best_step, best


def run_cost(run_dir: Path) -> dict[str, Any]:
    """Training wall time summed over attempts (a resumed run pays both parts), peak memory as the maximum."""
    record = read_record(run_dir)
    attempts = record["attempts"]
    trained = [a for a in attempts if a["steps"] > 0]

    def peak(key: str) -> float | None:
        values = [a[key] for a in trained if a[key] is not None]
        return max(values) if values else None

    return {
        "train_wall_s": sum(a["train_wall_s"] for a in trained) if trained else None,
        "eval_wall_s": sum(e["wall_s"] for e in record["evaluations"].values()) or None,
        "peak_rss_mb": peak("peak_rss_mb"),
        "peak_cuda_mb": peak("peak_cuda_mb"),
        "device": attempts[-1]["device"] if attempts else "",
        "threads": trained[-1].get("threads") if trained else None,
        "attempts": len(attempts),
    }


def collect(run: RunSpec, test_limit: int | None, failed: dict[Path, str]) -> RunResult:
    complete = is_complete(run.run_dir, test_limit)
    status = "complete" if complete else "failed" if run.run_dir in failed else "incomplete"
    result = RunResult(run, status)
    result.curve, result.iterations, result.best_step, result.best_val_dice = read_curve(run.run_dir / "log.csv")
    if not complete:
        return result
    for rule in RULES:
        path = summary_csv(run.run_dir, rule)
        if path.exists():
            result.summaries[rule], result.test_cases[rule] = read_summary(path)
    result.cost = run_cost(run.run_dir)
    return result


def optional_float(text: str) -> float | None:
    """A number read back from a tidy CSV, where an empty cell means none."""
    return float(text) if text else None


def _recorded_rows(folder: Path, name: str, protocol: str) -> list[dict[str, str]]:
    path = Path(folder) / name
    if not path.exists():
        raise BenchError(f"{path}: missing; --recorded needs the seeds.csv, runs.csv and leaderboard.csv of a bench")
    rows = read_csv_rows(path)
    others = {row["protocol"] for row in rows} - {protocol}
    if others:
        raise BenchError(f"{path}: holds protocol {', '.join(sorted(others))}, this bench is {protocol!r}")
    return rows


def recorded_results(folder: Path, runs: Iterable[RunSpec], protocol: str) -> dict[Path, RunResult]:
    """The grid runs an earlier leaderboard's tidy outputs hold, keyed by the grid's run folder: test summaries
    from seeds.csv, cost and validation from runs.csv, test cases per rule from leaderboard.csv."""
    summaries: dict[tuple[str, int, int], dict[str, dict[str, dict[str, float]]]] = {}
    for row in _recorded_rows(folder, "seeds.csv", protocol):
        if row["metric"] != PAIRED_METRIC:
            key = (row["method"], int(row["labeled"]), int(row["seed"]))
            rule = summaries.setdefault(key, {}).setdefault(row["checkpoint"], {})
            rule.setdefault(row["class"], {})[row["metric"]] = float(row["value"])
    cases = {
        (row["method"], int(row["labeled"]), row["checkpoint"]): int(row["test_cases"])
        for row in _recorded_rows(folder, "leaderboard.csv", protocol)
        if row["class"] == MEAN and row["metric"] == "dice"
    }
    records = {
        (row["method"], int(row["labeled"]), int(row["seed"])): row
        for row in _recorded_rows(folder, "runs.csv", protocol)
        if row["status"] in ("complete", RECORDED)
    }
    results = {}
    for run in runs:
        key = (run.method, run.budget, run.seed)
        if key not in records or key not in summaries:
            continue
        record = records[key]
        result = RunResult(dataclasses.replace(run, run_dir=Path(record["run_dir"])), RECORDED)
        result.summaries = summaries[key]
        result.test_cases = {rule: cases[(run.method, run.budget, rule)] for rule in result.summaries}
        result.cost = {name: optional_float(record[name]) for name in (*COST_COLUMNS, "threads")}
        result.cost["device"] = record["device"]
        result.iterations = int(record["iterations"])
        result.best_step = int(record["best_step"]) if record["best_step"] else None
        result.best_val_dice = optional_float(record["best_val_dice"])
        results[run.run_dir] = result
    return results


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def aggregate(results: Iterable[RunResult], protocol: str) -> list[dict[str, Any]]:
    """Tidy rows, one per (method, budget, rule, class, metric): median/min/max over the seeds having it."""
    groups: dict[tuple[str, int, str], list[RunResult]] = {}
    for result in results:
        for rule in result.summaries:
            groups.setdefault((result.run.method, result.run.budget, rule), []).append(result)
    rows = []
    for (method, budget, rule), members in groups.items():
        classes = list(dict.fromkeys(c for m in members for c in m.summaries[rule]))
        for name in classes:
            metrics = list(dict.fromkeys(k for m in members for k in m.summaries[rule].get(name, {})))
            for metric in metrics:
                present = [m for m in members if metric in m.summaries[rule].get(name, {})]
                rows.append(
                    {
                        "protocol": protocol,
                        "method": method,
                        "labeled": budget,
                        "checkpoint": rule,
                        "class": name,
                        "metric": metric,
                        **_spread([m.summaries[rule][name][metric] for m in present]),
                        "seeds": " ".join(str(m.run.seed) for m in present),
                        "n_seeds": len(present),
                        "test_cases": min(m.test_cases[rule] for m in present),
                    }
                )
    return rows


def paired_differences(results: Iterable[RunResult]) -> dict[tuple[str, int, str], dict[int, float]]:
    """Per (method, budget, rule) other than the baseline: {seed: its mean Dice minus the baseline's on the
    same seed, budget and rule}, over the seeds both have (empty when the baseline has none of them)."""
    dice = {
        (r.run.method, r.run.budget, rule, r.run.seed): summary[MEAN]["dice"]
        for r in results
        for rule, summary in r.summaries.items()
        if "dice" in summary.get(MEAN, {})
    }
    differences: dict[tuple[str, int, str], dict[int, float]] = {}
    for (method, budget, rule, seed), value in dice.items():
        if method == BASELINE:
            continue
        paired = differences.setdefault((method, budget, rule), {})
        baseline = dice.get((BASELINE, budget, rule, seed))
        if baseline is not None:
            paired[seed] = value - baseline
    return differences


def verdict(differences: Sequence[float]) -> str:
    """'better/worse on every seed' only when every paired seed agrees; one seed is named as such."""
    if not differences:
        return "no baseline"
    signs = {float(np.sign(d)) for d in differences}
    if len(signs) > 1:
        return "mixed"
    word = {1.0: "better", -1.0: "worse"}.get(signs.pop(), "tied")
    return f"{word} (1 seed)" if len(differences) == 1 else f"{word} on every seed"


def verdict_rows(differences: dict[tuple[str, int, str], dict[int, float]], protocol: str) -> list[dict[str, Any]]:
    """One row per (method, budget, rule): the spread of the paired differences (None without a baseline),
    in the columns `format_cell` reads, and the verdict."""
    rows = []
    for (method, budget, rule), by_seed in differences.items():
        seeds = sorted(by_seed)
        values = [by_seed[seed] for seed in seeds]
        rows.append(
            {
                "protocol": protocol,
                "method": method,
                "labeled": budget,
                "checkpoint": rule,
                "baseline": BASELINE,
                "metric": "dice",
                **(_spread(values) if values else dict.fromkeys(("median", "min", "max"))),
                "n_seeds": len(values),
                "seeds": " ".join(map(str, seeds)),
                "verdict": verdict(values),
            }
        )
    return rows


def seed_rows(
    results: Iterable[RunResult], differences: dict[tuple[str, int, str], dict[int, float]], protocol: str
) -> list[dict[str, Any]]:
    """Tidy per-run values: every (rule, class, metric) of every run, then every paired difference."""
    rows = [
        {
            "protocol": protocol,
            "method": r.run.method,
            "labeled": r.run.budget,
            "checkpoint": rule,
            "seed": r.run.seed,
            "class": name,
            "metric": metric,
            "value": value,
        }
        for r in results
        for rule, summary in r.summaries.items()
        for name, metrics in summary.items()
        for metric, value in metrics.items()
    ]
    rows += [
        {
            "protocol": protocol,
            "method": method,
            "labeled": budget,
            "checkpoint": rule,
            "seed": seed,
            "class": MEAN,
            "metric": PAIRED_METRIC,
            "value": value,
        }
        for (method, budget, rule), by_seed in differences.items()
        for seed, value in sorted(by_seed.items())
    ]
    return rows


def format_cell(row: dict[str, Any] | None, signed: bool = False) -> str:
    """A leaderboard row's median in display units, with [min, max] over seeds when there are several;
    `signed` writes the sign of positive values too (differences)."""
    if row is None:
        return "-"
    scale, digits = (100.0, 1) if row["metric"] in PERCENT else (1.0, 2)
    form = f"{'+' if signed else ''}.{digits}f"
    median = f"{row['median'] * scale:{form}}"
    if row["n_seeds"] == 1:
        return median
    return f"{median} [{row['min'] * scale:{form}}, {row['max'] * scale:{form}}]"


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _paired_table(
    groups: list[tuple[str, int]], rule: str, verdicts: dict[tuple[str, int, str], dict[str, Any]]
) -> list[str]:
    header = ["method", "labeled", "paired seeds", "n", f"Dice - {BASELINE} (points)", "verdict"]
    body = []
    for method, budget in groups:
        row = verdicts.get((method, budget, rule))
        if row is None:
            continue
        seeds, n_seeds, difference, verdict_text = paired_cells(row)
        body.append([method, str(budget), seeds, n_seeds, difference, verdict_text])
    return markdown_table(header, body)


def paired_cells(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """A verdicts row as text: its paired seeds, their number, the difference in points, the verdict."""
    difference = format_cell(row if row["n_seeds"] else None, signed=True)
    return row["seeds"].replace(" ", ", ") or "-", str(row["n_seeds"]), difference, row["verdict"]


def _markdown(
    spec: BenchSpec,
    results: list[RunResult],
    rows: list[dict[str, Any]],
    verdicts: list[dict[str, Any]],
    failed: dict[Path, str],
) -> str:
    seeds = ", ".join(str(s) for s in spec.seeds)
    index = {(r["method"], r["labeled"], r["checkpoint"], r["class"], r["metric"]): r for r in rows}
    paired = {(r["method"], r["labeled"], r["checkpoint"]): r for r in verdicts}
    iterations = sorted({r.iterations for r in results if r.status in ("complete", RECORDED)})
    lines = [
        f"# Leaderboard: protocol `{spec.protocol.name}` on {spec.dataset}",
        "",
        f"- protocol `{spec.protocol.name}`: {spec.protocol.description}",
        f"- methods: {', '.join(spec.methods)}; labeled budgets: {', '.join(map(str, spec.budgets))} "
        f"patients; seeds: {seeds}",
        f"- iterations done per run (incl. pre-training stages): {', '.join(map(str, iterations)) or '-'}"
        + (f"; --iterations {spec.iterations}" if spec.iterations else ""),
        f"- configs: {spec.config_folder}/<method>.yaml + protocol overrides"
        + (f" + {' '.join(spec.overrides)}" if spec.overrides else ""),
        f"- test split: {'first ' + str(spec.test_limit) + ' cases' if spec.test_limit else 'all cases'}",
        *(
            [f"- runs with status `{RECORDED}`: taken from {spec.recorded} (their folders are not here)"]
            if any(r.status == RECORDED for r in results)
            else []
        ),
        "- cells: median [min, max] over seeds; Dice and Jaccard in %, HD95 and ASD in voxels, papers' "
        "convention (an empty prediction of a present class scores 0 on all four); leaderboard.csv also "
        "holds the strict and millimetre variants",
        f"- generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
    ]
    for rule in RULES:
        groups = [(m, b) for b in spec.budgets for m in spec.methods if (m, b, rule, MEAN, "dice") in index]
        if not groups:
            continue
        classes = list(dict.fromkeys(r["class"] for r in rows if r["checkpoint"] == rule and r["class"] != MEAN))
        title = RULE_TITLES[rule]
        lines += ["", f"## Checkpoint rule: {title} (protocol `{spec.protocol.name}`, seeds {seeds})", ""]
        header = [
            "method",
            "labeled",
            "seeds",
            "test cases",
            *DISPLAY_METRICS.values(),
            *(f"Dice {c}" for c in classes),
        ]
        body = []
        for method, budget in groups:
            mean = index[(method, budget, rule, MEAN, "dice")]
            body.append(
                [
                    method,
                    str(budget),
                    f"{mean['n_seeds']}/{len(spec.seeds)}",
                    str(mean["test_cases"]),
                    *(format_cell(index.get((method, budget, rule, MEAN, m))) for m in DISPLAY_METRICS),
                    *(format_cell(index.get((method, budget, rule, c, "dice"))) for c in classes),
                ]
            )
        lines += ["Mean over classes:", "", *markdown_table(header, body), ""]
        if any(method != BASELINE for method, _ in groups):
            lines += [
                f"Paired with `{BASELINE}` ({title}, protocol `{spec.protocol.name}`, seeds {seeds}): per seed, the "
                f"method's mean Dice minus `{BASELINE}`'s on the same seed; median [min, max] over the seeds both "
                "have, in Dice points:",
                "",
                *_paired_table(groups, rule, paired),
                "",
            ]
        lines += [f"Per class ({title}, protocol `{spec.protocol.name}`, seeds {seeds}):", ""]
        per_class = [
            [
                method,
                str(budget),
                name,
                *(format_cell(index.get((method, budget, rule, name, m))) for m in DISPLAY_METRICS),
            ]
            for method, budget in groups
            for name in classes
        ]
        lines += markdown_table(["method", "labeled", "class", *DISPLAY_METRICS.values()], per_class)
    lines += [
        "",
        f"## Runs (protocol `{spec.protocol.name}`)",
        "",
        "Train time: wall-clock seconds of training (data loading and validation included; summed over "
        "resumed attempts). Peak RSS: the training process's maximum resident set size (each run trains in "
        "its own process; '-' when runs shared one). Peak CUDA: torch.cuda.max_memory_allocated. Threads: the "
        "run's torch threads ('-': not recorded); runs trained side by side (`--jobs`) share the cores, so "
        "their train times are not timings of a run alone.",
        "",
    ]
    body = [
        [
            r.run.method,
            str(r.run.budget),
            str(r.run.seed),
            r.status,
            str(r.iterations),
            _fmt(r.cost.get("train_wall_s")),
            _fmt(r.cost.get("eval_wall_s")),
            _fmt(r.cost.get("peak_rss_mb")),
            _fmt(r.cost.get("peak_cuda_mb")),
            r.cost.get("device", ""),
            _fmt(r.cost.get("threads")),
            "-" if r.best_step is None else str(r.best_step),
            "-" if r.best_val_dice is None else f"{100 * r.best_val_dice:.1f}",
        ]
        for r in results
    ]
    header = [
        "method",
        "labeled",
        "seed",
        "status",
        "iterations",
        "train s",
        "eval s",
        "peak RSS MiB",
        "peak CUDA MiB",
        "device",
        "threads",
        "best step",
        "best val Dice %",
    ]
    lines += markdown_table(header, body)
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {path}: {message}" for path, message in failed.items()]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


LEADERBOARD_COLUMNS = (
    "protocol",
    "method",
    "labeled",
    "checkpoint",
    "class",
    "metric",
    "median",
    "min",
    "max",
    "n_seeds",
    "seeds",
    "test_cases",
)
SEED_COLUMNS = ("protocol", "method", "labeled", "checkpoint", "seed", "class", "metric", "value")
VERDICT_COLUMNS = (
    "protocol",
    "method",
    "labeled",
    "checkpoint",
    "baseline",
    "metric",
    "median",
    "min",
    "max",
    "n_seeds",
    "seeds",
    "verdict",
)
RUN_COLUMNS = (
    "protocol",
    "method",
    "labeled",
    "seed",
    "status",
    "iterations",
    "train_wall_s",
    "eval_wall_s",
    "peak_rss_mb",
    "peak_cuda_mb",
    "device",
    "threads",
    "best_step",
    "best_val_dice",
    "run_dir",
)


def _run_rows(results: list[RunResult], protocol: str) -> list[dict[str, Any]]:
    return [
        {
            "protocol": protocol,
            "method": r.run.method,
            "labeled": r.run.budget,
            "seed": r.run.seed,
            "status": r.status,
            "iterations": r.iterations,
            **{key: r.cost.get(key) for key in COST_COLUMNS},
            "device": r.cost.get("device", ""),
            "threads": r.cost.get("threads"),
            "best_step": r.best_step,
            "best_val_dice": r.best_val_dice,
            "run_dir": str(r.run.run_dir),
        }
        for r in results
    ]


def write_leaderboard(spec: BenchSpec, runs: list[RunSpec], failed: dict[Path, str]) -> list[Path]:
    """Write the tables and plots of whatever the run folders hold now; returns the files written."""
    from medsemi.bench.plots import plot_dice_vs_budget, plot_learning_curves

    out = Path(spec.out)
    results = [collect(run, spec.test_limit, failed) for run in runs]
    if spec.recorded is not None:
        recorded = recorded_results(spec.recorded, runs, spec.protocol.name)
        results = [recorded.get(r.run.run_dir, r) if r.status != "complete" else r for r in results]
    rows = aggregate(results, spec.protocol.name)
    differences = paired_differences(results)
    verdicts = verdict_rows(differences, spec.protocol.name)
    files = {
        "leaderboard.md": _markdown(spec, results, rows, verdicts, failed),
        "leaderboard.csv": csv_text(rows, LEADERBOARD_COLUMNS),
        "seeds.csv": csv_text(seed_rows(results, differences, spec.protocol.name), SEED_COLUMNS),
        "verdicts.csv": csv_text(verdicts, VERDICT_COLUMNS),
        "runs.csv": csv_text(_run_rows(results, spec.protocol.name), RUN_COLUMNS),
    }
    for name, text in files.items():
        atomic_write_text(out / name, text)
    title = f"protocol {spec.protocol.name}, {spec.dataset}, seeds {', '.join(map(str, spec.seeds))}"
    plot_dice_vs_budget(rows, out / "dice_vs_budget.png", title)
    plot_learning_curves(results, out / "learning_curves.png", title)
    return [out / name for name in (*files, "dice_vs_budget.png", "learning_curves.png")]
