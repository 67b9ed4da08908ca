"""The LightningModule: normalise uint8 on the device, step, measure, optimise.

Knows nothing of files or launchers. Everything later commands need to use a
checkpoint on their own is the model card (class names, palette, normalisation,
how to rebuild the network, geometry, ...), saved in its hyperparameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from poc59.metrics import registry
from poc59.metrics.confusion import metric_convention
from poc59.model.metrics import SegmentationStatistics
from poc59.model.segmenter import Segmenter, migrate_state_dict

log = logging.getLogger(__name__)


class SegmentationModule(L.LightningModule):
    """Semantic segmentation with one network, one loss, and every registered metric (`poc59.metrics`) of
    each training and validation epoch: logged as ``<stage>/<name>`` (per class ``<stage>/<name>/<class>``;
    absent classes and undefined values are not logged) and kept per validation epoch in `history`."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        *,
        card: dict,
        channels_last: bool | None = None,
        compile: bool = False,
        compile_options: dict | None = None,
    ) -> None:
        """`card` is the model card's data (`poc59.artifacts.card.ModelCard.to_dict()`: classes, normalisation,
        network, geometry, ...), saved in the checkpoint's hyperparameters so that every command can use the
        checkpoint on its own; this module reads its class table and normalisation. `channels_last` (None: on
        CUDA only) and `compile` (torch.compile, with `compile_options`) change how the network runs, not
        what it computes; they are not saved."""
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "loss", "optimizer", "scheduler", "channels_last", "compile", "compile_options"]
        )
        classes, normalization = card["classes"], card["normalization"]
        self.segmenter = Segmenter(net, normalization["mean"], normalization["std"])
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.names = list(classes["names"])
        self.ignore_index = int(classes.get("ignore_index", 255))
        self.train_iou = SegmentationStatistics(len(self.names), ignore_index=self.ignore_index)
        self.val_iou = SegmentationStatistics(len(self.names), ignore_index=self.ignore_index)
        # val/loss as a mean over images with a labelled pixel, summed over ranks: a rank whose shard holds
        # only the feed's all-ignore padding counts nothing (Lightning's sync_dist mean would count it).
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.channels_last, self.compile_net, self.compile_options = (
            channels_last,
            bool(compile),
            dict(compile_options or {}),
        )
        # one entry per completed validation epoch, {"epoch", metric name: value or {class: value}}; survives resume
        self.history: list[dict] = []
        self._resumed_scheduler_states: list[dict] = []
        self.val_confmat: torch.Tensor | None = None  # of the last validation epoch

    def configure_model(self) -> None:
        """Before the strategy wraps the module (DDP buckets follow the parameters' layout): channels_last
        on CUDA (convolutions run on NHWC tensor cores; `channels_last=None`), and torch.compile if asked.
        In place, so the checkpoint's keys do not change."""
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else self.device
        if self.channels_last or (self.channels_last is None and device.type == "cuda"):
            self.segmenter.memory_format = torch.channels_last
            self.segmenter.net.to(memory_format=torch.channels_last)
        if self.compile_net and not getattr(self.segmenter.net, "_compiled_call_impl", None):
            self.segmenter.net.compile(**self.compile_options)

    @property
    def runs_channels_last(self) -> bool:
        """Whether the network runs in channels_last (decided by `configure_model`)."""
        return self.segmenter.memory_format == torch.channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0-255 float) images [B,3,H,W] -> logits [B,C,H,W] (the Segmenter every command uses)."""
        return self.segmenter(images)

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], metric: SegmentationStatistics
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _epoch_end(self, stage: str, metric: SegmentationStatistics) -> dict:
        """Every registered metric of the epoch's statistics (one collective per statistic: summed over ranks),
        logged; returns {metric name: value, or {class name: value}} (None = undefined)."""
        stats = metric.statistics()
        if stage == "val":
            self.val_confmat = stats["confusion"]
        metric.reset()
        figures = registry.by_name(stats, self.names)
        shown = registry.headline().name
        for name, value in figures.items():
            if isinstance(value, dict):
                for cls, v in value.items():
                    if v is not None:  # absent classes are not logged
                        self.log(f"{stage}/{name}/{cls}", v, sync_dist=False)
            elif value is not None:
                self.log(f"{stage}/{name}", value, prog_bar=name == shown, sync_dist=False)
        return figures

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
                    state["total_steps"],
                    total_steps,
                )
                state["total_steps"] = total_steps
                # the phases' end steps were computed from the old total: keep the new scheduler's (loading
                # the state replaces only the keys it holds), or past the old end the lr would climb again
                state.pop("_schedule_phases", None)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["poc59_history"] = self.history
        card = checkpoint.get("hyper_parameters", {}).get("card")
        if card is not None and self.history:  # the card says what these weights scored
            last = self.history[-1]
            card["metrics"] = {
                **card.get("metrics", {}),
                "validation": {
                    "epoch": last["epoch"],
                    **{f"val/{name}": value for name, value in last.items() if name != "epoch"},
                    "convention": metric_convention(),
                },
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before configure_optimizers and before the weights are loaded; the scheduler states are
        # loaded after it, from this same dict.
        migrate_state_dict(checkpoint["state_dict"])
        self.history = list(checkpoint.get("poc59_history", []))
        self._resumed_scheduler_states = checkpoint.get("lr_schedulers") or []
