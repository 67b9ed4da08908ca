"""The command-line start row (bench/cli_start.py, issue 30 item 4): --quick runs the real commands through
the harness and reports one row per kind of call against `python -c pass` (no timed assertion)."""

from __future__ import annotations

import json

import pytest

from bench import cli_start
from bench import run as bench_run


@pytest.mark.slow  # every command started fresh three times: 34 s at a load of 8-10 (tests/core/test_cli.py keeps
# the answers themselves in the quick loop)
def test_quick_mode_times_help_a_misspelt_key_and_a_bad_value_of_each_command(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert bench_run.main(["--quick", "--only", "cli_start", "--output", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {f"cli_start_{kind}" for kind in cli_start.KINDS}
    for row in rows.values():
        assert "error" not in row, (row.get("error"), row.get("traceback"))
        assert row["value"] > 0 and row["baseline"] > 0 and row["ratio"] == row["value"] / row["baseline"]
        assert row["bar"] == "< 1 s" and row["passed"] is None  # quick mode: bars are judged in full mode only
        assert set(row["details"]["seconds_per_command"]) == set(cli_start.QUICK_COMMANDS)
        assert set(row["details"]["cpu_seconds_per_command"]) == set(cli_start.QUICK_COMMANDS)
        assert all(cpu > 0 for cpu in row["details"]["cpu_seconds_per_command"].values())
        assert row["details"]["slowest"] in cli_start.QUICK_COMMANDS
    assert "**cli_start_help**" in capsys.readouterr().out


def test_every_command_has_a_misspelt_key_and_a_bad_value():
    """The row covers every command the architecture lists at the top of src/poc59 (bar the package's own)."""
    commands = {p.stem for p in (bench_run.REPO / "src" / "poc59").glob("*.py") if p.stem != "__init__"}
    assert set(cli_start.CALLS) == commands
