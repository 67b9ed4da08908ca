"""Boundary IoU (Cheng, Girshick, Dollar, Berg, Kirillov, CVPR 2021), per class: the IoU of the pixels
near each mask's contour, the metric for thin damage (cracks, scratches, hair) that a pixel IoU dominated
by large areas barely sees.

For class c of one image, G = target pixels of c and P = predicted pixels of c. The boundary band of a
mask M is the pixels of M within chessboard distance d of a pixel outside M (the image's outside counts as
outside M), d = max(1, round(DILATION_RATIO x image diagonal)), as the paper's reference code erodes with a
3 x 3 kernel d times. The statistic counts, per class, |band(G) & band(P)| and |band(G) | band(P)| over the
pixels whose target is not ignored (ignored pixels are outside G, so a mask's contour runs along them;
they are then left out of both counts, as the confusion matrix leaves them out). Boundary IoU of a split =
the sum of its images' intersections / the sum of their unions; NaN (absent) where the union is empty,
and the mean over the non-absent classes is mBoundaryIoU, as mIoU is of IoU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from poc59.core.classes import IGNORE_INDEX
from poc59.metrics.confusion import mean_over_present, ratio
from poc59.metrics.registry import metric, statistic

__all__ = ["DILATION_RATIO", "boundary_counts", "boundary_iou", "dilation", "edges", "mean_boundary_iou"]

DILATION_RATIO = 0.02  # d as a fraction of the image diagonal (the paper's default)


def dilation(height: int, width: int, ratio_of_diagonal: float = DILATION_RATIO) -> int:
    """The band's width d in pixels for an image of `height` x `width`: round(ratio x diagonal), at least 1."""
    return max(1, int(round(ratio_of_diagonal * math.hypot(height, width))))


def _window(x: Tensor, k: int, dim: int, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """`op` (torch.maximum or torch.minimum) over every run of `k` consecutive entries along `dim` (length
    L - k + 1), by doubling: after i steps each entry covers 2^i entries, one more step with an offset covers
    k. log2(k) element-wise operations, whatever d, on any integer dtype and device."""
    n, span = x.shape[dim], 1
    while 2 * span <= k:
        m = x.shape[dim] - span
        x = op(x.narrow(dim, 0, m), x.narrow(dim, span, m))
        span *= 2
    return x if span == k else op(x.narrow(dim, 0, n - k + 1), x.narrow(dim, k - span, n - k + 1))


def edges(labels: Tensor, d: int) -> Tensor:
    """bool [N, H, W]: the pixels of the label maps `labels` ([N, H, W]) whose (2d + 1)-square holds another
    label or the image's outside. For class c these are exactly the pixels of c within chessboard distance d
    of a pixel outside c: the band of every class at once, from one window maximum and one minimum."""
    x = F.pad(labels.to(torch.int16), (d, d, d, d), value=-1)  # -1: the outside, no label
    k = 2 * d + 1
    high = _window(_window(x, k, -2, torch.maximum), k, -1, torch.maximum)
    low = _window(_window(x, k, -2, torch.minimum), k, -1, torch.minimum)
    return high != low


@statistic("boundary", lambda c: (2, c), "per class: boundary-band intersection and union pixels (Boundary IoU)")
def boundary_counts(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, per_image: bool = False
) -> Tensor:
    """int64 ``[B, 2, C]`` (``[2, C]`` summed without `per_image`): per image and class, the boundary bands'
    intersection and union pixels (see the module doc), on the inputs' device, no host sync. A pixel is in
    both bands of class c when target and prediction are c there and each is in its map's band."""
    if target.ndim == 2:  # a batch of rows: one-pixel-high images
        preds, target = preds.unsqueeze(1), target.unsqueeze(1)
    d = dilation(target.shape[-2], target.shape[-1])
    valid = target != ignore_index
    g = edges(target, d) & valid & (target < num_classes)
    p = edges(preds, d) & valid & (preds < num_classes)
    b = target.shape[0]
    first = torch.arange(b, device=target.device).view(b, 1, 1) * num_classes  # image i's counts at i * C + c

    def per_class(where: Tensor, labels: Tensor) -> Tensor:
        # scatter_add, not bincount over a boolean selection: both of those ask the device for a size (a sync)
        index = (first + labels.long().clamp(0, num_classes - 1)).flatten()
        counts = torch.zeros(b * num_classes, dtype=torch.int64, device=labels.device)
        return counts.scatter_add_(0, index, where.flatten().to(torch.int64)).view(b, num_classes)

    inter = per_class(g & p & (preds == target), target)
    union = per_class(g, target) + per_class(p, preds) - inter
    out = torch.stack([inter, union], dim=1).to(torch.int64)  # [B, 2, C]
    return out if per_image else out.sum(0)


@metric(
    "boundary_iou",
    "BoundaryIoU",
    "boundary IoU",
    f"IoU of the pixels within {DILATION_RATIO:g} x the image diagonal of each contour (Cheng et al. 2021)",
    per_class=True,
    needs=("boundary",),
)
def boundary_iou(counts: Tensor) -> Tensor:
    """Per class: boundary intersection / union of counts [..., 2, C] -> [..., C]; NaN when the union is empty."""
    return ratio(counts[..., 0, :], counts[..., 1, :])


@metric(
    "mboundary_iou",
    "mBoundaryIoU",
    "mean boundary IoU",
    "mean of per-class boundary IoU over the classes whose boundary is in the target or the prediction",
    needs=("boundary",),
)
def mean_boundary_iou(counts: Tensor) -> Tensor:
    """Mean boundary IoU over non-absent classes, [..., 2, C] -> [...]; NaN where every class is absent."""
    return mean_over_present(boundary_iou(counts))
