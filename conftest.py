"""Keeps the `slow` marker honest for every test folder: a test that took over `slow_seconds` (pyproject.toml)
and is not marked slow is named at the end of the run, so `pytest -m "not slow"` stays the quick loop the
README promises. A list, never a failure: the time depends on the machine and its load."""

from __future__ import annotations

import pytest

SLOW_SECONDS = "slow_seconds"
_taken: dict[str, float] = {}  # node id -> seconds (set-up, call and tear-down) of tests not marked slow


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(SLOW_SECONDS, "a test taking longer than this (seconds) should be marked slow", default="20")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        _taken[report.nodeid] = _taken.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    limit = float(config.getini(SLOW_SECONDS))
    over = sorted(((s, node) for node, s in _taken.items() if s > limit), reverse=True)
    if over:
        terminalreporter.section(f"not marked slow, over {limit:g} s (add @pytest.mark.slow)")
        for seconds, node in over:
            terminalreporter.write_line(f"{seconds:7.1f} s  {node}")
