"""The run's checkpoints: writes atomic on the checkpoint's own filesystem, and files that belong to the run.

Lightning's default stages the file in the system temp folder and moves it,
which is a copy (not atomic) when /tmp and the run folder differ, as they do
on most clusters. Here the bytes go to a temporary file beside the target and
are renamed over it: a preempted or killed job leaves the previous checkpoint
intact, never a truncated one. `RunCheckpoint` keeps one `best.ckpt` per run, whatever the resume.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from poc59.core.atomic import write_bytes

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are write-to-temp-then-rename in the target folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getvalue())


class RunCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that belongs to its run folder: `checkpoints/best.ckpt` (and `last.ckpt`) is the one
    file of its name, overwritten by a better epoch, and the state it resumes with is re-rooted in this run.

    - No version counter (`enable_version_counter=False` by default): Lightning's counter writes
      `best-v1.ckpt` beside `best.ckpt` whenever its restored state does not name the file it finds there
      (a resume from `best.ckpt` itself, a moved or copied run), and then `summary.json` names one file while
      evaluate, export and predict load the other. With one name, the run's best is its `best.ckpt`.
    - A checkpoint written in another folder (the run was moved or copied, `cp -a runs/a runs/b`) records that
      folder's paths; Lightning then drops the best score and keeps the old path, so the next epoch, however
      bad, would overwrite `best.ckpt`, and the summary could name the other run's file. Here the recorded
      paths are moved into this run's `checkpoints/` folder (by file name) and the best score is kept.

    Its state is saved under ModelCheckpoint's own key, so runs from before it resume with their best score.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = state_dict.get("dirpath")
        if recorded and self.dirpath and os.path.realpath(recorded) != os.path.realpath(self.dirpath):
            here = self.dirpath
            moved = lambda path: os.path.join(here, os.path.basename(path)) if path else path  # noqa: E731
            log.info("Checkpoint state recorded in %s: taken as this run's %s", recorded, here)
            state_dict = {
                **state_dict,
                "dirpath": here,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)
