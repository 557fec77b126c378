"""The training log of a run folder, one row per iteration, written append-only.

Rows are appended to log.jsonl (one JSON object a line) before every `last.pt` is written, so the log
always reaches at least as far as the checkpoint; a resumed run first drops the rows after its checkpoint's
global step (those of iterations it trains again), so a killed run's log holds each iteration once. When the
run finishes, log.csv (one column per key, the familiar table) is written once from the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsemi.engine.checkpoint import atomic_write_text

LOG_ROWS = "log.jsonl"
LOG_TABLE = "log.csv"
LOG_FIRST = ("stage", "step", "global_step", "lr", "loss", "val_dice")
"""log.csv's leading columns; the others (loss terms, diagnostics) follow in alphabetical order."""


class TrainingLog:
    """The run's rows in memory (the learning-curve plot draws them all) and their append-only file.

    `enabled=False` (every rank but 0 under torchrun) keeps nothing and writes nothing.
    """

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._written = 0

    def continue_from(self, global_step: int, legacy_history: Sequence[dict[str, Any]] | None = None) -> None:
        """Keep the logged rows up to `global_step` (where the run resumes) and rewrite the file with them.

        legacy_history: the rows a checkpoint written before log.jsonl existed carries (TrainState.history),
        used when the folder has no log.jsonl.
        """
        if not self.enabled:
            return
        path = self.run_dir / LOG_ROWS
        rows = read_rows(path) if path.exists() else list(legacy_history or [])
        self.rows = [row for row in rows if row["global_step"] <= global_step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in self.rows))
        self._written = len(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.rows.append(row)

    def flush(self) -> None:
        """Append the rows not yet on disk to log.jsonl (synced, so they outlive a crash)."""
        if not self.enabled or self._written == len(self.rows):
            return
        with open(self.run_dir / LOG_ROWS, "a") as handle:
            handle.write("".join(json.dumps(row) + "\n" for row in self.rows[self._written :]))
            handle.flush()
            os.fsync(handle.fileno())
        self._written = len(self.rows)

    def write_table(self) -> None:
        """log.csv: a column per key of any row, floats to 6 significant digits, blank where a row lacks one."""
        if not self.enabled:
            return
        columns = sorted({key for row in self.rows for key in row}, key=_column_order)
        lines = [",".join(columns)]
        lines += [",".join(_format(row.get(column, "")) for column in columns) for row in self.rows]
        atomic_write_text(self.run_dir / LOG_TABLE, "\n".join(lines) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """log.jsonl's rows; a last line cut off by a kill during the append is left out."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _column_order(column: str) -> tuple[int, str]:
    return (LOG_FIRST.index(column) if column in LOG_FIRST else len(LOG_FIRST), column)


def _format(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
