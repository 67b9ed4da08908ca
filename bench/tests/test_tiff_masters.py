"""The TIFF-master benchmark measures what it says: its TIFF is a tiled 16-bit LZW master, its PNG twin holds
the pixels that TIFF reads to, and predict's memory child streams the TIFF (no timed assertion)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from bench import tiff_masters
from poc59.data.regions import scale_to_8bit
from poc59.inference.iiif import output_names
from poc59.inference.outputs import MapPyramids


def test_the_master_and_its_png_twin_hold_the_same_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path))
    s = tiff_masters.Sizes(height=300, width=530, model_tile=128, repeats=1)
    tiff, png = tiff_masters.files(s)
    stored = tiff_masters.master_rows(0, s.height, s.width, s.height)
    with tifffile.TiffFile(tiff) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.compression == 5 and page.dtype == np.uint16  # LZW, 16-bit
        assert np.array_equal(page.asarray(), stored)
    assert 60_000 < stored.max() < 65_535  # the scaling by the peak does something
    with Image.open(png) as img:
        assert np.array_equal(np.asarray(img), scale_to_8bit(stored, float(stored.max())))
    seconds, crc_tiff, _ = tiff_masters.read_through(tiff, check=True)
    assert seconds > 0 and crc_tiff == tiff_masters.read_through(png, check=True)[1]
    reader = tiff_masters.measure_reader(tiff, 2**20)  # the reader's own peak, in a fresh process
    assert reader["streamed"] and 0 < reader["added_bytes"] < 64 * 2**20


@pytest.mark.slow
def test_predict_memory_child_streams_a_tiff_master(tmp_path, monkeypatch):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path))
    s = tiff_masters.Sizes(height=1500, width=2000, model_tile=128, repeats=1)
    tiff, _ = tiff_masters.files(s)
    got = tiff_masters.measure_memory(tiff, "pointwise", s.model_tile, {"overlay": False}, max_memory_mb=8)
    # streamed, never decoded whole (at this size the figure itself cannot tell: the whole decode is only 18 MB)
    assert got["streamed"] and (got["width"], got["height"]) == (s.width, s.height) and got["added_bytes"] > 0
    stem, iiif = tiff.stem, set(output_names(tiff.stem))  # the defaults write the IIIF documents
    assert set(got["outputs"]) == {f"{stem}_labels.png", *iiif}  # and overlay=false took
    with_maps = tiff_masters.measure_memory(tiff, "pointwise", s.model_tile, {"pyramid": True}, max_memory_mb=8)
    maps = {stem + suffix for suffix in MapPyramids.SUFFIXES}
    assert with_maps["streamed"] and set(with_maps["outputs"]) == {
        f"{stem}_labels.png",
        f"{stem}_overlay.png",
        *iiif,
        *maps,
    }
