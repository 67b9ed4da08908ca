"""The registry's statistics accumulated over an epoch, as torchmetrics state (summed across DDP ranks).

What is counted and what is reported from it is `poc59.metrics` (the convention: one confusion matrix
over the split, absent classes NaN, mIoU over the non-absent ones; see `poc59.metrics.confusion`). This
module holds the training side: `SegmentationStatistics`, one int64 state per registered statistic,
updated on every step without a host sync, and `first_class_baseline`, the mIoU a model must beat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from poc59.core.classes import IGNORE_INDEX
from poc59.metrics import registry
from poc59.metrics.confusion import (
    HISTOGRAM_ROW,
    confusion_matrix,
    histogram,
    iou_by_name,
    iou_from_confmat,
    mean_iou,
    metric_convention,
)

__all__ = [
    "HISTOGRAM_ROW",
    "SegmentationIoU",
    "SegmentationStatistics",
    "confusion_matrix",
    "first_class_baseline",
    "histogram",
    "iou_by_name",
    "iou_from_confmat",
    "mean_iou",
    "metric_convention",
]


def _state(key: str) -> str:
    return f"stat_{key}"


class SegmentationStatistics(Metric):
    """Every registered statistic (`poc59.metrics.registry.STATISTICS`) summed over the updates of an epoch.

    A torchmetrics ``Metric`` with one int64 state per statistic (``[*shape(C)]``, summed over DDP ranks
    when read). Update it with integer label maps ``preds [B, H, W]`` (argmax of the logits) and
    ``target [B, H, W]`` (255 = ignore); float logits ``[B, C, H, W]`` are accepted and argmaxed here. An
    update costs no host sync, so it can run on every training step. ``compute()`` returns per-class IoU
    (float64, NaN = absent); ``statistics()`` returns every count, for the registry's metrics.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.keys = list(registry.STATISTICS)
        for key, stat in registry.STATISTICS.items():
            self.add_state(
                _state(key), torch.zeros(stat.shape(self.num_classes), dtype=torch.int64), dist_reduce_fx="sum"
            )

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    "SegmentationStatistics: float preds must be logits [B, C, H, W]; pass integer labels "
                    f"[B, H, W] otherwise (got preds {tuple(preds.shape)}, target {tuple(target.shape)})"
                )
            preds = preds.argmax(dim=1)
        for key, counts in registry.count(preds, target, self.num_classes, self.ignore_index).items():
            getattr(self, _state(key)).add_(counts)

    def _local(self) -> dict[str, Tensor]:
        return {key: getattr(self, _state(key)) for key in self.keys}

    def compute(self) -> Tensor:
        """Per-class IoU (float64, NaN = absent) from the accumulated confusion matrix."""
        return iou_from_confmat(self._local()["confusion"])

    def statistics(self) -> dict[str, Tensor]:
        """{statistic key: the accumulated counts summed over ranks}, on the CPU.

        The sum over ranks is one collective per statistic on the state's own device: call it on every rank,
        inside Lightning's loop (an epoch-end hook), never after `fit` has returned.
        """
        with self.sync_context():
            return {key: value.detach().to("cpu").clone() for key, value in self._local().items()}

    def confusion_matrix(self) -> Tensor:
        """The accumulated [C, C] int64 confusion matrix (rows target, cols prediction) summed over ranks, on
        CPU (a collective: see `statistics`)."""
        return self.statistics()["confusion"]

    def per_class(self) -> Tensor:
        """Per-class IoU, float64, NaN for absent classes."""
        return self.compute().clone()

    def miou(self) -> float:
        """Mean IoU over non-absent classes (NaN if nothing was seen)."""
        return mean_iou(self.compute())

    def report(self, names: Sequence[str] | None = None) -> dict:
        """Plain dict for summaries: mIoU, per-class IoU (null = absent), convention."""
        iou = self.compute()
        names = list(names) if names is not None else [str(i) for i in range(self.num_classes)]
        m = mean_iou(iou)
        return {
            "miou": None if math.isnan(m) else m,
            "per_class_iou": iou_by_name(iou, names),
            "convention": metric_convention(),
        }


SegmentationIoU = SegmentationStatistics  # the name it had when it counted the confusion matrix only


def first_class_baseline(
    targets: Tensor | np.ndarray | Sequence[Tensor],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    chunk: int = 16,
) -> float:
    """mIoU of predicting class 0 (ARTeFACT's Clean, a set's background) everywhere on ``targets`` [N, H, W]
    (or a list of [H, W] label maps of their own sizes).

    Under the same convention as every reported mIoU (``confusion_matrix``, ``iou_from_confmat``,
    ``mean_iou``), counted in this process only: no collective, so it is safe after `fit` under DDP.
    A model must beat this to have learned anything.
    """
    confmat = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    if isinstance(targets, list | tuple):  # label maps of their own sizes (ragged storage)
        for m in targets:
            tb = torch.as_tensor(m).long()
            confmat += confusion_matrix(torch.zeros_like(tb), tb, num_classes, ignore_index)
        return mean_iou(iou_from_confmat(confmat))
    t = torch.as_tensor(targets)
    if t.ndim < 2:
        raise ValueError(f"targets must be label maps [N, H, W], got shape {tuple(t.shape)}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    for start in range(0, t.shape[0], chunk):
        tb = t[start : start + chunk].long()
        confmat += confusion_matrix(torch.zeros_like(tb), tb, num_classes, ignore_index)
    return mean_iou(iou_from_confmat(confmat))
