"""Colours come from the class table: colorize, overlay and legend."""

from __future__ import annotations

import numpy as np
import pytest

from poc59.analysis.colour import colorize, delta_e2000, ignore_rgb, labelled_panels, legend, overlay, srgb_to_lab
from poc59.analysis.pictures import ERROR_COLOURS
from poc59.core.classes import ARTEFACT, IGNORE_COLOUR, ClassTable, generated_palette, hex_to_rgb


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


@pytest.mark.parametrize(
    ("lab1", "lab2", "expected"),
    [  # pairs 1, 7, 17, 20 and 25 of Sharma, Wu and Dalal's CIEDE2000 test data (2005)
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((50.0, 2.5, 0.0), (50.0, 3.1736, 0.5854), 1.0000),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ],
)
def test_ciede2000_matches_the_published_test_data(lab1, lab2, expected):
    assert delta_e2000(np.array(lab1), np.array(lab2)) == pytest.approx(expected, abs=1e-4)


def test_srgb_to_lab_of_white_and_red():
    assert srgb_to_lab((255, 255, 255)) == pytest.approx([100.0, 0.0, 0.0], abs=1e-3)
    assert srgb_to_lab((255, 0, 0)) == pytest.approx([53.2408, 80.0925, 67.2032], abs=1e-3)


def test_the_ignore_colour_is_clearly_distinct_from_every_class_colour():
    """CIEDE2000 above 25 from every ARTeFACT class and every generated palette (2 to 16 classes), above 20
    from the error map's own colours (ignored pixels are one of its three keys)."""
    ignore = srgb_to_lab(ignore_rgb())

    def nearest(colours: list[tuple[int, int, int]]) -> float:
        return float(delta_e2000(srgb_to_lab(np.array(colours)), ignore).min())

    assert nearest(ARTEFACT.rgb()) > 25
    generated = {hex_to_rgb(c) for n in range(2, 17) for c in generated_palette(n)}
    assert nearest(sorted(generated)) > 25
    assert nearest([ERROR_COLOURS["correct"], ERROR_COLOURS["wrong"]]) > 20
