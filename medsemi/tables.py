"""The one Markdown table layout of every report medsemi writes (evaluation summaries, leaderboards, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    """The table's lines: header, separator, one line per row of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]
