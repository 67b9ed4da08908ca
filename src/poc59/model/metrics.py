"""The one metric convention: per-class IoU from one split-wide confusion matrix.

Every number shown as "IoU"/"mIoU" comes from here:

- One confusion matrix is accumulated over the whole evaluated split
  (``confusion_matrix``; rows = target class, columns = predicted class;
  pixels whose target is 255 are dropped), held as the state of a torchmetrics
  ``Metric`` (``SegmentationIoU``) so that under DDP the state is summed
  across ranks before it is read.
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
from torchmetrics import Metric

from poc59.core.classes import IGNORE_INDEX

__all__ = [
    "SegmentationIoU",
    "first_class_baseline",
    "confusion_matrix",
    "histogram",
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


HISTOGRAM_ROW = 1 << 14  # values per row of the scatter table in `histogram` (see there)


def histogram(values: Tensor, bins: int, *, scatter: bool | None = None) -> Tensor:
    """int64 counts of the integers ``values`` (any shape, each in ``0..bins-1``), without a host sync.

    On a CPU this is ``torch.bincount``. On an accelerator ``bincount`` first reads ``values.max()`` back
    to size its output, a host sync that stalls every training step; instead (``scatter``, the default
    off the CPU) the values are cut into rows of ``HISTOGRAM_ROW`` and scatter-added into a
    ``[rows, bins]`` table, which is summed. The rows spread the atomic adds of the frequent bins (most
    pixels are Clean) over many addresses.
    """
    flat = values.reshape(-1).long()
    if scatter is None:
        scatter = flat.device.type != "cpu"
    if not scatter:
        return torch.bincount(flat, minlength=bins)
    rows = max(1, -(-flat.numel() // HISTOGRAM_ROW))
    padded = torch.nn.functional.pad(
        flat, (0, rows * HISTOGRAM_ROW - flat.numel()), value=bins
    )  # padding -> bin `bins`
    table = torch.zeros(rows, bins + 1, dtype=torch.int64, device=flat.device)
    table.scatter_add_(
        1,
        padded.view(rows, HISTOGRAM_ROW),
        torch.ones(1, dtype=torch.int64, device=flat.device).expand(rows, HISTOGRAM_ROW),
    )
    return table.sum(0)[:bins]


def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, per_image: bool = False
) -> Tensor:
    """int64 confusion matrix of integer label maps ``preds`` and ``target`` ``[B, H, W]``: ``[C, C]``, or
    ``[B, C, C]`` with ``per_image``; rows target, columns prediction; pixels whose target is
    ``ignore_index`` are left out (they go to one extra bin, which is dropped: no boolean indexing, so no
    host sync). Label values are not checked here; the data layer refuses labels outside 0..C-1 and 255.
    """
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must be label maps of one shape")
    c = num_classes
    cells = c * c
    index = target.long() * c + preds.long()
    if per_image:
        image = torch.arange(target.shape[0], device=target.device).view(-1, *([1] * (target.ndim - 1)))
        index = index + image * cells
        cells *= target.shape[0]
    index = torch.where(target == ignore_index, cells, index)
    counts = histogram(index, cells + 1)[:cells]
    return counts.view(-1, c, c) if per_image else counts.view(c, c)


class SegmentationIoU(Metric):
    """Split-wide confusion matrix and IoU under the one convention (see module doc).

    A torchmetrics ``Metric`` whose only state is the ``[C, C]`` int64 confusion matrix (summed over DDP
    ranks when read). ``compute()`` returns per-class IoU as float64 with NaN for absent classes. Update
    it with integer label maps ``preds [B, H, W]`` (argmax of the logits) and ``target [B, H, W]``
    (255 = ignore); float logits ``[B, C, H, W]`` are accepted and argmaxed here. An update costs no
    host sync (see ``confusion_matrix``), so it can run on every training step.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        if preds.is_floating_point():
            if preds.ndim != target.ndim + 1:
                raise ValueError(
                    "SegmentationIoU: float preds must be logits [B, C, H, W]; pass integer labels "
                    f"[B, H, W] otherwise (got preds {tuple(preds.shape)}, target {tuple(target.shape)})"
                )
            preds = preds.argmax(dim=1)
        self.confmat += confusion_matrix(preds, target, self.num_classes, self.ignore_index)

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
        """The accumulated [C, C] int64 confusion matrix (rows target, cols prediction) summed over ranks, on CPU.

        The sum over ranks is one collective on the state's own device: call it on every rank, inside
        Lightning's loop (an epoch-end hook), never after `fit` has returned.
        """
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
