"""A folder's lock: refused while its holder runs (named by host and pid), taken over once it is dead."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poc59.core import locks
from poc59.core.locks import LOCK_NAME, FolderLock, LockHeld

HOLD = """
import sys, time
from pathlib import Path
from poc59.core.locks import FolderLock
FolderLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another live process on this machine holding tmp_path/run."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_live_holder_is_named_and_a_killed_ones_lock_is_taken_over(tmp_path, holder):
    with pytest.raises(LockHeld) as refused:
        FolderLock(tmp_path / "run").acquire()
    said = str(refused.value)
    assert f"host {socket.gethostname()}, pid {holder.pid}" in said and f"kill {holder.pid}" in said

    os.kill(holder.pid, signal.SIGKILL)  # dies holding it: the lock file stays
    holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()
    lock = FolderLock(tmp_path / "run").acquire()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # nothing left aside


def _foreign(folder: Path, age_s: float, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    holder = {"host": "node-elsewhere", "pid": 4242, "started": "2026-01-01 00:00:00", **fields}
    path.write_text(json.dumps(holder))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_another_machines_lock_holds_while_its_heartbeat_is_fresh(tmp_path):
    _foreign(tmp_path, age_s=locks.BEAT_S)
    with pytest.raises(LockHeld, match="host node-elsewhere, pid 4242"):
        FolderLock(tmp_path).acquire()
    _foreign(tmp_path, age_s=locks.STALE_S + 1)  # no heartbeat for longer than STALE_S: its holder is gone
    FolderLock(tmp_path).acquire().release()


def test_a_requeued_slurm_job_takes_over_its_earlier_attempts_lock(tmp_path, monkeypatch):
    """SLURM runs one attempt of a job at a time: the previous attempt's lock is dead, whatever its host."""
    _foreign(tmp_path, age_s=0, slurm_job="77", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    FolderLock(tmp_path).acquire().release()
    _foreign(tmp_path, age_s=0, slurm_job="78", slurm_restart=0)  # another job's: held, and scancel is the advice
    with pytest.raises(LockHeld, match="scancel 78 on node-elsewhere"):
        FolderLock(tmp_path).acquire()


def test_the_heartbeat_keeps_a_held_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "BEAT_S", 0.05)
    lock = FolderLock(tmp_path).acquire()
    path = tmp_path / LOCK_NAME
    os.utime(path, (0, 0))
    deadline = time.time() + 5
    while path.stat().st_mtime == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert path.stat().st_mtime > 0
    lock.release()
