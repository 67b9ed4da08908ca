"""The LightningModule: normalise uint8 on the device, step, measure, optimise.

Knows nothing of files or launchers. Everything later commands need to use a
checkpoint on their own (class names, palette, normalisation, how to rebuild
the network, image size) is saved in its hyperparameters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from poc59.model.metrics import SegmentationIoU, iou_by_name, mean_iou

log = logging.getLogger(__name__)


class SegmentationModule(L.LightningModule):
    """Semantic segmentation with one network, one loss and the one mIoU convention."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        *,
        classes: dict,
        normalization: dict,
        network: dict | None = None,
        image_size: int | None = None,
        geometry: dict | None = None,
    ) -> None:
        """`classes` is a ClassTable dict, `normalization` has `mean`/`std` (0-1 scale),
        `network` the keyword arguments that rebuild `net` with `build_network`, `geometry`
        how training images were brought to `image_size` (`policy`: resize | pad | crop, `max_side`)."""
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.names = list(classes["names"])
        self.ignore_index = int(classes.get("ignore_index", 255))
        mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.train_iou = SegmentationIoU(len(self.names), ignore_index=self.ignore_index)
        self.val_iou = SegmentationIoU(len(self.names), ignore_index=self.ignore_index)
        self.history: list[dict] = []  # one entry per completed validation epoch; survives resume
        self._resumed_scheduler_states: list[dict] = []
        self.val_confmat: torch.Tensor | None = None  # of the last validation epoch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) images [B,3,H,W] -> logits [B,C,H,W]."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metric: SegmentationIoU) -> torch.Tensor:
        images, masks = batch
        target = masks.long()
        logits = self(images)
        loss = self.loss(logits, target)
        metric.update(logits.detach().argmax(dim=1), target)
        self.log(
            f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True,
            prog_bar=True, batch_size=images.shape[0], sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_iou)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_iou)

    def _epoch_end(self, stage: str, metric: SegmentationIoU) -> dict:
        iou = metric.compute()  # synchronised across ranks
        if stage == "val":
            self.val_confmat = metric.confusion_matrix()  # summed over ranks; rows target, columns prediction
        metric.reset()
        miou = mean_iou(iou)
        per_class = iou_by_name(iou, self.names)
        if not math.isnan(miou):
            self.log(f"{stage}/mIoU", miou, prog_bar=True, sync_dist=False)
        for name, value in per_class.items():
            if value is not None:  # absent classes are not logged
                self.log(f"{stage}/IoU/{name}", value, sync_dist=False)
        return {"mIoU": None if math.isnan(miou) else miou, "IoU": per_class}

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train", self.train_iou)

    def on_validation_epoch_end(self) -> None:
        result = self._epoch_end("val", self.val_iou)
        if not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, **result})

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        total_steps = int(self.trainer.estimated_stepping_batches)
        for state in self._resumed_scheduler_states:  # a resumed run whose max_epochs was raised
            if state.get("total_steps") not in (None, total_steps):
                log.warning(
                    "trainer.max_epochs changed since the checkpoint: the schedule is stretched from %d to %d steps",
                    state["total_steps"], total_steps,
                )
                state["total_steps"] = total_steps
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["poc59_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before configure_optimizers; the scheduler states are loaded after it, from this same dict.
        self.history = list(checkpoint.get("poc59_history", []))
        self._resumed_scheduler_states = checkpoint.get("lr_schedulers") or []
