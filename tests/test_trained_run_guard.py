"""The session's shared `trained_run` (tests/conftest.py) is read by many tests: one that changes it fails,
named with the files it changed and how to copy the run instead; the tests before and after it pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

USERS = """
import shutil


def test_a_reader(trained_run):
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()


def test_b_writer(trained_run):
    (trained_run / "evaluation").mkdir()
    (trained_run / "evaluation" / "metrics.json").write_text("{}")


def test_c_copier(trained_run_copy, trained_run):
    (trained_run_copy / "summary.json").write_text("{}")  # its own copy: the shared run is untouched
    assert trained_run_copy != trained_run and (trained_run / "summary.json").read_text() != "{}"
"""


@pytest.mark.slow  # trains the shared run in a fresh pytest: about 30 s on 2 cores
def test_a_test_that_changes_the_shared_run_fails_naming_the_files_and_the_copy(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (tmp_path / "test_users.py").write_text(USERS)
    # As when this test runs under xdist: the sub-pytest inherits the worker's PYTEST_XDIST_WORKER, and beside
    # its own folder lies another session's finished build, changed (CI found one in pytest's root folder). The
    # sub-pytest is no worker: it must build its own run, not take that one.
    stale = tmp_path / "trained_run" / "run" / "evaluation"
    stale.mkdir(parents=True)
    (tmp_path / "trained_run.done").touch()
    env = {
        **os.environ,
        "PYTEST_XDIST_WORKER": "gw7",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            f"--basetemp={tmp_path / 'base'}",
            str(tmp_path / "test_users.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert re.search(r"\b3 passed, (\d+ warnings?, )?1 error in", out), out
    assert "ERROR test_users.py::test_b_writer" in out, out
    assert "test_users.py::test_b_writer changed the shared trained_run (evaluation/metrics.json): copy it" in out
    assert "shutil.copytree(trained_run, tmp_path / 'run') or the trained_run_copy fixture" in out
