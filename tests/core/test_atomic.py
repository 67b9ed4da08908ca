"""Atomic writes: all or nothing, with ordinary permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from poc59.core.atomic import write_bytes, write_json


def test_written_files_get_the_umask_permissions_not_owner_only(tmp_path):
    # in a child with a known umask: results in shared run folders must be readable by the group
    code = "from poc59.core.atomic import write_bytes; import sys; write_bytes(sys.argv[1], b'x')"
    target = tmp_path / "shared.json"
    subprocess.run([sys.executable, "-c", f"import os; os.umask(0o027); exec({code!r})", str(target)], check=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_bytes() == b"x"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = write_json(tmp_path / "summary.json", {"miou": 0.5})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_bytes(target, b"half")
    assert json.loads(target.read_text()) == {"miou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_nan_is_refused_in_json(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"miou": float("nan")})
    assert not (tmp_path / "x.json").exists()
