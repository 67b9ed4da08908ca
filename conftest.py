"""Keeps the `slow` marker honest for every test folder: a test that took over `slow_seconds` (pyproject.toml)
and is not marked slow is named at the end of the run, so `pytest -m "not slow"` stays the quick loop the
README promises. A list, never a failure: the time depends on the machine and its load.

A session-scoped fixture (tests/conftest.py's `trained_run`) is built once for every test that uses it: its
build time is not counted against the test that happened to need it first, and is listed on its own.

Under pytest-xdist (`pytest -n auto --dist loadgroup`, the README's test command) each worker runs on its own
share of the CPUs, and the tests that submit to the one SLURM cluster run one after another on one worker."""

from __future__ import annotations

import os
import time

import pytest

SLOW_SECONDS = "slow_seconds"
_taken: dict[str, float] = {}  # node id -> seconds (set-up, call and tear-down) of tests not marked slow
_shared: dict[str, float] = {}  # session fixture -> seconds its build took
_building: list[str] = []  # the session fixtures being built now, outermost first
_shared_pending = [0.0]  # seconds of session fixtures built during the set-up being timed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(SLOW_SECONDS, "a test taking longer than this (seconds) should be marked slow", default="20")


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker (gw<k> of N, N no more than the CPUs) keeps CPUs k, k+N, ... for itself and the commands
    it starts, whose threads=auto then counts those: without it every worker's processes would each claim
    every core (oversubscribed, several times slower), and a command's thread count would follow the moment's
    load, which changes the float sums of runs a test compares bit for bit."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if count <= len(cpus):
        share = set(cpus[int(worker.removeprefix("gw")) :: count])
        os.sched_setaffinity(0, share)
        import torch

        torch.set_num_threads(len(share))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests of the SLURM cluster (the `slurm` fixture) share one xdist worker (`--dist loadgroup`): its
    single node runs one test's jobs at a time, as the tests' timeouts assume."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    if fixturedef.scope != "session" or _building:  # a session fixture another one builds counts in that one
        yield
        return
    _building.append(fixturedef.argname)
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        _building.pop()
        _shared[fixturedef.argname] = _shared.get(fixturedef.argname, 0.0) + seconds
        _shared_pending[0] += seconds


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    duration = report.duration
    if report.when == "setup":
        duration = max(0.0, duration - _shared_pending[0])
        _shared_pending[0] = 0.0
    if "slow" not in report.keywords:
        _taken[report.nodeid] = _taken.get(report.nodeid, 0.0) + duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    limit = float(config.getini(SLOW_SECONDS))
    over = sorted(((s, node) for node, s in _taken.items() if s > limit), reverse=True)
    if over:
        terminalreporter.section(f"not marked slow, over {limit:g} s (add @pytest.mark.slow)")
        for seconds, node in over:
            terminalreporter.write_line(f"{seconds:7.1f} s  {node}")
    built = sorted(((s, name) for name, s in _shared.items() if s > 1.0), reverse=True)
    if built:
        terminalreporter.section("session fixtures, built once for the tests that share them")
        for seconds, name in built:
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
