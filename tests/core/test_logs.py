"""poc59.core.logs: one format, Lightning's notices quiet unless verbose, results wide when piped."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import pytest
from rich.console import Console
from rich.table import Table

from poc59.core import logs


@pytest.fixture
def stderr(capsys):
    """What setup_logging's handler writes (stderr is not a terminal here, as in a SLURM job's log)."""
    yield lambda: capsys.readouterr().err
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, logs._OURS, False)]:
        root.removeHandler(h)


def test_lightnings_notices_are_quiet_and_the_rest_is_in_one_format(stderr):
    pl = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    for name in ("lightning", "lightning.pytorch"):  # as importing Lightning does
        logging.getLogger(name).addHandler(logging.StreamHandler(sys.stderr))
    logs.setup_logging(verbose=False)
    pl.info("GPU available: False, used: False")
    pl.info("`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..")
    pl.info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
    pl.info("The number of training batches (4) is smaller than the logging interval")  # actionable: kept
    logging.getLogger("poc59.train").info("Run folder: /x")
    lines = stderr().splitlines()
    assert len(lines) == 2, lines  # once each: Lightning's own handler is gone, its records reach ours
    assert all(logs.LINE.match(line) for line in lines)
    assert lines[0].endswith(
        "INFO lightning.pytorch.utilities.rank_zero: The number of training batches (4) "
        "is smaller than the logging interval"
    )
    assert lines[1].endswith("INFO poc59.train: Run folder: /x")


def test_verbose_keeps_everything(stderr):
    logs.setup_logging(verbose=True)
    logging.getLogger("lightning.pytorch").info("GPU available: False, used: False")
    assert "GPU available" in stderr()


def test_dependency_deprecations_are_quiet_poc59s_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        logs.quiet_dependency_warnings()
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="lightning.pytorch.x")
        warnings.warn_explicit("old key", DeprecationWarning, "y.py", 1, module="poc59.data.x")
    assert [str(w.message) for w in seen] == ["old key"]


def test_take_verbose(monkeypatch):
    monkeypatch.setenv(logs.VERBOSE_ENV, "")  # restored (unset) afterwards: -v must not leak into other tests
    assert logs.take_verbose(["a=1"]) == (["a=1"], False)
    assert logs.take_verbose(["-v", "a=1"]) == (["a=1"], True)
    assert logs.take_verbose(["a=1"]) == (["a=1"], True)  # inherited, as a sweep's jobs inherit it


def test_results_console_does_not_wrap_tables_when_piped(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setenv("COLUMNS", "80")
    table = Table()
    for name in ("parameters of the network", "train pixels", "validation pixels", "test pixels", "loss weight"):
        table.add_column(name)
    table.add_row("5.3 M", "1,234,567", "234,567", "0", "0.123")
    logs.results_console().print(table)
    header = [line for line in out.getvalue().splitlines() if "parameters" in line]
    assert len(header) == 1 and "loss weight" in header[0]  # one line
    narrow = io.StringIO()
    Console(file=narrow, width=80).print(table)  # what Rich does by default in a file: the header wraps
    assert "loss weight" not in [line for line in narrow.getvalue().splitlines() if "parameters" in line][0]


def test_a_long_title_stays_on_one_line_above_a_narrow_table(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    title = "Sweep /tmp/a/very/long/path/outputs/sweeps/2026-01-01_10-00-00: 1 finished, 2 failed, 1 running"
    table = Table(title=title)
    table.add_column("#")
    table.add_row("1")
    logs.print_titled(logs.results_console(), table)
    assert out.getvalue().splitlines()[0] == title
    assert "#" in out.getvalue() and table.title is None
    wrapped = io.StringIO()
    Console(file=wrapped, width=logs.WIDE).print(Table("#", title=title))  # Rich alone: cut to the table's width
    assert title not in wrapped.getvalue()
