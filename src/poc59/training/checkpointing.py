"""Checkpoint writes that are atomic on the checkpoint's own filesystem.

Lightning's default stages the file in the system temp folder and moves it,
which is a copy (not atomic) when /tmp and the run folder differ, as they do
on most clusters. Here the bytes go to a temporary file beside the target and
are renamed over it: a preempted or killed job leaves the previous checkpoint
intact, never a truncated one.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from poc59.core.atomic import write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are write-to-temp-then-rename in the target folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getvalue())
