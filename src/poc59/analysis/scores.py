"""Everything reported about a segmentation, as a JSON-ready record: the registry's metrics
(`poc59.metrics.registry`) of one split's statistics, plus each class's support and presence.

The metrics themselves live in `poc59.metrics` (the confusion-matrix ones in `poc59.metrics.confusion`, a new
one is added there with `poc59.metrics.registry.metric`); evaluate, compare and cross-validation pooling report
them through `scores`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

from poc59.metrics import registry
from poc59.metrics.confusion import present, support


def scores(stats: Mapping[str, Tensor | np.ndarray] | Tensor | np.ndarray, names: Sequence[str]) -> dict:
    """Every registered metric of one split, JSON-ready (NaN -> None): split metrics by key, and per class by
    name each per-class metric, its "support" (target pixels) and "present" (in target or prediction).

    `stats` maps statistic keys to the split's counts; a bare [C, C] confusion matrix stands for
    {"confusion": it} (metrics needing other statistics are then left out)."""
    if not isinstance(stats, Mapping):
        stats = {"confusion": stats}
    cm = stats["confusion"]
    if tuple(np.shape(cm)) != (len(names), len(names)):
        raise ValueError(
            f"a [{len(names)}, {len(names)}] confusion matrix is needed for {len(names)} classes, "
            f"got {tuple(np.shape(cm))}"
        )
    out = registry.scores(stats, names)
    sup, pres = support(cm).tolist(), present(cm).tolist()
    for c, name in enumerate(names):
        out["per_class"][str(name)].update(support=int(sup[c]), present=bool(pres[c]))
    return out
