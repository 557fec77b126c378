"""Progress of long loops: a tqdm bar on a terminal, a plain line every tenth of the work anywhere else.

A bar redraws itself with carriage returns, which a log file or a CI console keeps as one endless line; so
when stderr is not a terminal the same calls print `desc: 30% (300/1000 cases), 12.5 cases/s, 00:56 left`
lines instead (times as [h:]mm:ss), ten per loop at most.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINES = 10
"""Lines a non-interactive progress prints per loop (one per tenth of the work), besides the last."""


class LineProgress:
    """The part of tqdm's interface medsemi uses (update, set_postfix, close), as a line per tenth."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.n = self.start_n = initial
        self.started = time.monotonic()
        self.postfix = ""
        self.printed = self._tenth(initial)

    def _tenth(self, n: int) -> int:
        return n * LINES // self.total if self.total else LINES

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth(self.n) > self.printed:
            self.printed = self._tenth(self.n)
            self._line()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{key} {value}" for key, value in values.items())

    def close(self) -> None:
        if self.n > self.start_n and self.printed < LINES:
            self._line()
            self.printed = LINES

    def _line(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        share = f"{100 * self.n / self.total:.0f}% " if self.total else ""
        parts = [f"{self.desc}: {share}({self.n}/{self.total} {self.unit})", f"{rate:.3g} {self.unit}/s"]
        if rate > 0 and self.n < self.total:
            parts.append(f"{tqdm.format_interval((self.total - self.n) / rate)} left")
        else:
            parts.append(f"{tqdm.format_interval(elapsed)} in all")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)


def progress(total: int, desc: str, *, enabled: bool = True, unit: str = "it", initial: int = 0) -> Any:
    """A progress counter for `total` steps: a tqdm bar on a terminal, `LineProgress` otherwise, a silent
    tqdm when not `enabled`."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


def track(items: Iterable[T], total: int, desc: str, *, enabled: bool = True, unit: str = "it") -> Iterator[T]:
    """`items`, counted by `progress`."""
    counter = progress(total, desc, enabled=enabled, unit=unit)
    try:
        for item in items:
            yield item
            counter.update(1)
    finally:
        counter.close()


def say(line: str) -> None:
    """One line on stdout that does not break a progress bar being drawn on the terminal."""
    tqdm.write(line, file=sys.stdout)
