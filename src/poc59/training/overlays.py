"""See the model learn: a few fixed validation images with ground truth and prediction in TensorBoard.

Each validation epoch (not the sanity check), the first `k` images of the first
validation batch are predicted once more and logged, one picture per image:
image | ground-truth overlay | predicted overlay (damage blended in its class
colour from the checkpoint's class table; Clean and ignored pixels left as the
image), each panel named above it and the classes it shows listed below it. The validation order is fixed, so the same images show every epoch.
Rank 0 only, one extra forward on k images: no measurable cost. No TensorBoard
logger, or `k` null/0: nothing happens.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from poc59.analysis.colour import labelled_panels, legend
from poc59.core.classes import ClassTable

__all__ = ["ValidationOverlays"]

TAG = "val_overlay"


class ValidationOverlays(L.Callback):
    """Log `k` validation overlays (image | truth | prediction) to TensorBoard every validation epoch."""

    def __init__(self, k: int | None = 4, alpha: float = 0.5) -> None:
        if k is not None and k < 0:
            raise ValueError(f"callbacks.val_overlays.k must be >= 0 or null, got {k}")
        self.k = k or 0
        self.alpha = alpha
        self._legend_logged = False

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any | None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self.k or trainer.sanity_checking or not trainer.is_global_zero:
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        images, masks = batch[0][: self.k], batch[1][: self.k]
        with torch.no_grad():
            preds = pl_module(images).argmax(dim=1)
        classes = ClassTable.from_dict(pl_module.hparams["card"]["classes"])
        images_np = images.permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()
        masks_np, preds_np = masks.to("cpu").numpy(), preds.to("cpu").numpy()
        for i, (image, mask, pred) in enumerate(zip(images_np, masks_np, preds_np)):
            picture = labelled_panels(image, mask, pred, classes, self.alpha)
            writer.add_image(f"{TAG}/{i}", picture, global_step=trainer.global_step, dataformats="HWC")
        if not self._legend_logged:
            rows = "\n".join(f"| {name} | #{r:02X}{g:02X}{b:02X} |" for name, (r, g, b) in legend(classes))
            writer.add_text(
                f"{TAG}/legend",
                "image / ground truth / prediction; Clean and ignored pixels left as the image\n\n"
                f"| class | colour |\n|---|---|\n{rows}",
                global_step=trainer.global_step,
            )
            self._legend_logged = True
