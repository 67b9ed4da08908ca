"""Colours come from the class table: colorize, overlay and legend."""

from __future__ import annotations

import numpy as np
import pytest

from poc59.analysis.colour import colorize, ignore_rgb, labelled_panels, legend, overlay
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


def test_labelled_panels_name_each_panel_and_list_only_the_classes_shown():
    image = np.full((48, 64, 3), 128, np.uint8)
    truth = np.zeros((48, 64), np.uint8)
    truth[5:20, 5:20], truth[30:40, 30:60], truth[0, :] = 1, 3, 255
    pred = np.zeros((48, 64), np.uint8)
    pred[10:30, 10:30] = 5
    out = labelled_panels(image, truth, pred, ARTEFACT)
    assert out.shape[1:] == (3 * 64, 3) and out.dtype == np.uint8
    header, body, footer = out[:16], out[16 : 16 + 48], out[16 + 48 :]
    for k in range(3):  # each panel's name: dark text on the white strip above it
        assert (header[:, k * 64 : (k + 1) * 64].min(axis=-1) < 100).any()
    assert np.array_equal(body[:, :64], image)
    colours = ARTEFACT.rgb()
    swatches = {
        c for c in range(1, ARTEFACT.num_classes) if np.all(footer == np.array(colours[c], np.uint8), axis=-1).any()
    }
    assert colours[0] == (0, 0, 0)  # Clean's colour is the text's: its absence is shown by the damage classes alone
    assert swatches == {1, 3, 5}  # the classes in the truth or the prediction; not the others, not ignored
