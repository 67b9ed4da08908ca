"""Training throughput and peak memory, measured the way summary.json states them.

Images/s counts all devices together, over training steps only: validation is
paused out, the first epoch is skipped (warm-up, cuDNN autotuning, allocator
growth) and, in a one-epoch run, only the first step is skipped.

The measured epochs and the training time so far travel in the checkpoint (the callback's state), so a
resumed, requeued or repeated run reports the figures of all the training that happened, not only of its
last attempt.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from poc59.core.device import synchronize

CONVENTION = (
    "training images per second, all devices together, training steps only "
    "(validation excluded; first epoch excluded, or only its first step in a 1-epoch run)"
)


class TrainThroughput(L.Callback):
    """Times each training epoch from the end of its first step to the start of validation."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []  # per epoch: images and seconds after the first step
        self.earlier_s = 0.0  # training time of earlier attempts, up to their last checkpoint
        self.steps = 0  # training steps of this attempt
        self._t0: float | None = None
        self._images = 0
        self._step = 0
        self.attempt_start = time.perf_counter()  # the run's command sets when this attempt began

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.steps = 0

    def elapsed_s(self) -> float:
        """Wall time of the whole run so far: earlier attempts (each to its last checkpoint) and this one."""
        return self.earlier_s + time.perf_counter() - self.attempt_start

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "elapsed_s": self.elapsed_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.earlier_s = float(state_dict.get("elapsed_s", 0.0))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._images, self._step = None, 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._step += 1
        self.steps += 1
        if self._step == 1:
            synchronize(trainer.strategy.root_device)
            self._t0 = time.perf_counter()
            return
        self._images += batch[0].shape[0] * trainer.world_size

    def _close_epoch(self, trainer: L.Trainer) -> None:
        if self._t0 is None:
            return
        synchronize(trainer.strategy.root_device)
        self.epochs.append({"images": self._images, "seconds": time.perf_counter() - self._t0})
        self._t0 = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close_epoch(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_epoch(trainer)  # when validation did not run this epoch

    def images_per_second(self) -> float | None:
        """The figure under CONVENTION, or None if no step was timed."""
        epochs = self.epochs[1:] if len(self.epochs) > 1 else self.epochs
        images = sum(e["images"] for e in epochs)
        seconds = sum(e["seconds"] for e in epochs)
        return images / seconds if images and seconds > 0 else None
