"""Publishing a folder atomically under a lock: what is in the way kept, replaced or refused; dead writers' leftovers
removed and live ones left alone; a lock whose holder was killed taken at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poc59.core import publish


def _built(target: Path, text: str) -> Path:
    tmp = publish.temporary(target)
    (tmp / "data.txt").write_text(text)
    return tmp


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_in_the_way_is_kept_replaced_or_refused_never_mixed(tmp_path):
    target = tmp_path / "set"
    assert publish.publish(_built(target, "first"), target) is True
    # kept: a concurrent writer's equal copy wins, ours is dropped
    assert publish.publish(_built(target, "second"), target, keep=lambda _: True) is False
    assert (target / "data.txt").read_text() == "first"
    # replaced: the one in the way is judged unusable (damaged, another version)
    assert publish.publish(_built(target, "third"), target, keep=lambda _: False, replace=lambda _: True) is True
    assert (target / "data.txt").read_text() == "third"
    # refused: nothing says it may go
    tmp = _built(target, "fourth")
    with pytest.raises(FileExistsError, match="filled by someone else"):
        publish.publish(tmp, target)
    assert (target / "data.txt").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name and not p.name.endswith(".lock")) == [
        "set"
    ]


def test_an_empty_folder_in_the_way_is_filled(tmp_path):
    target = tmp_path / "set"
    target.mkdir()
    assert publish.publish(_built(target, "x"), target) is True and (target / "data.txt").read_text() == "x"


def test_only_dead_writers_temporary_folders_are_removed(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".a.tmp-{host}-{_dead_pid()}.7"  # this machine, its pid no longer runs
    live = tmp_path / f".a.tmp-{host}-{os.getpid()}.7"  # this machine, still running
    fresh = tmp_path / ".b.tmp-another-node-12"  # another machine's, written just now
    old = tmp_path / ".c.tmp-another-node-34"  # another machine's, untouched for two hours
    for folder in (dead, live, fresh, old):
        folder.mkdir()
        (folder / "part").write_bytes(b"x")
    hours_ago = time.time() - 2 * publish.STALE_S
    os.utime(old / "part", (hours_ago, hours_ago))
    os.utime(old, (hours_ago, hours_ago))
    assert sorted(publish.remove_dead(tmp_path)) == sorted([dead, old])
    assert live.exists() and fresh.exists() and not dead.exists() and not old.exists()
    assert publish.remove_dead_of(tmp_path / "a") == []  # the live one stays


def test_a_holder_killed_while_holding_the_lock_blocks_no_one(tmp_path):
    target = tmp_path / "set"
    held = tmp_path / "held"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from poc59.core import publish\n"
        "with publish.lock(Path(sys.argv[1])):\n"
        "    Path(sys.argv[2]).touch()\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(target), str(held)])
    try:
        deadline = time.monotonic() + 60
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists(), "the holder never took the lock"
        with pytest.raises(TimeoutError), publish.lock(target).acquire(timeout=0.2):
            pass  # a live holder: the lock is not given
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    started = time.monotonic()
    with publish.lock(target):
        assert time.monotonic() - started < 5
