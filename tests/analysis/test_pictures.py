"""The PNGs: valid, sized, non-trivial, coloured from the class table; row normalisation by hand."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from poc59.analysis.pictures import (
    ERROR_COLOURS,
    confusion_matrix_figure,
    covering_sample,
    grouped_iou_bars_figure,
    iou_bars_figure,
    row_normalised,
    sample_grid_figure,
)
from poc59.core.classes import ARTEFACT, ClassTable


def _colours(path) -> set[tuple[int, int, int]]:
    """Every RGB colour in a PNG, after checking it is a real picture (size, many colours)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] >= 300 and rgb.shape[1] >= 400, rgb.shape
    packed = np.unique((rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2])
    colours = {(int(p) >> 16, (int(p) >> 8) & 255, int(p) & 255) for p in packed}
    assert len(colours) > 20, "a near-uniform picture"
    return colours


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_row_normalised_by_hand_with_an_absent_row():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    shares, support = row_normalised(cm)
    assert support.tolist() == [4, 0, 8]
    assert shares[0].tolist() == [0.75, 0.25, 0.0] and shares[2].tolist() == [0.25, 0.25, 0.5]
    assert np.isnan(shares[1]).all()  # no ground-truth pixels: blank, not 0
    big = np.random.default_rng(1).integers(0, 50, (16, 16))
    assert np.allclose(row_normalised(big)[0].sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="square"):
        row_normalised(np.zeros((2, 3)))


def test_confusion_matrix_png(tmp_path):
    table = ClassTable.from_names(["background", "crack", "stain"])
    cm = np.array([[90, 10, 0], [0, 0, 0], [0, 0, 50]])  # "stain" 100 % right, "crack" absent
    path = confusion_matrix_figure(cm, table, tmp_path / "sub" / "cm.png", title="val")
    colours = _colours(path)
    darkest = tuple(round(255 * c) for c in colormaps["Blues"](1.0)[:3])
    assert darkest in colours  # the 100 % cell is drawn at the top of the scale
    with pytest.raises(ValueError, match="3 classes"):
        confusion_matrix_figure(np.ones((4, 4)), table, tmp_path / "x.png")


def test_iou_bars_use_class_colours_and_leave_absent_classes_without_a_bar(tmp_path):
    iou = {n: 0.1 + 0.05 * i for i, n in enumerate(ARTEFACT.names)}
    iou["Lightleak"] = None  # absent
    intervals = {n: (v - 0.05, v + 0.05) for n, v in iou.items() if v is not None}
    colours = _colours(iou_bars_figure(iou, intervals, ARTEFACT, tmp_path / "iou.png", "val IoU"))
    for name, hex_colour in zip(ARTEFACT.names, ARTEFACT.palette):
        assert (_rgb(hex_colour) in colours) == (name != "Lightleak"), name
    with pytest.raises(ValueError, match="Krakel"):
        iou_bars_figure({"Krakel": 0.5}, None, ARTEFACT, tmp_path / "bad.png", "x")


def test_sample_grid_shows_the_classes_present_and_the_error_map(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    targets = np.zeros((2, 32, 48), dtype=np.int64)
    targets[:, 8:20, 8:30] = 2  # Peel
    targets[:, :4] = 255
    preds = targets.copy()
    preds[:, :4] = 0
    preds[1, 20:28, 10:40] = 10  # Staining, wrong
    path = sample_grid_figure(images, targets, preds, ARTEFACT, tmp_path / "grid.png", ["img001", "img002 (worst)"])
    colours = _colours(path)
    for name in ("Clean", "Peel", "Staining"):
        assert _rgb(ARTEFACT.palette[ARTEFACT.names.index(name)]) in colours, name
    for rgb in ERROR_COLOURS.values():
        assert rgb in colours
    for name in ("Dust", "Lightleak", "Writing"):  # not in the samples: neither drawn nor in the legend
        assert _rgb(ARTEFACT.palette[ARTEFACT.names.index(name)]) not in colours, name
    with pytest.raises(ValueError, match="titles"):
        sample_grid_figure(images, targets, preds, ARTEFACT, tmp_path / "x.png", ["one"])


def test_each_row_keeps_its_own_size_and_predictions_on_ignore_are_not_drawn(tmp_path):
    """Ragged rows (no canvas to pad them onto), and a prediction where the target is ignore shown as ignore."""
    rng = np.random.default_rng(1)
    shapes = [(32, 48), (20, 60)]
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in shapes]
    targets = [np.zeros(hw, dtype=np.int64) for hw in shapes]
    targets[1][:, 30:] = 255  # ignore
    preds = [t.copy() for t in targets]
    preds[1][:, 30:] = 10  # Staining, but only where nothing is scored
    colours = _colours(sample_grid_figure(images, targets, preds, ARTEFACT, tmp_path / "g.png", ["a", "b"]))
    assert _rgb(ARTEFACT.palette[ARTEFACT.names.index("Staining")]) not in colours
    assert ERROR_COLOURS["ignored"] in colours  # (the legend always shows the error colours)
    with pytest.raises(ValueError, match=r"must be \[H, W\] = \(20, 60\)"):
        sample_grid_figure(images, [targets[0], targets[0]], preds, ARTEFACT, tmp_path / "x.png", ["a", "b"])


def test_the_sample_covers_as_many_classes_as_it_can_then_goes_by_id():
    presence = np.zeros((5, 5), bool)
    presence[:, 0] = True
    presence[1, 1] = True
    presence[2, [2, 3]] = True
    presence[3, [1, 2, 3]] = True
    presence[4, 4] = True
    ids = ["e", "d", "c", "b", "a"]
    assert covering_sample(presence, ids, 2) == [3, 4]  # b (3 new classes), then a (class 4)
    assert covering_sample(presence, ids, 4) == [3, 4, 2, 1]  # every class shown: then by id (c, d)
    assert covering_sample(presence, ids, 9) == [3, 4, 2, 1, 0]


def test_grouped_iou_bars_one_colour_per_run(tmp_path):
    runs = {
        f"run{r}": {n: (None if (r, i) == (0, 3) else 0.2 + 0.1 * r) for i, n in enumerate(ARTEFACT.names)}
        for r in range(3)
    }
    intervals = {"run1": {n: (0.25, 0.35) for n in ARTEFACT.names}}
    colours = _colours(
        grouped_iou_bars_figure(runs, ARTEFACT, tmp_path / "grouped.png", "compare", intervals=intervals)
    )
    tab10 = [tuple(round(255 * c) for c in rgb) for rgb in colormaps["tab10"].colors]
    assert all(c in colours for c in tab10[:3]) and tab10[3] not in colours
