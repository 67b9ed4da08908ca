"""The root conftest.py deals the tests of one module that share a module-scoped fixture to one xdist worker
(`--dist loadgroup`), so the fixture (a training, a sweep) is built once, not once on every worker; the tests of
the SLURM cluster keep their own group; and the units are dealt longest first (the SLURM group, then those
with a slow test, then the quick ones), so the longest single tests do not start last."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import json
import os
from pathlib import Path

import pytest

LOG = Path(__file__).parent / "log.jsonl"


def _record(kind):
    with LOG.open("a") as log:
        log.write(json.dumps([kind, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")


@pytest.fixture(scope="module")
def shared():
    _record("built")
    return 1


@pytest.fixture
def slurm():
    return None


@pytest.mark.parametrize("n", range(6))
def test_shares(shared, n):
    _record("shares")


@pytest.mark.parametrize("n", range(6))
def test_free(n):
    _record("free")


@pytest.mark.parametrize("n", range(3))
def test_cluster(shared, slurm, n):
    _record("cluster")


@pytest.mark.slow
def test_long():
    _record("long")
"""


@pytest.mark.slow  # a pytest of two xdist workers in a fresh process: 25 s at a load of 8-10
def test_a_module_fixture_is_built_once_across_workers_and_the_slurm_group_is_kept(tmp_path):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    (tmp_path / "test_grouped.py").write_text(TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "--dist", "loadgroup"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    workers = {kind: [w for k, w in log if k == kind] for kind in ("built", "shares", "free", "cluster", "long")}
    assert [len(workers[k]) for k in ("shares", "free", "cluster", "long")] == [6, 6, 3, 1]
    assert len(set(workers["shares"])) == 1 and len(set(workers["cluster"])) == 1
    # one build for the grouped tests, one more only where the SLURM group runs on the other worker
    assert sorted(workers["built"]) == sorted(set(workers["shares"]) | set(workers["cluster"]))
    # dealt longest first: the SLURM group to one worker, the slow single test (collected last) to the other,
    # each the first thing its worker runs (xdist's own order would deal it after every other unit)
    first = {w: next(k for k, v in log if v == w) for w in {w for _, w in log}}
    assert first[workers["long"][0]] == "long" and first[workers["cluster"][0]] in ("built", "cluster"), log
