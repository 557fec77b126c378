"""Method pages: the generated block comes from a finished bench, and hand-written prose around it survives."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from medsemi.bench.grid import BenchSpec
from medsemi.bench.method_pages import MEASURED_BEGIN, MEASURED_END, BenchResults, PageError, main, refresh
from medsemi.bench.runner import run_bench
from medsemi.bench.worker import RULES
from tests.bench.tiny_protocol import REPO, TINY


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pages") / "bench"
    spec = BenchSpec(
        TINY, ("supervised", "mean_teacher"), (2,), (1, 2), out, dataset="demo", config_dir=REPO / "configs/demo"
    )
    run_bench(spec, isolate=False, report=lambda _: None)
    torch.set_num_threads(threads)
    return out


def _page(folder: Path, method: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    page = folder / f"{method}.md"
    page.write_text(body)
    return page


def _mean_dice(bench: Path, method: str, rule: str) -> dict[str, str]:
    with open(bench / "leaderboard.csv", newline="") as handle:
        return next(
            row
            for row in csv.DictReader(handle)
            if (row["method"], row["checkpoint"], row["class"], row["metric"]) == (method, rule, "mean", "dice")
        )


def test_block_is_replaced_from_the_leaderboard_and_prose_survives(bench: Path, tmp_path: Path) -> None:
    prose_before, prose_after = "# Mean teacher\n\nIntro.\n\n## Measured here\n\n", "\n\nWhat the log shows.\n"
    page = _page(tmp_path, "mean_teacher", f"{prose_before}{MEASURED_BEGIN}\nstale 99.9\n{MEASURED_END}{prose_after}")

    refresh(bench, tmp_path, ["mean_teacher"], conditions="CPU, one run at a time")
    text = page.read_text()
    assert text.startswith(prose_before) and text.endswith(prose_after) and "stale" not in text
    assert "Conditions: CPU, one run at a time." in text and "Seeds: 1, 2" in text
    assert "--methods supervised,mean_teacher --budgets 2 --seeds 1,2" in text
    for method in ("supervised", "mean_teacher"):
        row = _mean_dice(bench, method, "best")
        cell = f"{100 * float(row['median']):.1f} [{100 * float(row['min']):.1f}, {100 * float(row['max']):.1f}]"
        assert f"| {method} | 2 | best-on-val | {cell} |" in text
    assert "| supervised | 2 | last iterate |" in text and "| mean_teacher | 2 | last iterate |" in text
    with open(bench / "verdicts.csv", newline="") as handle:
        verdict = next(r for r in csv.DictReader(handle) if (r["method"], r["checkpoint"]) == ("mean_teacher", "best"))
    low, mid, high = (100 * float(verdict[key]) for key in ("min", "median", "max"))
    assert f"| 2 | best-on-val | 1, 2 | {mid:+.1f} [{low:+.1f}, {high:+.1f}] | {verdict['verdict']} |" in text
    assert "2 patients, seed 1: 4 iterations" in text and "2 patients, seed 2: 4 iterations" in text

    refresh(bench, tmp_path, ["mean_teacher"], conditions="CPU, one run at a time")
    assert page.read_text() == text


def test_a_page_without_a_block_gets_one_appended(bench: Path, tmp_path: Path) -> None:
    page = _page(tmp_path, "supervised", "# Supervised\n")
    assert main([str(bench), "--pages", str(tmp_path), "--methods", "supervised"]) == 0
    text = page.read_text()
    assert text.startswith("# Supervised\n\n## Measured here\n\n" + MEASURED_BEGIN)
    assert text.count("| supervised |") == len(RULES)  # the baseline once per rule, not twice
    assert "Paired with" not in text  # the baseline has no difference to itself


def test_bad_pages_and_missing_results_are_named(bench: Path, tmp_path: Path) -> None:
    _page(tmp_path, "mean_teacher", f"# Mean teacher\n{MEASURED_BEGIN}\n")
    with pytest.raises(PageError, match="mean_teacher.md: has only one"):
        refresh(bench, tmp_path, ["mean_teacher"])
    _page(tmp_path, "bcp", "# BCP\n")
    with pytest.raises(PageError, match="no finished run of method 'bcp'"):
        refresh(bench, tmp_path, ["bcp"])
    with pytest.raises(PageError, match="fixmatch.md: no page"):
        refresh(bench, tmp_path, ["fixmatch"])
    with pytest.raises(PageError, match="leaderboard.csv: missing"):
        refresh(tmp_path / "nowhere", tmp_path)


def test_a_verdict_without_paired_seeds_is_shown_as_such(bench: Path, tmp_path: Path) -> None:
    """A budget the baseline was not run at leaves the verdict's numbers empty in verdicts.csv."""
    folder = tmp_path / "bench"
    shutil.copytree(bench, folder)
    with open(folder / "verdicts.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    for row in rows:
        row.update(median="", min="", max="", n_seeds="0", seeds="", verdict="no baseline")
    with open(folder / "verdicts.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    page = _page(tmp_path / "pages", "mean_teacher", "# Mean teacher\n")
    refresh(folder, tmp_path / "pages", ["mean_teacher"])
    assert "| 2 | best-on-val | - | - | no baseline |" in page.read_text()


@pytest.mark.parametrize("page", sorted((REPO / "docs/methods").glob("*.md")), ids=lambda page: page.stem)
def test_every_method_page_shows_the_committed_leaderboard(page: Path) -> None:
    """The generated block of each page is what benchmarks/results/quick says now: a rerun of the leaderboard
    that is not carried onto the pages fails here."""
    text = page.read_text()
    block = text[text.index(MEASURED_BEGIN) : text.index(MEASURED_END) + len(MEASURED_END)]
    assert block == BenchResults(REPO / "benchmarks/results/quick").section(page.stem)
