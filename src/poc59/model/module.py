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
from torchmetrics import MeanMetric

from poc59.model.metrics import SegmentationIoU, iou_by_name, iou_from_confmat, mean_iou

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
        channels_last: bool | None = None,
        compile: bool = False,
        compile_options: dict | None = None,
    ) -> None:
        """`classes` is a ClassTable dict, `normalization` has `mean`/`std` (0-1 scale),
        `network` the keyword arguments that rebuild `net` with `build_network`, `geometry`
        how training images were brought to `image_size` (`policy`: resize | pad | crop, `max_side`).
        `channels_last` (None: on CUDA only) and `compile` (torch.compile, with `compile_options`)
        change how the network runs, not what it computes; they are not saved with the checkpoint."""
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler", "channels_last", "compile", "compile_options"])
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
        # val/loss as a mean over images with a labelled pixel, summed over ranks: a rank whose shard holds
        # only the feed's all-ignore padding counts nothing (Lightning's sync_dist mean would count it).
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.channels_last, self.compile_net, self.compile_options = channels_last, bool(compile), dict(compile_options or {})
        self._memory_format = torch.contiguous_format
        self.history: list[dict] = []  # one entry per completed validation epoch; survives resume
        self._resumed_scheduler_states: list[dict] = []
        self.val_confmat: torch.Tensor | None = None  # of the last validation epoch

    def configure_model(self) -> None:
        """Before the strategy wraps the module (DDP buckets follow the parameters' layout): channels_last
        on CUDA (convolutions run on NHWC tensor cores; `channels_last=None`), and torch.compile if asked.
        In place, so the checkpoint's keys do not change."""
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        if self.channels_last or (self.channels_last is None and device.type == "cuda"):
            self._memory_format = torch.channels_last
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and not getattr(self.net, "_compiled_call_impl", None):
            self.net.compile(**self.compile_options)

    @property
    def runs_channels_last(self) -> bool:
        """Whether the network runs in channels_last (decided by `configure_model`)."""
        return self._memory_format == torch.channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) images [B,3,H,W] -> logits [B,C,H,W]."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        return self.net(x.contiguous(memory_format=self._memory_format))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], metric: SegmentationIoU) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, masks as int64): no host sync here, this runs on every training step."""
        images, masks = batch
        target = masks.long()
        logits = self(images)
        loss = self.loss(logits, target)
        metric.update(logits.detach().argmax(dim=1), target)
        return loss, target

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, self.train_iou)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, target = self._step(batch, self.val_iou)
        labelled = (target != self.ignore_index).flatten(1).any(1).sum()  # images that count (padding does not)
        self.val_loss.update(torch.where(labelled > 0, loss.detach(), torch.zeros_like(loss)), labelled)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)

    def _epoch_end(self, stage: str, metric: SegmentationIoU) -> dict:
        confmat = metric.confusion_matrix()  # one collective: summed over ranks; rows target, columns prediction
        iou = iou_from_confmat(confmat)
        if stage == "val":
            self.val_confmat = confmat
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
