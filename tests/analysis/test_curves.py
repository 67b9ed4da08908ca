"""training_curves.png: the curves a run is judged by, with the all-Clean baseline and the best epoch marked."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

import poc59.training.run as training
from helpers import SMALL, make_cfg
from poc59.analysis.curves import training_curves, training_curves_figure

ROWS = [
    {"epoch": 0, "train_loss": 1.2, "val_loss": 1.1, "val_miou": 0.10, "lr": 1e-3},
    {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_miou": 0.30, "lr": 5e-4},
    {"epoch": 2, "train_loss": 0.7, "val_loss": 0.9, "val_miou": 0.25, "lr": 1e-4},
]


def test_the_miou_panel_shows_the_all_clean_baseline_and_the_best_epoch(tmp_path):
    fig = training_curves(ROWS, "run", baseline=0.125, best_epoch=1, first_class="Clean")
    loss, miou, lr = fig.axes
    handles, labels = miou.get_legend_handles_labels()
    assert labels == ["val mIoU", "all-Clean 12.5 %", "best epoch 1"]
    baseline, star = handles[1], handles[2]
    assert list(baseline.get_ydata()) == [12.5, 12.5] and baseline.get_linestyle() == "--"
    assert list(star.get_xdata()) == [1] and list(star.get_ydata()) == pytest.approx([30.0])
    for ax in (loss, miou, lr):  # the best epoch is marked through every panel
        assert any(list(line.get_xdata()) == [1, 1] for line in ax.get_lines())
    assert miou.get_legend() is not None
    png = training_curves_figure(ROWS, tmp_path / "curves.png", "run", baseline=0.125, best_epoch=1)
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    green = np.rint(255 * np.array(to_rgb("tab:green"))).astype(np.uint8)
    assert (pixels == green).all(axis=1).sum() > 50  # the marker is drawn, not only listed


def test_without_a_baseline_or_best_epoch_the_curves_stand_alone():
    fig = training_curves([{"epoch": 0, "train_loss": 1.0}], "run")
    assert fig.axes[1].get_legend_handles_labels()[1] == []
    assert fig.axes[0].get_legend_handles_labels()[1] == ["train loss (epoch mean)"]


@pytest.mark.slow  # a training: 20 s at a load of 8-10
def test_a_training_run_draws_its_baseline_and_best_epoch(tmp_path, monkeypatch):
    drawn = {}

    def record(rows, path, title, **marks):
        drawn.update(marks, path=path)
        return training_curves_figure(rows, path, title, **marks)

    monkeypatch.setattr(training, "training_curves_figure", record)
    cfg = make_cfg(tmp_path, *SMALL, "data.synthetic.n=6", "trainer.max_epochs=2", "threads=1")
    summary = training.train(cfg)
    assert drawn["baseline"] == summary["baseline_val/mIoU"] is not None
    assert drawn["best_epoch"] == summary["best_epoch"] is not None
    assert drawn["first_class"] == summary["classes"]["names"][0]
    assert drawn["path"].stat().st_size > 0
