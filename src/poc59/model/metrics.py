"""The one metric convention: per-class IoU from one split-wide confusion matrix.

Every number shown as "IoU"/"mIoU" comes from here:

- One confusion matrix is accumulated over the whole evaluated split by
  torchmetrics' ``MulticlassJaccardIndex(num_classes, ignore_index=255,
  average="none")`` (its ``confmat`` state: rows = target class, columns =
  predicted class; pixels whose target is 255 are dropped). Under DDP
  torchmetrics sums the state across ranks before it is read.
- Per-class IoU = diag / (rowsum + colsum - diag). A class that is neither in
  the target nor predicted anywhere in the split has an empty union: it is
  *absent* and its IoU is NaN (JSON null), not 0 and not 1.
- mIoU = mean over non-absent classes (the mmsegmentation convention). A class
  predicted but never present in the target counts as IoU 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from poc59.classes import IGNORE_INDEX

__all__ = [
    "SegmentationIoU",
    "all_clean_baseline",
    "iou_by_name",
    "iou_from_confmat",
    "mean_iou",
    "metric_convention",
]


def metric_convention() -> str:
    """One-line description of the convention, for labelling reported numbers."""
    return (
        "mIoU: mean of per-class IoU from one confusion matrix over the whole split, "
        "over classes present in target or prediction (absent classes excluded; "
        f"predicted-but-never-present counts 0); ignore label {IGNORE_INDEX} excluded"
    )


def iou_from_confmat(confmat: Tensor) -> Tensor:
    """Per-class IoU (float64) from a [C, C] confusion matrix (rows target, cols prediction).

    IoU_c = cm[c, c] / (sum_j cm[c, j] + sum_i cm[i, c] - cm[c, c]); NaN where the
    union is empty (class absent from target and prediction).
    """
    cm = torch.as_tensor(confmat).detach().to(device="cpu", dtype=torch.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {tuple(cm.shape)}")
    tp = cm.diagonal()
    union = cm.sum(1) + cm.sum(0) - tp
    iou = torch.full_like(tp, float("nan"))
    nonempty = union > 0
    iou[nonempty] = tp[nonempty] / union[nonempty]
    return iou


def mean_iou(iou: Tensor) -> float:
    """Mean over non-absent (non-NaN) classes; NaN if every class is absent."""
    vals = torch.as_tensor(iou).detach().to(device="cpu", dtype=torch.float64)
    keep = ~torch.isnan(vals)
    if not keep.any():
        return float("nan")
    return float(vals[keep].mean())


def iou_by_name(iou: Tensor, names: Sequence[str]) -> dict[str, float | None]:
    """``{class name: IoU}`` in class order, ``None`` (JSON null) for absent classes."""
    vals = torch.as_tensor(iou).detach().to(device="cpu", dtype=torch.float64).tolist()
    if len(vals) != len(names):
        raise ValueError(f"{len(vals)} IoU values but {len(names)} class names")
    return {str(n): (None if math.isnan(v) else float(v)) for n, v in zip(names, vals)}


class SegmentationIoU(MulticlassJaccardIndex):
    """Split-wide confusion matrix and IoU under the one convention (see module doc).

    A ``MulticlassJaccardIndex(average="none")`` whose ``compute()`` returns
    per-class IoU as float64 with NaN for absent classes (torchmetrics' own
    would give 0). Update it with integer label maps ``preds [B, H, W]``
    (argmax of the logits) and ``target [B, H, W]`` (255 = ignore); float
    logits ``[B, C, H, W]`` are accepted and argmaxed here, but passing labels
    is cheaper. Reading methods (``compute``, ``per_class``, ``miou``,
    ``confusion_matrix``) see the state summed over DDP ranks.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        kwargs.pop("average", None)
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, average="none", **kwargs)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    "SegmentationIoU: float preds must be logits [B, C, H, W]; pass integer labels "
                    f"[B, H, W] otherwise (got preds {tuple(preds.shape)}, target {tuple(target.shape)})"
                )
            preds = preds.argmax(dim=1)
        super().update(preds, target)

    def compute(self) -> Tensor:
        """Per-class IoU (float64, NaN = absent) from the accumulated confusion matrix."""
        return iou_from_confmat(self.confmat)

    def per_class(self) -> Tensor:
        """Per-class IoU, float64, NaN for absent classes."""
        return self.compute().clone()

    def miou(self) -> float:
        """Mean IoU over non-absent classes (NaN if nothing was seen)."""
        return mean_iou(self.compute())

    def confusion_matrix(self) -> Tensor:
        """The accumulated [C, C] int64 confusion matrix (rows target, cols prediction), on CPU."""
        with self.sync_context():
            return self.confmat.detach().to("cpu").clone()

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


def all_clean_baseline(
    targets: Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    chunk: int = 16,
) -> float:
    """mIoU of predicting class 0 ("Clean") everywhere on ``targets`` [N, H, W].

    Computed through :class:`SegmentationIoU`, i.e. under the same convention as
    every reported mIoU. A model must beat this to have learned anything.
    """
    t = torch.as_tensor(targets)
    if t.ndim < 2:
        raise ValueError(f"targets must be label maps [N, H, W], got shape {tuple(t.shape)}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    metric = SegmentationIoU(num_classes, ignore_index=ignore_index)
    for start in range(0, t.shape[0], chunk):
        tb = t[start : start + chunk].long()
        metric.update(torch.zeros_like(tb), tb)
    return metric.miou()
