"""The root conftest.py names the tests that took longer than `slow_seconds` without the `slow` marker."""

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


def test_unmarked_and_slow():
    time.sleep(0.6)


@pytest.mark.slow
def test_marked_and_slow():
    time.sleep(0.6)


def test_quick():
    pass
"""


@pytest.mark.slow  # a pytest in a fresh process: 11 s at a load of 8-10
def test_a_slow_test_without_the_marker_is_named_and_a_marked_one_is_not(tmp_path):
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
    section = done.stdout.split("not marked slow, over 0.4 s (add @pytest.mark.slow)", 1)
    assert len(section) == 2, done.stdout
    named = [line.split()[-1] for line in section[1].splitlines() if " s  " in line]
    assert named == ["test_timed.py::test_unmarked_and_slow"]
