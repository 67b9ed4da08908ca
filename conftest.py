"""Keeps the `slow` marker honest for every test folder: a test that took over `slow_seconds` (pyproject.toml)
and is not marked slow is named at the end of the run, so `pytest -m "not slow"` stays the quick loop the
README promises. A list, never a failure: the time depends on the machine and its load.

A session-scoped fixture (tests/conftest.py's `trained_run`) is built once for every test that uses it: its
build time is not counted against the test that happened to need it first, and is listed on its own.

Under pytest-xdist (`pytest -n auto --dist loadgroup`, the README's test command) each worker runs on its own
share of the CPUs, the tests that submit to the one SLURM cluster run one after another on one worker, and the
tests of a module that share a module-scoped fixture run on one worker, which builds it once."""

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
    if getattr(config.option, "loadscopereorder", None):
        # xdist would deal the groups largest first and every single test after them, so the longest single
        # tests (a quickstart, the benchmarks' quick run) started late and ran on alone at the end: the order
        # is `_longest_first`'s instead
        config.option.loadscopereorder = False
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if count <= len(cpus):
        share = set(cpus[int(worker.removeprefix("gw")) :: count])
        os.sched_setaffinity(0, share)
        import torch

        torch.set_num_threads(len(share))


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    """Whether `item` uses a module- or class-scoped fixture (a training, a sweep, a prediction its module's
    tests share)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(chain and chain[-1].scope in ("module", "class") for chain in defs)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """Groups for `--dist loadgroup`, each run on one xdist worker:
    - the tests of the SLURM cluster (the `slurm` fixture): its single node runs one test's jobs at a time, as
      the tests' timeouts assume;
    - the tests of one module that share a module- or class-scoped fixture: a fixture is built once per worker
      that runs a test needing it, so the module's trainings and sweeps would otherwise be built on every
      worker its tests were dealt to. Its other tests stay free to run anywhere.
    A test in the SLURM group stays there (xdist would join two group names into a third group)."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(f"module:{item.nodeid.split('::', 1)[0]}"))
    result = yield  # xdist's worker hook writes each group into the node id the scheduler reads
    for item in items:
        # pytest 9.2 reads the node id from `_id`, and xdist 3.8 still writes `_nodeid`, so without this every
        # group is silently ignored (pytest-dev/pytest-xdist#1386)
        grouped = item.__dict__.get("_nodeid")
        if grouped and item.nodeid != grouped:
            item._id = type(item._id).parse(grouped)
    if hasattr(config, "workerinput"):
        items[:] = _longest_first(items)
    return result


def _longest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The tests in the order the xdist scheduler hands them out (it deals the units in collection order, one
    at a time as a worker runs short: `pytest_configure` turns off its reordering by unit size): the SLURM
    group first (its tests run one after another, the longest chain), then the other units holding a slow
    test, then the quick ones, which fill in at the end while the last slow test finishes on the other
    worker. A unit is a group (`@name` in the node id, as loadgroup splits them) or a single test; its tests
    keep their order and stay together, so a module's fixture is built once. Only under xdist: in one
    process, pytest's module order already builds each module fixture once."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(item.nodeid.rsplit("@", 1)[-1] if "@" in item.nodeid else item.nodeid, []).append(item)

    def rank(unit: str) -> int:
        if unit == "slurm":
            return 0
        return 1 if any("slow" in item.keywords for item in units[unit]) else 2

    return [item for unit in sorted(units, key=rank) for item in units[unit]]


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
