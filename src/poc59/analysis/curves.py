"""Pictures of numbers over trials: a search's history and its parameters' importances."""

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
