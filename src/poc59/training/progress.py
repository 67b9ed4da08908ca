"""The Rich progress bar, reading the step metrics only every `refresh_rate` training batches.

Lightning's RichProgressBar asks for the metrics it shows after every training batch, whatever its
refresh rate; reading the step loss copies it from the GPU, a host sync that stalls every step. This bar
reads them every `refresh_rate` batches (poc59 sets it to `trainer.log_every_n_steps`, when Lightning's
logger reads them anyway) and shows the last values in between. Validation and epoch ends read afresh.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """RichProgressBar whose training metrics are read every `refresh_rate` batches (see the module doc)."""

    def __init__(self, refresh_rate: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("console_kwargs", {"stderr": True})  # beside the log lines; stdout is for results
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._shown: dict | None = None
        self._reads = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._shown, self._reads = None, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._reads += 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._shown = None  # the epoch's last values, read once
        super().on_train_epoch_end(trainer, pl_module)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        reading_due = self._shown is None or self._reads % max(self.refresh_rate, 1) == 0
        if not trainer.training or trainer.sanity_checking or reading_due:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
