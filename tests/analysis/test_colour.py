"""Colours come from the class table: colorize, overlay and legend."""

from __future__ import annotations

import numpy as np
import pytest

from poc59.analysis.colour import colorize, ignore_rgb, legend, overlay
from poc59.core.classes import ARTEFACT, IGNORE_COLOUR, ClassTable


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_colorize_paints_each_class_in_its_palette_colour_and_ignore_apart():
    labels = np.array([[0, 1, 15], [255, 3, 1]], dtype=np.uint8)
    pic = colorize(labels, ARTEFACT)
    assert pic.dtype == np.uint8 and pic.shape == (2, 3, 3)
    for (y, x), label in np.ndenumerate(labels):
        want = _rgb(IGNORE_COLOUR) if label == 255 else _rgb(ARTEFACT.palette[label])
        assert tuple(pic[y, x]) == want, (y, x, label)
    assert ignore_rgb() == _rgb(IGNORE_COLOUR)


def test_colorize_uses_the_table_passed_in_not_artefact():
    table = ClassTable.from_names(["background", "crack"])
    pic = colorize(np.array([[0, 1]], dtype=np.int64), table)
    assert tuple(pic[0, 1]) == _rgb(table.palette[1]) != _rgb(ARTEFACT.palette[1])


def test_labels_outside_the_table_are_an_error_not_a_colour():
    table = ClassTable.from_names(["background", "crack"])
    with pytest.raises(ValueError, match=r"\[2, 7\].*class id \(0\.\.1\)"):
        colorize(np.array([[0, 2, 7, 255]]), table)
    with pytest.raises(ValueError, match="integers"):
        colorize(np.zeros((2, 2), dtype=np.float32), table)


def test_overlay_blends_damage_and_leaves_clean_and_ignored_pixels_as_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    labels = np.zeros((4, 5), dtype=np.uint8)
    labels[1, 1], labels[2, 3], labels[3, 0] = 1, 10, 255
    out = overlay(image, labels, ARTEFACT, alpha=0.25)
    keep = (labels == 0) | (labels == 255)
    assert np.array_equal(out[keep], image[keep])
    for y, x in [(1, 1), (2, 3)]:
        want = np.rint(0.75 * image[y, x] + 0.25 * np.array(_rgb(ARTEFACT.palette[labels[y, x]]))).astype(np.uint8)
        assert np.array_equal(out[y, x], want)
    assert np.array_equal(overlay(image, labels, ARTEFACT, alpha=1.0)[1, 1], _rgb(ARTEFACT.palette[1]))
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, labels[:3], ARTEFACT)


def test_legend_lists_names_and_colours_of_the_classes_shown():
    assert legend(ARTEFACT) == [(n, _rgb(c)) for n, c in zip(ARTEFACT.names, ARTEFACT.palette)]
    assert legend(ARTEFACT, {3, 0, 255}) == [
        ("Clean", (0, 0, 0)),
        ("Dust", _rgb(ARTEFACT.palette[3])),
        ("ignored", _rgb(IGNORE_COLOUR)),
    ]
