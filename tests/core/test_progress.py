"""poc59.core.progress.Steps: plain lines in a file (each step, or only for slow ones), a bar on a terminal."""

from __future__ import annotations

import io
import logging
import re

from rich.console import Console

from poc59.core import progress
from poc59.core.progress import Steps, clock

log = logging.getLogger("poc59.test")


def _clock(monkeypatch, times):
    ticks = iter(times)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(ticks))


def test_every_step_a_line_with_the_time_left(monkeypatch, caplog):
    _clock(monkeypatch, [0.0, 2.0, 4.0, 6.0])
    caplog.set_level(logging.INFO)
    with Steps(log, "predict", 3, "images", every_s=0, console=Console(file=io.StringIO())) as steps:
        for name in ("a.tif", "b.tif", "c.tif"):
            steps.advance(f"{name}, 2.0 s")
    assert caplog.messages == [
        "predict: 1 of 3 images (a.tif, 2.0 s); elapsed 0:00:02, about 0:00:04 left",
        "predict: 2 of 3 images (b.tif, 2.0 s); elapsed 0:00:04, about 0:00:02 left",
        "predict: 3 of 3 images (c.tif, 2.0 s); elapsed 0:00:06, about 0:00:00 left",
    ]


def test_slow_steps_log_at_most_every_every_s_quick_ones_nothing(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    _clock(monkeypatch, [0.0] + [4.0 * k for k in range(1, 7)])  # 6 steps of 4 s
    with Steps(log, "bootstrap", 6, "resamples", every_s=10, console=Console(file=io.StringIO())) as steps:
        for _ in range(6):
            steps.advance()
    assert [re.match(r"bootstrap: (\d) of 6", m).group(1) for m in caplog.messages] == ["3", "6"]
    caplog.clear()
    _clock(monkeypatch, [0.0, 0.1, 0.2])
    with Steps(log, "bootstrap", 2, "resamples", every_s=10, console=Console(file=io.StringIO())) as steps:
        steps.advance()
        steps.advance()
    assert caplog.messages == []


def test_a_terminal_gets_a_bar_not_lines(caplog):
    caplog.set_level(logging.INFO)
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    with Steps(log, "predict", 2, "images", every_s=0, console=terminal) as steps:
        assert steps.bar is not None
        steps.advance("a.tif")
        steps.advance("b.tif")
    assert caplog.messages == []
    assert "predict" in screen.getvalue()


def test_clock():
    assert clock(3725.4) == "1:02:05"
