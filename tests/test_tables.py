"""The one Markdown table layout (medsemi.tables) that every report, leaderboard and benchmark page uses."""

from __future__ import annotations

from medsemi.tables import markdown_table


def test_markdown_table_layout_is_unchanged() -> None:
    """Committed leaderboards are regenerated from it: the layout must stay byte for byte."""
    lines = markdown_table(["method", "Dice"], [["supervised", "80.1"], ["bcp", "88.0 [87.5, 88.4]"]])
    assert "\n".join(lines) == ("| method | Dice |\n|---|---|\n| supervised | 80.1 |\n| bcp | 88.0 [87.5, 88.4] |")
    assert markdown_table(["a"], []) == ["| a |", "|---|"]
