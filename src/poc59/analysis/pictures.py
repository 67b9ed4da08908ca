"""The pictures users choose an encoder by: confusion matrix, IoU bars, sample grids, run comparison.

PNG files drawn with matplotlib's Agg canvas (no pyplot, no display, no global
state), written atomically. Class names and colours come only from the
ClassTable passed in; every axis says what its numbers mean.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from poc59.analysis.colour import colorize, ignore_rgb, legend
from poc59.core.atomic import write_bytes
from poc59.core.classes import ClassTable

__all__ = [
    "ERROR_COLOURS",
    "confusion_matrix_figure",
    "error_map",
    "grouped_iou_bars_figure",
    "iou_bars_figure",
    "covering_sample",
    "row_normalised",
    "sample_grid_figure",
]

Interval = tuple[float, float] | None

ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "correct": (224, 224, 224),
    "wrong": (255, 0, 0),
    "ignored": ignore_rgb(),
}
"""Error-map colours: correct and wrong pixels, and pixels whose target is the ignore label."""


def save_figure(fig: Figure, path: str | Path) -> Path:
    """`fig` as a PNG at `path`, written atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return write_bytes(path, buf.getvalue())


def _rgb01(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]


def _pixels(n: float) -> str:
    """Pixel counts short and readable: 950, 12.3k, 4.1M."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n)}"


def _check_names(values: Mapping[str, object], classes: ClassTable, what: str) -> None:
    unknown = [n for n in values if n not in classes.names]
    if unknown:
        raise ValueError(f"{what}: classes {unknown} are not in the class table {list(classes.names)}")


# ---------------------------------------------------------------- confusion matrix


def row_normalised(confmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of each target class's pixels predicted as each class [C, C], pixels per target class [C]).

    Rows are target classes, so each row with pixels sums to 1; a row with no
    target pixels (class absent from the ground truth) is NaN, not 0.
    """
    cm = np.asarray(confmat, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    support = cm.sum(axis=1)
    shares = np.full_like(cm, np.nan)
    has = support > 0
    shares[has] = cm[has] / support[has, None]
    return shares, support


def confusion_matrix_figure(
    confmat: np.ndarray, classes: ClassTable, path: str | Path, title: str | None = None
) -> Path:
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction), cells in %."""
    shares, support = row_normalised(confmat)
    c = classes.num_classes
    if shares.shape[0] != c:
        raise ValueError(f"confusion matrix is {shares.shape[0]}x{shares.shape[0]} but the class table has {c} classes")
    side = max(5.0, 0.5 * c + 3.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(shares * 100.0)

    cmap = colormaps["Blues"].with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="% of the row's ground-truth pixels")
    for i in range(c):
        if support[i] == 0:
            ax.text(
                (c - 1) / 2,
                i,
                "absent (no ground-truth pixels)",
                ha="center",
                va="center",
                color="0.4",
                fontsize=8,
                style="italic",
            )
            continue
        for j in range(c):
            v = shares[i, j] * 100.0
            if v >= 0.5 or (i == j):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v > 55 else "black")
    ylabels = [f"{n} ({_pixels(s)} px)" if s > 0 else f"{n} (absent)" for n, s in zip(classes.names, support)]
    ax.set_xticks(range(c), classes.names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(c), ylabels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class (pixels; ignore label excluded)")
    ax.set_title(title or "Confusion matrix, row-normalised (each row sums to 100 %)", fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- IoU bars


def _bar_texts(values: Sequence[float | None]) -> list[str]:
    return ["absent" if v is None else f"{100 * v:.1f}" for v in values]


def _err(values: Sequence[float | None], intervals: Sequence[Interval]) -> np.ndarray | None:
    """Asymmetric error bars [2, N] in % (0 where there is no interval)."""
    if not any(iv is not None for iv in intervals):
        return None
    err = np.zeros((2, len(values)))
    for k, (v, iv) in enumerate(zip(values, intervals)):
        if v is not None and iv is not None:
            err[0, k], err[1, k] = max(0.0, v - iv[0]) * 100, max(0.0, iv[1] - v) * 100
    return err


def iou_bars_figure(
    per_class_iou: Mapping[str, float | None],
    intervals: Mapping[str, Interval] | None,
    classes: ClassTable,
    path: str | Path,
    title: str,
) -> Path:
    """Per-class IoU as horizontal bars in each class's colour, with interval whiskers; absent classes marked."""
    _check_names(per_class_iou, classes, "per-class IoU")
    names = list(classes.names)
    values = [_finite(per_class_iou.get(n)) for n in names]
    ivs = [(intervals or {}).get(n) for n in names]
    y = np.arange(len(names))
    fig = Figure(figsize=(7.5, 1.2 + 0.32 * len(names)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.barh(
        y,
        [0 if v is None else 100 * v for v in values],
        color=[_rgb01(c) for c in classes.rgb()],
        edgecolor="0.3",
        linewidth=0.6,
        xerr=_err(values, ivs),
        error_kw={"ecolor": "0.2", "capsize": 3, "lw": 1},
    )
    for k, (v, text) in enumerate(zip(values, _bar_texts(values))):
        hi = (ivs[k][1] if ivs[k] is not None and v is not None else (v or 0.0)) * 100
        ax.text(
            hi + 0.01 * _xmax(values, ivs),
            k,
            text,
            va="center",
            fontsize=8,
            color="0.45" if v is None else "black",
            style="italic" if v is None else "normal",
        )
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1 * _xmax(values, ivs))  # room for the value labels
    label = "IoU, %" + (" (whiskers: confidence interval)" if any(i is not None for i in ivs) else "")
    ax.set_xlabel(label)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _xmax(values: Sequence[float | None], intervals: Sequence[Interval]) -> float:
    """Right end of an IoU axis in %: 100, or closer when every value is small (bars stay readable)."""
    top = max([v for v in values if v is not None] + [iv[1] for iv in intervals if iv is not None] + [0.0])
    return min(100.0, max(5.0, 115.0 * top))


def grouped_iou_bars_figure(
    per_run: Mapping[str, Mapping[str, float | None]],
    classes: ClassTable,
    path: str | Path,
    title: str,
    intervals: Mapping[str, Mapping[str, Interval]] | None = None,
    interval_label: str = "confidence interval",
    legend_title: str = "run",
) -> Path:
    """Per-class IoU, one bar per run in each class's group (runs in distinct colours, legend by run label)."""
    if not per_run:
        raise ValueError("grouped IoU bars need at least one run")
    for label, ious in per_run.items():
        _check_names(ious, classes, f"run {label!r}")

    names = list(classes.names)
    runs = list(per_run)
    colours = colormaps["tab10"].colors
    height = 0.8 / len(runs)
    y = np.arange(len(names))
    fig = Figure(figsize=(8.0, 1.5 + len(names) * (0.12 + 0.18 * len(runs))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    everything: tuple[list, list] = ([], [])
    for r, label in enumerate(runs):
        values = [_finite(per_run[label].get(n)) for n in names]
        ivs = [((intervals or {}).get(label) or {}).get(n) for n in names]
        everything[0].extend(values)
        everything[1].extend(ivs)
        pos = y - 0.4 + height * (r + 0.5)
        ax.barh(
            pos,
            [0 if v is None else 100 * v for v in values],
            height=height,
            color=colours[r % len(colours)],
            label=label,
            xerr=_err(values, ivs),
            error_kw={"ecolor": "0.2", "capsize": 2, "lw": 0.8},
        )
        for k, v in enumerate(values):
            if v is None:
                ax.text(0.5, pos[k], "absent", va="center", fontsize=7, color="0.45", style="italic")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, _xmax(*everything))
    ax.set_xlabel("IoU, %" + (f" (whiskers: {interval_label})" if any(iv is not None for iv in everything[1]) else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(
        loc="outside lower center", fontsize=8, title=legend_title, title_fontsize=8, frameon=False
    )  # never over bars
    return save_figure(fig, path)


# ---------------------------------------------------------------- sample grid


def error_map(target: np.ndarray, pred: np.ndarray, classes: ClassTable) -> np.ndarray:
    """uint8 [H, W, 3]: correct, wrong and ignored pixels in ERROR_COLOURS."""
    target, pred = np.asarray(target), np.asarray(pred)
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} differ in size")
    out = np.empty(target.shape + (3,), dtype=np.uint8)
    out[:] = ERROR_COLOURS["wrong"]
    out[target == pred] = ERROR_COLOURS["correct"]
    out[target == classes.ignore_index] = ERROR_COLOURS["ignored"]
    return out


def covering_sample(presence: np.ndarray, ids: Sequence[str], k: int) -> list[int]:
    """k positions whose images together hold as many classes as possible: greedily the image adding the
    most classes not yet shown (ties: the lower id), then, once every class is shown, by id."""
    presence = np.asarray(presence, dtype=bool)
    order = sorted(range(len(ids)), key=lambda p: ids[p])
    chosen: list[int] = []
    shown = np.zeros(presence.shape[1], dtype=bool)
    while len(chosen) < min(k, len(ids)):
        left = [p for p in order if p not in chosen]
        gain = [int((presence[p] & ~shown).sum()) for p in left]
        best = left[int(np.argmax(gain))] if max(gain) > 0 else left[0]
        chosen.append(best)
        shown |= presence[best]
    return chosen


def sample_grid_figure(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    classes: ClassTable,
    path: str | Path,
    titles: Sequence[str],
) -> Path:
    """One row per image: image / ground truth / prediction / error map, each row at the image's own size
    (pass each image cropped to its content: no canvas padding is drawn), with a legend of the classes in
    that row. The prediction is shown as ignore wherever the target is ignore (nothing is scored there)."""
    if not (len(images) == len(targets) == len(preds) == len(titles)):
        raise ValueError(
            f"{len(images)} images, {len(targets)} targets, {len(preds)} predictions, {len(titles)} titles"
        )
    rows = []
    for image, target, pred in zip(images, targets, preds):
        image, target, pred = np.asarray(image), np.asarray(target), np.asarray(pred)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if target.shape != image.shape[:2] or pred.shape != image.shape[:2]:
            raise ValueError(f"target {target.shape} and prediction {pred.shape} must be [H, W] = {image.shape[:2]}")
        pred = np.where(target == classes.ignore_index, classes.ignore_index, pred)
        rows.append((image, target, pred))
    n = len(rows)
    aspect = max(w / h for image, _, _ in rows for h, w in [image.shape[:2]])
    cell = 2.4
    fig = Figure(figsize=(4 * cell * max(1.0, aspect) ** 0.5 + 2.2, n * cell + 1.0), dpi=100, layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    headers = ("image", "ground truth", "prediction", "errors")
    for i, (image, target, pred) in enumerate(rows):
        panels = (image, colorize(target, classes), colorize(pred, classes), error_map(target, pred, classes))
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(headers[j], fontsize=9)
        axes[i, 0].set_ylabel(titles[i], fontsize=8)
        here = {int(v) for v in np.unique(np.concatenate([target.ravel(), pred.ravel()]))}
        handles = [Patch(facecolor=_rgb01(rgb), edgecolor="0.3", label=name) for name, rgb in legend(classes, here)]
        axes[i, 3].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    handles = [
        Patch(facecolor=_rgb01(ERROR_COLOURS[k]), edgecolor="0.3", label=f"error map: {k}")
        for k in ("correct", "wrong", "ignored")
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return save_figure(fig, path)
