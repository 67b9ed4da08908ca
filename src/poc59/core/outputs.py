"""The folder a command writes its results into: one rule for every command.

- Results a command finds already in its output folder are replaced only when the user says `overwrite=true`
  (`refuse_existing`); without it the command stops before any work, naming the first file and both ways on.
- A folder that cannot be written (read-only file system, no permission, a full disk or quota) is the user's
  setting, not a bug: `check_writable` finds each before any work (its probe writes and syncs a few KiB), and `writing` turns any of them met
  while writing into one message naming the folder and the key that sets it.

Each caller passes its own error type (the one its command turns into exit 2), so the messages read alike.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# errno of a write the user's choice of folder refused, and what it means in words.
UNWRITABLE = {
    errno.EROFS: "a read-only file system",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.ENOSPC: "no space left on its disk",
    errno.EDQUOT: "the disk quota is used up",
}

PROBE = b"\0" * 16384  # what check_writable writes and syncs: a disk without room for it holds no result


def refusal(folder: str | Path, key: str, err: OSError) -> str:
    """The message for a write into `folder` (set by `key`) that its file system refused (`err.errno` in
    UNWRITABLE): what happened, and the key to set."""
    return (
        f"{key}={folder}: cannot write there ({UNWRITABLE[err.errno]}: {err.strerror}). "
        f"Pass {key}=<a folder on a writable disk with free space>"
    )


def check_writable(folder: str | Path, key: str, error: Callable[[str], Exception]) -> None:
    """`error` naming `folder` and `key` when nothing can be created in it (or, for a folder still to be made,
    in its nearest existing parent), or when the disk is full: a probe file is written, synced (a full disk or
    quota shows at the sync, not when an empty file is made) and removed, so nothing stays."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise error(f"{key}={folder}: {existing} is not a folder. Pass {key}=<a folder>")
    try:
        fd, probe = tempfile.mkstemp(prefix=".poc59-write-check-", dir=existing)
        try:
            os.write(fd, PROBE)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        if err.errno in UNWRITABLE:
            raise error(refusal(folder, key, err)) from None
        raise


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}


@contextmanager
def writing(folder: str | Path, key: str, error: Callable[[str], Exception]) -> Iterator[None]:
    """Writes inside the block that fail for the folder's sake (UNWRITABLE) become `error` naming it, and the
    files the block wrote in `folder` before the failure are removed: a half-written set of results is never
    left to be read as a whole one (each file's own write is atomic: poc59.core.atomic)."""
    folder = Path(folder)
    before = _files(folder)
    try:
        yield
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise
        for path, mtime in _files(folder).items():
            if before.get(path) != mtime:
                path.unlink(missing_ok=True)
        raise error(refusal(folder, key, err)) from None


def refuse_existing(
    folder: str | Path, names: Iterable[str], overwrite: bool, key: str, error: Callable[[str], Exception]
) -> list[Path]:
    """The files of `names` already in `folder` (the results this command would write); `error` when there
    are any and `overwrite` is false, naming the first and both ways on."""
    folder = Path(folder)
    existing = [folder / n for n in names if (folder / n).exists()]
    if existing and not overwrite:
        raise error(
            f"{existing[0]} exists ({len(existing)} earlier result(s) in {folder}): pass overwrite=true to "
            f"replace them, or {key}=<another folder>"
        )
    return existing
