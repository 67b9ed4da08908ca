"""Publish a folder atomically under a lock: build it beside its final place, then rename it in whole.

A writer builds in `temporary(target)`, a hidden sibling `.<name>.tmp-<host>-<pid>.<thread>` whose name says
who writes it, so that a later start can tell a dead writer's leftovers from a live one's (`remove_dead`: on
this machine by whether the pid still runs, as `poc59.core.locks` judges; another machine's by its last write,
older than `STALE_S`). `publish(tmp, target)` renames it into place under `lock(target)`, a `filelock` lock on
the sibling `.<name>.lock` that the kernel releases when its holder dies, so a killed holder never blocks the
next. Readers see the folder absent or whole, never half-written. Where the filesystem has no locks (some
network mounts) filelock falls back to a lock file naming its holder's pid, and the rename alone still keeps
the folder whole.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from poc59.core.locks import alive

log = logging.getLogger(__name__)

STALE_S = 3600.0  # another machine's temporary folder untouched this long belongs to a dead writer
_WRITER = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)(?:\.\d+)?$")  # what follows `.tmp-` in a temporary's name


def lock(target: Path) -> FileLock:
    """The lock all writers of `target` take (a context manager; taken again by the same thread it nests)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(target.parent / f".{target.name}.lock", is_singleton=True)


def temporary(target: Path) -> Path:
    """A new, empty folder beside `target` for this process and thread to build it in."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a process that had this pid before left it
    tmp.mkdir(parents=True)
    return tmp


def _writer_is_dead(tmp: Path, host: str) -> bool:
    writer = _WRITER.match(tmp.name.rpartition(".tmp-")[2])
    if writer and writer["host"] == host:
        return not alive(int(writer["pid"]))
    # another machine's writer (or a name that does not say whose): judged by its last write
    newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
    return time.time() - newest > STALE_S


def remove_dead(parent: Path, names: str = "*") -> list[Path]:
    """Remove the temporary folders `.<names>.tmp-*` in `parent` (`names` a glob) whose writer is gone (killed
    mid-write); a live writer's folder is left alone. Returns what was removed, for the caller to name."""
    parent = Path(parent)
    removed = []
    host = socket.gethostname()
    for tmp in sorted(parent.glob(f".{names}.tmp-*")) if parent.is_dir() else ():
        try:
            if not tmp.is_dir() or not _writer_is_dead(tmp, host):
                continue
        except OSError:
            continue  # gone meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def remove_dead_of(target: Path) -> list[Path]:
    """`remove_dead` for the temporary folders of `target` alone."""
    target = Path(target)
    return remove_dead(target.parent, glob.escape(target.name))


def discard(folder: Path) -> None:
    """Remove `folder` at once for readers (renamed to a hidden sibling first), then delete its files."""
    folder = Path(folder)
    aside = folder.with_name(f".{folder.name}.old-{socket.gethostname()}-{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)


def publish(
    tmp: Path,
    target: Path,
    *,
    keep: Callable[[Path], bool] | None = None,
    replace: Callable[[Path], bool] | None = None,
) -> bool:
    """Rename the complete folder `tmp` to `target` under `target`'s lock; True when `tmp` took its place.

    `target` absent or an empty folder: renamed in. A folder already there (a concurrent writer's) is kept
    when `keep(target)` says so (`tmp` is removed, False returned), replaced when `replace(target)` says so,
    and otherwise never touched: FileExistsError.
    """
    tmp, target = Path(tmp), Path(target)
    with lock(target):
        try:
            os.rename(tmp, target)  # atomic; replaces an empty folder, fails on a non-empty one
            return True
        except OSError as err:
            if not target.exists():
                raise  # nothing in the way: the rename itself failed
            if keep is not None and keep(target):
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            if replace is None or not replace(target):
                raise FileExistsError(f"{target} was filled by someone else while it was being written") from err
            discard(target)
            os.rename(tmp, target)
            return True
