"""The registry: what is counted per image (statistics) and what is reported from the counts (metrics).

- A **statistic** is an int64 array of counts of one image, ``[*shape(C)]`` for C classes (the confusion
  matrix ``[C, C]``; boundary intersections and unions ``[2, C]``), computed on the device from integer
  label maps ``preds`` and ``target`` ``[B, H, W]`` (target 255 = ignored), without a host sync. Counts of
  a split, a fold or a bootstrap resample are the sums of their images' counts.
- A **metric** is one function of the statistics it ``needs`` (passed in that order), each stacked over any
  leading dimensions (``[..., *shape]``: one split, or R bootstrap resamples), returning ``[..., C]`` for a
  per-class metric (NaN = undefined, JSON null) or ``[...]`` for a metric of the split. Every metric is
  higher-is-better.

Registering a statistic (``statistic``) and a metric (``metric``) is all it takes for training to
accumulate and log it (``<stage>/<name>`` or ``<stage>/<name>/<class>``), for summary.json, the model card,
the trackers and the end-of-run report to carry it, for evaluate to write it to metrics.json (per-class
metrics with bootstrap intervals) and for compare and cross-validation pooling to tabulate it. The metric
that picks a run's best epoch is the setting ``monitor`` (``val/<name>`` of a split metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from poc59.core.classes import IGNORE_INDEX
from poc59.core.config import SettingError

__all__ = [
    "METRICS",
    "STATISTICS",
    "Metric",
    "Statistic",
    "best_entry",
    "check_monitor",
    "class_metrics",
    "count",
    "headline",
    "metric",
    "scores",
    "split_metrics",
    "statistic",
    "values",
]

StatisticFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Statistic:
    """Counts of one image: `key` (its name in per_image_confusion.npz and in the training state), `shape`
    (C classes -> the counts' shape), `meaning`, and `count(preds, target, num_classes, ignore_index,
    per_image)` -> int64 ``[B, *shape]`` with `per_image`, else their sum ``[*shape]``, on the inputs' device."""

    key: str
    shape: Callable[[int], tuple[int, ...]]
    meaning: str
    count: StatisticFn


@dataclass(frozen=True)
class Metric:
    """One reported number: `key` (in metrics.json, compare's tables), `name` (logged as
    ``<stage>/<name>``, in summary.json as ``val/<name>``, in the history), `label` and `meaning` (shown
    beside it), `compute` (of the statistics in `needs`, see the module doc), `per_class`."""

    key: str
    name: str
    label: str
    meaning: str
    compute: Callable[..., Tensor]
    per_class: bool = False
    needs: tuple[str, ...] = ("confusion",)
    stacked: bool = True

    def of(self, stats: Mapping[str, Tensor]) -> Tensor:
        """This metric of `stats` ({statistic key: counts [..., *shape]}), float64 on the CPU. A function
        registered with ``stacked=False`` takes one split's counts: it is applied to each of a stack."""
        args = [torch.as_tensor(stats[k]).detach().to(device="cpu", dtype=torch.float64) for k in self.needs]
        if self.stacked:
            return torch.as_tensor(self.compute(*args), dtype=torch.float64)
        shape = STATISTICS[self.needs[0]].shape
        lead = args[0].shape[: args[0].ndim - len(shape(int(args[0].shape[-1])))]
        flat = [a.reshape(-1, *a.shape[len(lead) :]) for a in args]
        one = [torch.as_tensor(self.compute(*parts), dtype=torch.float64) for parts in zip(*flat)]
        return torch.stack(one).reshape(tuple(lead) + tuple(one[0].shape))

    def available(self, stats: Mapping[str, object]) -> bool:
        """Whether `stats` holds every statistic this metric needs (records written before it was registered may not)."""
        return all(k in stats for k in self.needs)


STATISTICS: dict[str, Statistic] = {}  # in registration order
METRICS: dict[str, Metric] = {}  # in registration order: the order of every table's columns and lines


def statistic(key: str, shape: Callable[[int], tuple[int, ...]], meaning: str) -> Callable[[StatisticFn], StatisticFn]:
    """Decorator: count `fn(preds, target, num_classes, ignore_index, per_image=False)` as statistic `key`."""

    def add(fn: StatisticFn) -> StatisticFn:
        STATISTICS[key] = Statistic(key, shape, meaning, fn)
        return fn

    return add


def metric(
    key: str,
    name: str,
    label: str,
    meaning: str,
    *,
    per_class: bool = False,
    needs: Sequence[str] = ("confusion",),
    stacked: bool = True,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: report `fn(*statistics in needs)` as metric `key` (see the module doc for where it appears);
    `stacked=False` for a function of one split's counts only (it is then applied to each of a stack)."""

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        missing = [k for k in needs if k not in STATISTICS]
        if missing:
            raise ValueError(f"metric {key} needs unregistered statistics {missing}: register them first")
        METRICS[key] = Metric(key, name, label, meaning, fn, per_class, tuple(needs), stacked)
        return fn

    return add


def class_metrics() -> list[Metric]:
    """The per-class metrics, in registration order."""
    return [m for m in METRICS.values() if m.per_class]


def split_metrics() -> list[Metric]:
    """The metrics of a whole split (one number each), in registration order."""
    return [m for m in METRICS.values() if not m.per_class]


def headline() -> Metric:
    """The first registered split metric (mIoU): shown in the progress bar and chosen by default."""
    return split_metrics()[0]


def count(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX, *, per_image: bool = False
) -> dict[str, Tensor]:
    """Every registered statistic of label maps `preds` and `target` ``[B, H, W]`` ({key: int64 counts}, on
    their device, ``[B, *shape]`` with `per_image`, else summed over the batch)."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must be label maps of one shape")
    return {k: s.count(preds, target, num_classes, ignore_index, per_image=per_image) for k, s in STATISTICS.items()}


def values(stats: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{metric key: float64 values} of every registered metric whose statistics `stats` holds."""
    return {m.key: m.of(stats) for m in METRICS.values() if m.available(stats)}


def _none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def scores(stats: Mapping[str, Tensor], names: Sequence[str]) -> dict:
    """JSON-ready values of one split's statistics ({key: counts [*shape]}): each split metric under its key,
    and ``per_class``: {class name: {per-class metric key: value}} (NaN -> None). Metrics whose statistics
    are missing are left out."""
    computed = values(stats)
    per_class = {str(n): {} for n in names}
    out: dict = {}
    for m in METRICS.values():
        if m.key not in computed:
            continue
        v = computed[m.key]
        if m.per_class:
            if v.shape != (len(names),):
                raise ValueError(f"{m.key}: {tuple(v.shape)} values for {len(names)} classes")
            for n, x in zip(names, v.tolist()):
                per_class[str(n)][m.key] = _none(x)
        else:
            out[m.key] = _none(float(v))
    return {**out, "per_class": per_class}


def by_name(stats: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, float | dict[str, float | None] | None]:
    """{metric name: value, or {class name: value} per class} of one split: a history entry's figures."""
    s = scores(stats, names)
    out: dict = {}
    for m in METRICS.values():
        if m.per_class and m.available(stats):
            out[m.name] = {str(n): s["per_class"][str(n)][m.key] for n in names}
        elif m.key in s:
            out[m.name] = s[m.key]
    return out


def _split_metric_names() -> list[str]:
    return [f"val/{m.name}" for m in split_metrics()]


def check_monitor(monitor: object) -> str:
    """The setting `monitor` (``val/<name>`` of a registered split metric), or SettingError naming the choices."""
    if monitor is None:
        return f"val/{headline().name}"
    choices = _split_metric_names()
    if str(monitor) not in choices:
        raise SettingError(
            f"monitor={monitor}: not a metric of the validation split; pass one of "
            + ", ".join(f"monitor={c}" for c in choices)
        )
    return str(monitor)


def monitored(monitor: str | None) -> Metric:
    """The split metric a `monitor` setting (``val/<name>``, None = the headline) names; SettingError if none."""
    name = check_monitor(monitor).removeprefix("val/")
    return next(m for m in split_metrics() if m.name == name)


def best_entry(history: Sequence[Mapping], monitor: str | None = None) -> Mapping | None:
    """The history entry ({"epoch", metric name: value, ...}) with the highest `monitor` (``val/<name>``;
    default the headline); entries without a value for it (absent, or written before it was registered) are
    skipped; the earliest wins a tie. None when no entry has a value."""
    name = (monitor or f"val/{headline().name}").removeprefix("val/")
    scored = [h for h in history if isinstance(h.get(name), int | float) and not math.isnan(h[name])]
    return max(scored, key=lambda h: h[name]) if scored else None
