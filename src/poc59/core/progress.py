"""Progress of a long step: a Rich bar on a terminal, plain log lines anywhere else.

A SLURM job's log or a pipe gets lines, never wrapped bar fragments:

    predict: 3 of 40 images (scan_003.tif, 6000 x 4000 px, 2.1 s); elapsed 0:00:07, about 0:01:30 left

one per step (`every_s=0`), or for a step that takes longer than `every_s` seconds, at most one every
`every_s` seconds and the last (a quick one logs nothing: it is done before anyone waits). The time left is the
mean time per step so far times the steps still to do. On a terminal (the stderr console the log lines
share, `poc59.core.logs.log_console`) the same progress is a transient bar; `bar` is there for a nested
task (predict's strips of one scan).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from poc59.core.logs import log_console

EVERY_S = 10.0  # plain lines: at most one this often, and none for a step done sooner


def clock(seconds: float) -> str:
    """H:MM:SS, rounded to the second."""
    return str(timedelta(seconds=round(seconds)))


class Steps:
    """`with Steps(log, "predict", 40, "images") as steps: ... steps.advance("scan_003.tif, 2.1 s")`."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        total: int,
        unit: str,
        every_s: float | None = None,
        console: Console | None = None,
    ) -> None:
        self.log, self.what, self.total, self.unit = log, what, int(total), unit
        self.every_s = EVERY_S if every_s is None else every_s
        self.console = console or log_console()
        self.done = 0
        self.bar: Progress | None = None
        self._task = None
        self._start = self._last = 0.0

    def __enter__(self) -> Steps:
        self._start = self._last = time.perf_counter()
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self._task = self.bar.add_task(self.what, total=self.total)
        return self

    def advance(self, detail: str = "", n: int = 1) -> None:
        """`n` more steps done; `detail` (the item's name, size, time) goes into the plain line."""
        self.done += n
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.advance(self._task, n)
            return
        if now - self._last >= self.every_s or (self.done >= self.total and now - self._start >= self.every_s):
            self._last = now
            self.log.info("%s", self.line(detail, now - self._start))

    def line(self, detail: str, elapsed: float) -> str:
        """The plain line of the module docstring."""
        left = elapsed / self.done * max(self.total - self.done, 0) if self.done else 0.0
        shown = f" ({detail})" if detail else ""
        return (
            f"{self.what}: {self.done} of {self.total} {self.unit}{shown}; "
            f"elapsed {clock(elapsed)}, about {clock(left)} left"
        )

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.stop()
