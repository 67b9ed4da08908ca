"""python -m poc59.predict reads a reduced resolution when the model needs less: a resize model (and a crop model
trained under max_side) on a pyramidal TIFF or a JPEG 2000 master whose full resolution exceeds max_memory_mb
predicts from the smallest stored level that holds its target, never decodes the full resolution whole, and
the log names the level; a file with no such level is decoded whole, with a log line saying so."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

import poc59.inference.run as predict_run
from inference.standins import LocalConv, model
from poc59.inference.image import band_labels, logit_bands
from poc59.inference.scans import open_scan
from poc59.predict import main

W, H = 512, 384


def _photo(seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8: smooth gradients and blobs plus noise, so that every level differs from the others."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 255 / W, yy * 255 / H, 128 + 100 * np.sin(xx / 23.0) * np.cos(yy / 17.0)], -1)
    return np.clip(base + rng.normal(0, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def _pyramid(path, full: np.ndarray) -> None:
    """A tiled Deflate TIFF with reduced levels 1/2, 1/4, 1/8 in SubIFDs (box-filtered, as pyramids are)."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(full, photometric="rgb", tile=(64, 64), compression="deflate", subifds=3)
        for k in (2, 4, 8):
            level = full.reshape(H // k, k, W // k, k, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            tif.write(level, photometric="rgb", tile=(64, 64), compression="deflate", subfiletype=1)


class _LevelOnly:
    """ImageRows whose only pixels are one level's: what predict must have fed the model."""

    def __init__(self, level: np.ndarray) -> None:
        self.level, self.width, self.height = level, W, H

    def at_least(self, width: int, height: int) -> np.ndarray:
        return self.level

    def rows(self, y0: int, y1: int) -> np.ndarray:
        raise AssertionError("the full resolution was read for the model")

    whole = rows


def _labels_from(trained, level: np.ndarray) -> np.ndarray:
    labels = np.empty((H, W), np.uint8)
    for y0, band in logit_bands(trained, _LevelOnly(level)):
        labels[y0 : y0 + band.shape[1]] = band_labels(band)
    return labels


def _predict(trained, scan, out, monkeypatch, *extra: str) -> np.ndarray:
    monkeypatch.setattr(predict_run, "load_models", lambda *args: trained)
    # 0.5 MB: the full 512 x 384 resolution takes ~2 MB decoded, a 1/4 level ~0.12 MB
    args = [f"ckpt={out.parent / 'unused.ckpt'}", f"input={scan}", f"output={out}", "max_memory_mb=0.5", *extra]
    assert main(args) == 0
    return np.asarray(Image.open(out / f"{scan.stem}_labels.png"))


@pytest.mark.parametrize(
    ("geometry", "level", "target"),
    [
        ({"policy": "resize", "image_size": 64}, 2, "64 x 64"),  # 128 x 96 is the smallest with both sides >= 64
        ({"policy": "pad", "image_size": 64}, 3, "64 x 48"),
        ({"policy": "crop", "image_size": 32, "max_side": 100}, 2, "100 x 75"),
    ],
)
def test_a_pyramidal_master_over_the_budget_predicts_from_the_level_the_model_needs(
    geometry, level, target, tmp_path, monkeypatch, caplog
):
    full = _photo()
    scan = tmp_path / "master.tif"
    _pyramid(scan, full)
    trained = model(LocalConv(classes=3, seed=1), **geometry)
    caplog.set_level("INFO")
    labels = _predict(trained, scan, tmp_path / "out", monkeypatch)
    k = 2**level
    said = " ".join(caplog.text.split())
    assert f"{scan}: level {level} ({W // k} x {H // k}) read for the model's {target}, not the full {W} x {H}" in said
    assert "decoded whole (" not in said and "read in strips" in said  # the overlay streamed the full resolution
    with tifffile.TiffFile(scan) as tif:
        stored = tif.series[0].levels[level].asarray()
    assert np.array_equal(labels, _labels_from(trained, stored))


def test_a_master_with_no_smaller_level_is_decoded_whole_and_the_log_says_so(tmp_path, monkeypatch, caplog):
    full = _photo()
    scan = tmp_path / "flat.tif"
    tifffile.imwrite(scan, full, photometric="rgb", tile=(64, 64), compression="deflate")
    trained = model(LocalConv(classes=3, seed=1), policy="resize", image_size=64)
    caplog.set_level("INFO")
    labels = _predict(trained, scan, tmp_path / "out", monkeypatch)
    said = " ".join(caplog.text.split())
    assert (
        f"{scan}: decoded whole ({W} x {H}) to be brought to the model's 64 x 64: the file stores no smaller level"
        in said
    )
    assert np.array_equal(labels, _labels_from(trained, full))


def test_a_jpeg2000_master_over_the_budget_decodes_only_a_reduced_resolution(tmp_path, monkeypatch, caplog):
    scan = tmp_path / "master.jp2"
    scan.write_bytes(imagecodecs.jpeg2k_encode(_photo(), level=0, codecformat="jp2", resolutions=4))
    trained = model(LocalConv(classes=3, seed=1), policy="resize", image_size=64)
    caplog.set_level("INFO")
    # overlay=false: the overlay paints the full resolution, which a JPEG 2000 file only gives decoded whole
    labels = _predict(trained, scan, tmp_path / "out", monkeypatch, "overlay=false")
    said = " ".join(caplog.text.split())
    assert f"{scan}: level 2 (128 x 96) read for the model's 64 x 64, not the full {W} x {H}" in said
    assert "JPEG 2000 cannot be read in parts" not in said
    assert np.array_equal(labels, _labels_from(trained, open_scan(scan, level=2).whole()))

    caplog.clear()  # with the overlay, the full resolution is decoded (once, whole) and the log says why
    _predict(trained, scan, tmp_path / "out2", monkeypatch)
    said = " ".join(caplog.text.split())
    assert "because JPEG 2000 cannot be read in parts" in said and "level 2 (128 x 96) read for the model" in said
