"""predict's streamed outputs: the overlay (the scan's rows and a legend of the damage classes it holds) and the
label map written as PNGs band by band, and the maps kept on disk for the IIIF annotations."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from poc59.analysis.colour import ignore_rgb, lookup_table, overlay
from poc59.core.classes import ARTEFACT
from poc59.inference.outputs import OverlayPicture, PngFile, PngStream, SpilledMap, label_map_png


def test_an_rgb_png_streamed_in_bands_is_the_rows_one_above_the_other_exactly():
    rng = np.random.default_rng(0)
    top, bottom = rng.integers(0, 256, (37, 23, 3), np.uint8), rng.integers(0, 256, (5, 23, 3), np.uint8)
    buf = io.BytesIO()
    png = PngStream(buf, 23)
    for y in range(0, 37, 8):  # bands of 8 rows, the last one short, then a part of another height
        png.add(top[y : y + 8])
    png.add(bottom)
    with pytest.raises(ValueError, match="uint8 \\[h, 23, 3\\]"):  # a row of another width is refused
        png.add(np.zeros((4, 22, 3), np.uint8))
    assert png.finish() == 42
    decoded = Image.open(io.BytesIO(buf.getvalue()))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.concatenate([top, bottom]))


def _swatches(panel: np.ndarray) -> set[str]:
    colours = {name: rgb for name, rgb in zip(ARTEFACT.names, ARTEFACT.rgb())} | {"ignored": ignore_rgb()}
    return {name for name, rgb in colours.items() if name != "Clean" and np.all(panel == rgb, axis=-1).sum() > 20}


def test_the_overlay_legend_lists_only_the_damage_classes_the_scan_holds(tmp_path):
    scan = np.full((60, 400, 3), 200, np.uint8)
    picture = OverlayPicture(tmp_path / "o.png", 400, 60, ARTEFACT)
    picture.paste(0, scan)
    decoded = np.asarray(Image.open(picture.close({0, 3, 6, 255})))
    assert decoded.shape[1] == 400 and decoded.shape[0] > 60
    assert np.array_equal(decoded[:60], scan)
    assert _swatches(decoded[60:]) == {"Dust", "Dirt"}  # not the 14 others, not Clean, not ignored

    picture = OverlayPicture(tmp_path / "clean.png", 400, 60, ARTEFACT)
    picture.paste(0, scan)
    only_clean = np.asarray(Image.open(picture.close({0})))
    assert _swatches(only_clean[60:]) == set()
    assert (only_clean[60:].min(axis=-1) < 100).any()  # "only Clean" is written instead


def test_the_overlay_written_in_bands_is_the_whole_picture_pixel_for_pixel(tmp_path):
    """The streamed overlay against an independent reference: the whole overlay computed at once and the legend
    panel stacked below it by NumPy, the file decoded by Pillow."""
    rng = np.random.default_rng(1)
    height, width = 301, 517
    scan = rng.integers(0, 256, (height, width, 3), np.uint8)
    labels = rng.integers(0, 8, (height, width), np.uint8)
    labels[:40, :90] = ARTEFACT.ignore_index
    picture = OverlayPicture(tmp_path / "scan_overlay.png", width, height, ARTEFACT)
    y0 = 0
    for rows in (97, 1, 150, 53):  # uneven bands, as the sliding window hands them over
        picture.paste(y0, overlay(scan[y0 : y0 + rows], labels[y0 : y0 + rows], ARTEFACT))
        y0 += rows
    present = set(np.unique(labels).tolist())
    reference = np.concatenate([overlay(scan, labels, ARTEFACT), np.asarray(picture.legend_panel(present))])
    with Image.open(picture.close(present)) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (width, reference.shape[0])
        assert np.array_equal(np.asarray(img), reference)
    assert [p.name for p in tmp_path.iterdir()] == ["scan_overlay.png"]  # no temporary file left beside it


def test_an_overlay_given_up_or_short_of_rows_leaves_no_file(tmp_path):
    rows = np.zeros((10, 64, 3), np.uint8)
    picture = OverlayPicture(tmp_path / "a.png", 64, 20, ARTEFACT)
    picture.paste(0, rows)
    with pytest.raises(ValueError, match="top to bottom"):
        picture.paste(0, rows)  # rows already given: out of order
    with pytest.raises(ValueError, match="10 of the overlay's 20 rows"):
        picture.close({0})
    picture = OverlayPicture(tmp_path / "b.png", 64, 20, ARTEFACT)
    picture.paste(0, rows)
    picture.abort()  # a scan that failed part-way
    assert list(tmp_path.iterdir()) == []


def test_a_palette_png_written_in_bands_decodes_as_pillows_label_map(tmp_path):
    """`PngFile` with the class palette: the same indices and colours as `label_map_png` (Pillow, whole)."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, ARTEFACT.num_classes, (230, 333), np.uint8)
    labels[100:120] = ARTEFACT.ignore_index
    png = PngFile(tmp_path / "labels.png", 333, lookup_table(ARTEFACT))
    for y in range(0, 230, 64):
        png.add(labels[y : y + 64])
    with Image.open(png.close()) as ours, Image.open(io.BytesIO(label_map_png(labels, ARTEFACT))) as pillows:
        assert ours.mode == pillows.mode == "P"
        assert np.array_equal(np.asarray(ours), labels)
        assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(pillows.convert("RGB")))


def test_a_spilled_map_reads_back_the_windows_of_the_rows_written(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    whole = rng.integers(0, 256, (97, 41), np.uint8)
    monkeypatch.setattr(SpilledMap, "READ_BYTES", 41 * 5)  # windows read in chunks of 5 rows: chunks meet
    kept = SpilledMap(tmp_path, 41, 97)
    for y in range(0, 97, 30):
        kept.add(whole[y : y + 30])
    assert kept.shape == (97, 41) and list(tmp_path.iterdir()) == []  # no name in the folder
    assert np.array_equal(kept.rows(0, 97), whole)
    assert np.array_equal(kept.rows(7, 93, 3, 40), whole[7:93, 3:40])
    with pytest.raises(ValueError, match="past the map's height"):
        kept.add(whole[:1])
    kept.close()
    with pytest.raises(ValueError, match="closed"):
        kept.rows(0, 1)
