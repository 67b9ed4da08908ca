"""The root conftest.py counts a session fixture's build once, on its own, not against the test that needed it
first (which would otherwise be named as a slow test without the marker, by the luck of the order)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import time

import pytest


@pytest.fixture(scope="session")
def built_once():
    time.sleep(1.2)
    return 1


def test_first_user(built_once):
    assert built_once == 1


def test_second_user(built_once):
    assert built_once == 1


def test_unmarked_and_slow():
    time.sleep(0.6)
"""


@pytest.mark.slow  # a pytest in a fresh process: 10 s at a load of 8-10
def test_a_session_fixtures_build_is_listed_on_its_own_not_against_its_first_test(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\nslow_seconds = 0.4\n")
    (tmp_path / "test_timed.py").write_text(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    slow, built = done.stdout.split("not marked slow, over 0.4 s (add @pytest.mark.slow)", 1)[1].split(
        "session fixtures, built once for the tests that share them", 1
    )
    assert [line.split()[-1] for line in slow.splitlines() if " s  " in line] == [
        "test_timed.py::test_unmarked_and_slow"
    ]
    (line,) = [line for line in built.splitlines() if " s  " in line]
    assert line.split()[-1] == "built_once" and float(line.split()[0]) >= 1.2
