"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Write to a temporary file in the same folder, flush to disk, then rename over
the target (a rename within one filesystem is atomic). A failed write (full
disk, crash) leaves the previous file intact and removes the temporary one.
The file gets the permissions a plain `open(path, "w")` would (0666 minus the
umask), not mkstemp's owner-only 0600: run folders are shared on clusters.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: done once, at import, before any threads write
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def replacing(path: str | Path) -> Iterator[BinaryIO]:
    """A new file beside `path`, open for writing, that replaces `path` atomically when the block ends without
    an error (flushed, synced); on an error it is removed and `path` is untouched. For files written as they
    stream (opened by name: writers such as tifffile need `f.name` to be a path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)  # a failed write or fsync names no file: the message names the target
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with replacing(path) as f:
        f.write(data)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically; NaN is refused (use None for 'absent')."""
    text = json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n"
    return write_bytes(path, text.encode())
