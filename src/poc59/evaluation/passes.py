"""One pass of a model over images of a split, fed exactly as training validation feeds them.

Same preloaded uint8 tensors, same BatchFeed (whole images, or non-overlapping tiles under
policy=crop), same arithmetic (the Segmenter is SegmentationModule.forward), 32-bit on CPU and
the run's mixed precision on CUDA, as training: so a run's best val/mIoU is reproduced. Gives every
registered statistic (`poc59.metrics`: the confusion matrix, ...) of each image, counted on the device in
this process (their sums are the split's; the per-image ones feed the bootstrap and the worst images),
the inference time, and predicted label maps for pictures.

`score_native` is the other mode: each image at its stored resolution through predict's own
path (sliding window or resize-and-back, as the model's geometry says) against its full-resolution
mask; what a conservator gets from `python -m poc59.predict`, not what training validated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from poc59.artifacts.trained import TrainedModel
from poc59.core.device import autocast, autocast_dtype, lightning_precision, synchronize
from poc59.core.progress import Steps
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.decoding import canvas_side, load_native
from poc59.data.feed import BatchFeed
from poc59.inference import image as inference
from poc59.metrics import registry
from poc59.metrics.confusion import confusion_matrix

NATIVE_SPEED_CONVENTION = (
    "predict's whole path per image at its stored resolution (tiling or resizing, forward, blending, argmax; "
    "file decoding and metric updates excluded)"
)
SPEED_CONVENTION = (
    "model forward + argmax only (data feed and metric updates excluded), first batch excluded as warm-up "
    "unless it is the only one; per source image (all its tiles under policy=crop)"
)


log = logging.getLogger("poc59.evaluate")


def precision_for(device: torch.device, trained: str | None = None) -> tuple[str, Any]:
    """(Lightning precision name, autocast context): 32-bit on CPU; on CUDA the run's training precision
    (`trained`, e.g. "bf16-mixed") so validation is reproduced, else `auto_precision()`'s."""
    dtype = autocast_dtype(trained or "auto", device)
    return lightning_precision(dtype), autocast(device, dtype)


def batch_confmats(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """[B, C, C] int64 confusion matrix of each image (rows target, cols prediction; ignored pixels left out)."""
    return confusion_matrix(preds, target, num_classes, ignore_index, per_image=True)


def batch_statistics(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> dict:
    """Every registered statistic of each image of a batch: {key: int64 [B, *shape]}, on the batch's device."""
    return registry.count(preds, target, num_classes, ignore_index, per_image=True)


def _empty(n: int, num_classes: int) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(n, *s.shape(num_classes), dtype=torch.int64) for k, s in registry.STATISTICS.items()}


def run_feed(
    model: TrainedModel,
    batches: BatchFeed,
    autocast: Any,
    on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None],
) -> float:
    """Predict every batch of a feed; on_batch(label maps, masks, the batch's units) each time.

    Returns the inference seconds for the whole feed (see SPEED_CONVENTION): the timed batches'
    seconds per unit, times all units.
    """
    units = batches.shard(0)
    device, timed, timed_units, n = batches.device, 0.0, 0, len(batches)
    with torch.inference_mode(), Steps(log, "evaluate", n, "batches") as steps:
        for b, (images, masks) in enumerate(batches):
            synchronize(device)
            t0 = time.perf_counter()
            with autocast:
                preds = model.segmenter(images).argmax(dim=1)
            synchronize(device)
            if b > 0 or n == 1:
                timed += time.perf_counter() - t0
                timed_units += len(images)
            on_batch(preds, masks, units[b * batches.batch_size : b * batches.batch_size + len(images)])
            steps.advance()
    return timed / max(timed_units, 1) * len(units)


def score_statistics(
    model: TrainedModel,
    dm: SegmentationDataModule,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    autocast: Any,
) -> tuple[dict[str, torch.Tensor], float]:
    """({statistic key: per-image counts [N, *shape]} in the order of `indices`, seconds for the whole split);
    under policy=crop an image's counts are the sums of its tiles'."""
    classes = model.classes
    per_image = _empty(len(indices), classes.num_classes)
    row = {sample: k for k, sample in enumerate(indices)}

    def on_batch(preds: torch.Tensor, masks: torch.Tensor, units: torch.Tensor) -> None:
        owners = units[:, 0] if units.ndim == 2 else units  # crop tiles are (sample, y, x)
        rows = torch.tensor([row[int(s)] for s in owners])
        counts = batch_statistics(preds, masks.long(), classes.num_classes, classes.ignore_index)
        for key, value in counts.items():
            per_image[key].index_add_(0, rows, value.cpu())

    seconds = run_feed(model, dm.feed(indices, train=False, batch_size=batch_size, device=device), autocast, on_batch)
    return per_image, seconds


def predicted_canvases(
    model: TrainedModel,
    dm: SegmentationDataModule,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    autocast: Any,
) -> np.ndarray:
    """uint8 [n, H, W] label maps on the stored canvas (tiles pasted back under policy=crop; 255 where nothing was predicted)."""
    side = canvas_side(dm.policy, dm.image_size, dm.max_side)  # each image's content at its top left
    canvas = torch.full((len(indices), side, side), 255, dtype=torch.uint8)
    row = {sample: k for k, sample in enumerate(indices)}
    s = dm.image_size

    def on_batch(preds: torch.Tensor, masks: torch.Tensor, units: torch.Tensor) -> None:
        for p, u in zip(preds.to("cpu", torch.uint8), units.tolist()):
            if isinstance(u, list):
                i, y, x = u
                canvas[row[i], y : y + s, x : x + s] = p
            else:
                canvas[row[u]] = p

    run_feed(model, dm.feed(indices, train=False, batch_size=batch_size, device=device), autocast, on_batch)
    return canvas.numpy()


def score_native(
    model: TrainedModel,
    dm: SegmentationDataModule,
    indices: list[int],
    batch_size: int,
    device: torch.device,
    overlap: float = 0.25,
    tta: bool = False,
    trained: str | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Like `score_statistics`, at each image's stored resolution via `inference.predict_label_map` (one image
    at a time), in the run's training precision (`trained`) as `precision_for` reports it."""
    precision = trained or "auto"
    c, ignore = model.classes.num_classes, model.classes.ignore_index
    per_image = _empty(len(indices), c)
    seconds = 0.0
    with Steps(log, "evaluate (native)", len(indices), "images") as steps:
        for k, i in enumerate(indices):
            image, mask = load_native(dm.samples[i], c, ignore, dm.mask_remap)
            t0 = time.perf_counter()
            labels = inference.predict_label_map(model, image, overlap, batch_size, tta, device, precision)
            seconds += time.perf_counter() - t0
            counts = batch_statistics(torch.as_tensor(labels)[None], torch.tensor(mask)[None].long(), c, ignore)
            for key, value in counts.items():
                per_image[key][k] = value[0].cpu()
            steps.advance(f"{dm.samples[i].id}, {image.shape[1]} x {image.shape[0]} px")
    return per_image, seconds
