"""poc59.core.outputs: the writability probe finds a full disk, not only a read-only one."""

from __future__ import annotations

import errno

import pytest

from poc59.core import outputs
from poc59.core.config import SettingError


def test_the_probe_finds_a_full_disk_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk still lets an empty file be made: the probe writes and syncs, where a full disk shows."""
    synced = []

    def full(fd):
        synced.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    with pytest.raises(SettingError) as refused:
        outputs.check_writable(tmp_path / "out", "out", SettingError)
    assert str(refused.value) == (
        f"out={tmp_path / 'out'}: cannot write there (no space left on its disk: No space left on device). "
        "Pass out=<a folder on a writable disk with free space>"
    )
    assert synced and list(tmp_path.iterdir()) == []  # the probe went


def test_a_writable_folder_passes_and_keeps_no_probe(tmp_path):
    outputs.check_writable(tmp_path, "out", SettingError)
    assert list(tmp_path.iterdir()) == []
