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


@pytest.mark.parametrize("content", ["", '{"host": "x'], ids=["empty", "corrupt"])
def test_an_unreadable_lock_older_than_the_grace_is_taken_over(tmp_path, content):
    """A holder killed (or out of disk) while writing its lock leaves it empty or cut: not a holder for ever."""
    path = tmp_path / LOCK_NAME
    path.write_text(content)
    then = time.time() - locks.GRACE_S - 1
    os.utime(path, (then, then))
    lock = FolderLock(tmp_path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert list(tmp_path.iterdir()) == []  # no temporary or moved-aside file left


def test_a_lock_is_never_seen_half_written(tmp_path, monkeypatch):
    """The lock's name appears only once its content is whole: a write that fails leaves no lock at all."""

    def full_disk(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(locks.json, "dump", full_disk)
    with pytest.raises(OSError):
        FolderLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []


def _mine(folder: Path, pid: int, **fields) -> None:
    """A lock naming process `pid` on this machine, as written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "started": "2026-01-01 00:00:00", **fields}
    (folder / LOCK_NAME).write_text(json.dumps(holder))


@pytest.fixture
def unrelated():
    """A live process on this machine that never took any lock (the pid a dead holder's lock may name)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_lock_from_another_boot_is_dead_though_its_pid_runs(tmp_path, unrelated):
    if locks.boot_id() is None:
        pytest.skip("this kernel does not give a boot id")
    _mine(tmp_path, unrelated.pid, boot="another-boot", pid_started=locks.start_time(unrelated.pid))
    FolderLock(tmp_path).acquire().release()
    _mine(tmp_path, unrelated.pid, boot=locks.boot_id(), pid_started=locks.start_time(unrelated.pid))
    with pytest.raises(LockHeld, match=f"kill {unrelated.pid}"):  # the same process, this boot: held
        FolderLock(tmp_path).acquire()


def test_a_lock_whose_pid_now_runs_another_process_is_dead(tmp_path, unrelated):
    started = locks.start_time(unrelated.pid)
    _mine(tmp_path, unrelated.pid, boot=locks.boot_id(), pid_started=started - 3600)
    lock = FolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
