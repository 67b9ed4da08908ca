"""Pictures of numbers over epochs and trials: a run's training curves, a search's history and its
parameters' importances."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from poc59.analysis.pictures import save_figure


def search_history_figure(
    numbers: Sequence[int], values: Sequence[float], maximize: bool, path: str | Path, title: str, ylabel: str
) -> Path:
    """Each complete trial's value (dots) and the best so far (a step line), by trial number."""
    pick = max if maximize else min
    best = [pick(values[: i + 1]) for i in range(len(values))]
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    ax.plot(numbers, values, "o", label="trial")
    ax.step(numbers, best, where="post", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def importance_figure(importance: Mapping[str, float], path: str | Path, title: str, xlabel: str) -> Path:
    """One horizontal bar per parameter, the most important on top."""
    names = list(importance)[::-1]
    fig = Figure(figsize=(7, 0.6 * len(names) + 1.5), dpi=110)
    ax = fig.add_subplot()
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(
    rows: Sequence[Mapping[str, float | None]],
    title: str,
    baseline: float | None = None,
    best_epoch: int | None = None,
    first_class: str = "Clean",
) -> Figure:
    """Three panels by epoch: train and val loss, val mIoU (%), learning rate (log scale, at each epoch's end).

    The mIoU panel also shows `baseline` (the val mIoU of predicting `first_class` everywhere, 0-1) as a
    dashed horizontal line, and `best_epoch` (the epoch whose checkpoint is best.ckpt) as a dotted vertical
    line through every panel with a star on its mIoU, each named in the panel's legend.
    """
    fig = Figure(figsize=(11, 3.6), dpi=110)
    axes = fig.subplots(1, 3)
    epochs = [r["epoch"] for r in rows]

    def line(ax, key: str, label: str, scale: float = 1.0) -> None:
        pts = [(e, scale * r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", markersize=3, label=label)

    line(axes[0], "train_loss", "train loss (epoch mean)")
    line(axes[0], "val_loss", "val loss")
    axes[0].set_ylabel("loss")
    line(axes[1], "val_miou", "val mIoU", 100.0)
    axes[1].set_ylabel("val mIoU (%)")
    if baseline is not None:
        axes[1].axhline(
            100.0 * baseline, color="0.35", linestyle="--", lw=1, label=f"all-{first_class} {100.0 * baseline:.1f} %"
        )
    if best_epoch is not None:
        for ax in axes:
            ax.axvline(best_epoch, color="tab:green", linestyle=":", lw=1.2)
        best = next((r.get("val_miou") for r in rows if r["epoch"] == best_epoch), None)
        star = [100.0 * best] if best is not None else []
        axes[1].plot(
            [best_epoch] * len(star), star, "*", color="tab:green", markersize=11, label=f"best epoch {best_epoch}"
        )
    line(axes[2], "lr", "learning rate")
    axes[2].set_ylabel("learning rate")
    if any(r.get("lr") for r in rows):
        axes[2].set_yscale("log")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def training_curves_figure(
    rows: Sequence[Mapping[str, float | None]],
    path: str | Path,
    title: str,
    baseline: float | None = None,
    best_epoch: int | None = None,
    first_class: str = "Clean",
) -> Path:
    """`training_curves` as a PNG at `path`."""
    return save_figure(training_curves(rows, title, baseline, best_epoch, first_class), path)
