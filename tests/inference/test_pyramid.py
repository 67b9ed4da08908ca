"""Tiled, pyramidal TIFF maps written band by band (poc59.inference.pyramid) and predict's pyramid=true: read back
with tifffile level by level against reductions computed here with NumPy, never left half-written under their
name, and streamed within a band's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from in_process import command
from inference.standins import LocalConv, model
from poc59.analysis.colour import ignore_rgb
from poc59.artifacts.load import load_model
from poc59.core.classes import ARTEFACT
from poc59.inference.image import ArrayImage, logit_bands, predict_label_map
from poc59.inference.outputs import MapPyramids, band_confidence
from poc59.inference.pyramid import PyramidWriter, level_sizes, needs_bigtiff, working_bytes
from poc59.predict import main


def _palette(classes) -> np.ndarray:
    """The TIFF ColorMap [3, 256] uint16 a class table's map must carry: class c's colour at c, the ignore
    colour at 255 (0 elsewhere), 8-bit colours scaled to 16 bits."""
    rgb = np.zeros((256, 3), np.uint16)
    rgb[: classes.num_classes] = classes.rgb()
    rgb[classes.ignore_index] = ignore_rgb()
    return rgb.T * 257


def _mean_reduction(level: np.ndarray) -> np.ndarray:
    """The next level by the mean of each 2 x 2 block (of the pixels an edge block holds), rounded half up."""
    h, w = level.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan)
    padded[:h, :w] = level
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    return np.floor(np.nanmean(blocks, axis=(1, 3)) + 0.5).astype(np.uint8)


def _bands(image: np.ndarray, heights: list[int]):
    """`image`'s rows top to bottom in bands of the given heights, cycled."""
    y, k = 0, 0
    while y < len(image):
        yield image[y : y + heights[k % len(heights)]]
        y += heights[k % len(heights)]
        k += 1


def _write(path: Path, image: np.ndarray, reduction: str, heights: list[int], **kwargs) -> Path:
    with PyramidWriter(path, image.shape[1], image.shape[0], reduction, **kwargs) as writer:
        for band in _bands(image, heights):
            writer.add(band)
    return path


class _Page:
    """What a level's TIFF page says about itself, read while its file is open."""

    def __init__(self, page: tifffile.TiffPage) -> None:
        self.is_tiled, self.tilelength, self.tilewidth = page.is_tiled, page.tilelength, page.tilewidth
        self.compression, self.photometric, self.subfiletype = page.compression, page.photometric, page.subfiletype
        self.predictor = page.predictor
        self.colormap = None if page.colormap is None else np.array(page.colormap)


def _levels(path: Path) -> tuple[list[np.ndarray], list[_Page], bool]:
    """Every level of a pyramidal TIFF, their pages, whether it is BigTIFF. The levels must be the file's pages in
    its main IFD chain, level 0 first (the layout GDAL's overviews and libvips' pyramids use), not SubIFDs."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert len(tif.series) == 1 and len(tif.pages) == len(series.levels)
        assert [level.keyframe.index for level in series.levels] == list(range(len(tif.pages)))
        assert all("SubIFDs" not in page.tags for page in tif.pages)
        pages = [_Page(level.keyframe) for level in series.levels]
        return [level.asarray() for level in series.levels], pages, tif.is_bigtiff


def test_a_label_map_streamed_in_bands_is_a_tiled_deflate_palette_pyramid_of_nearest_reductions(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 16, (70, 100)), np.ones((10, 10), np.int64)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.01] = 255  # outside the object
    labels = labels[:, :999]  # an odd width: the right column of tiles and of every level is partial
    lut = (_palette(ARTEFACT).T // 257).astype(np.uint8)  # [256, 3]: the writer's colormap argument
    path = _write(tmp_path / "classes.tif", labels, "nearest", [37, 1, 256, 300], colormap=lut)

    levels, pages, bigtiff = _levels(path)
    assert [lv.shape for lv in levels] == [(700, 999), (350, 500), (175, 250)]  # down to one 256 px tile
    assert not bigtiff
    assert np.array_equal(levels[0], labels)  # the full resolution, pixel for pixel
    for k, (level, page) in enumerate(zip(levels, pages)):
        assert np.array_equal(level, labels[:: 2**k, :: 2**k]), f"level {k} is not level 0 sampled every 2^{k} px"
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(page.colormap, _palette(ARTEFACT)), f"level {k}'s palette is not the class table's"
        assert page.subfiletype == (1 if k else 0)  # levels 1.. are reduced-resolution versions of level 0
    with Image.open(path) as img:  # another reader: Pillow opens level 0 as a palette image
        assert img.mode == "P" and img.size == (999, 700)
        assert img.getpalette()[: 3 * 16] == [v for rgb in ARTEFACT.rgb() for v in rgb]
    assert os.listdir(tmp_path) == ["classes.tif"]  # no temporary file left beside it
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain open()'s permissions: folders are shared


@pytest.mark.parametrize("predictor", [False, True])
def test_a_confidence_map_is_reduced_by_the_mean_level_by_level(tmp_path, predictor):
    rng = np.random.default_rng(1)
    confidence = rng.integers(0, 256, (517, 613), np.uint8)
    path = _write(tmp_path / "confidence.tif", confidence, "mean", [64, 7, 130], tile=64, level=1, predictor=predictor)
    levels, pages, _ = _levels(path)
    expected = [confidence]
    while max(expected[-1].shape) > 64:
        expected.append(_mean_reduction(expected[-1]))
    assert [lv.shape for lv in levels] == [e.shape for e in expected] == [(h, w) for w, h in level_sizes(613, 517, 64)]
    assert len(levels) == 5
    for k, (level, want, page) in enumerate(zip(levels, expected, pages)):
        assert np.array_equal(level, want), f"level {k}"
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.colormap is None
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and (page.tilelength, page.tilewidth) == (64, 64)
        assert page.predictor == (tifffile.PREDICTOR.HORIZONTAL if predictor else tifffile.PREDICTOR.NONE)
    with Image.open(path) as img:  # another reader decodes level 0 (and the predictor) alike
        assert img.mode == "L" and np.array_equal(np.asarray(img), confidence)


def test_bigtiff_past_two_gib_of_pixels_and_readable_when_asked(tmp_path):
    assert not needs_bigtiff(25_000, 20_000)  # 500 MP: a classic TIFF every reader opens
    assert needs_bigtiff(50_000, 50_000)
    small = np.arange(300 * 200, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    levels, _, bigtiff = _levels(_write(tmp_path / "big.tif", small, "mean", [50], bigtiff=True))
    assert bigtiff and np.array_equal(levels[0], small) and len(levels) == 2


def test_an_error_mid_write_or_missing_rows_leave_no_file(tmp_path):
    labels = np.ones((600, 500), np.uint8)
    with pytest.raises(RuntimeError, match="the model failed"):
        with PyramidWriter(tmp_path / "m.tif", 500, 600, "nearest") as writer:
            writer.add(labels[:300])
            raise RuntimeError("the model failed")
    assert os.listdir(tmp_path) == []
    writer = PyramidWriter(tmp_path / "m.tif", 500, 600, "nearest")
    writer.add(labels[:599])
    with pytest.raises(ValueError, match="599 of the map's 600 rows given"):
        writer.close()
    with pytest.raises(ValueError, match="rows past the map's height"):
        with PyramidWriter(tmp_path / "m.tif", 500, 600, "nearest") as writer:
            writer.add(labels)
            writer.add(labels[:1])
    assert os.listdir(tmp_path) == []


def test_a_disk_full_while_the_tiff_is_written_leaves_no_file(tmp_path, monkeypatch):
    import errno

    real = tifffile.TiffWriter.write
    calls = []

    def full_after_level_0(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # level 0 is written: its bytes are in the file, the reduced levels not yet
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", full_after_level_0)
    with pytest.raises(OSError, match="No space left") as raised:
        _write(tmp_path / "m.tif", np.zeros((600, 500), np.uint8), "nearest", [100])
    assert raised.value.filename == str(tmp_path / "m.tif")  # the message names the map
    assert os.listdir(tmp_path) == []


_KILLED = """
import os, signal, sys
import numpy as np
from poc59.inference.pyramid import PyramidWriter
path, when = sys.argv[1], sys.argv[2]
if when == "rename":  # the file complete under its temporary name, killed just before the rename
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
with PyramidWriter(path, 3000, 2000, "mean") as writer:
    for y0 in range(0, 2000, 100):
        if when == "bands" and y0 == 1000:
            os.kill(os.getpid(), signal.SIGKILL)
        writer.add(np.full((100, 3000), y0 % 256, np.uint8))
"""


@pytest.mark.parametrize("when", ["bands", "rename"])
def test_a_kill_mid_write_leaves_no_file_under_the_final_name(tmp_path, when):
    done = subprocess.run(
        [sys.executable, "-c", _KILLED, str(tmp_path / "map.tif"), when], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, done.stderr
    left = os.listdir(tmp_path)
    assert "map.tif" not in left
    # killed streaming: nothing at all (the spilled tiles had no name); killed before the rename: the complete
    # file under a hidden temporary name only
    assert left == [] if when == "bands" else [len(left), left[0][:9], left[0][-4:]] == [1, ".map.tif.", ".tmp"]


_MEMORY = """
import json, sys, tracemalloc
import numpy as np
from poc59.inference.pyramid import PyramidWriter
width, height, rows = 8000, 6000, 256
across = (np.arange(width) // 97 * 37 % 251).astype(np.uint8)
down = (np.arange(height) // 89 * 37 % 251).astype(np.uint8)
tracemalloc.start()
with PyramidWriter(sys.argv[1], width, height, sys.argv[2]) as writer:
    for y0 in range(0, height, rows):
        writer.add(down[y0 : y0 + rows, None] + across[None, :])  # uint8, wrapping: the band, never the map
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "band": width * rows}))
"""


@pytest.mark.parametrize("reduction", ["nearest", "mean"])
def test_a_large_map_is_written_within_a_few_bands_of_memory(tmp_path, reduction):
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(tmp_path / "big.tif"), reduction],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(done.stdout)
    # held: the band given, one row of tiles being filled per level (2 bands in all, the levels halving) and
    # the reduction's sums; measured 7.2 MB (nearest) and 10.0 MB (mean) for a band of 2 MB and a map of 48 MB
    whole = 8000 * 6000
    assert measured["peak"] < 6 * measured["band"] < whole / 3.5, measured
    assert measured["peak"] - measured["band"] < working_bytes(8000), measured  # what predict's budget counts
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(h, w) for w, h in level_sizes(8000, 6000)] and len(levels) == 6
        across = (np.arange(8000) // 97 * 37 % 251).astype(np.uint8)
        down = (np.arange(4000, 4010) // 89 * 37 % 251).astype(np.uint8)
        assert np.array_equal(levels[0].asarray()[4000:4010], down[:, None] + across[None, :])


def test_band_confidence_is_the_winning_class_softmax_probability_in_255ths():
    logits = LocalConv(classes=5, seed=2)(torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8))[0].detach()
    logits[:, 0, :3] = torch.tensor([2.0, 2.0, -1.0, -1.0, -1.0])[:, None]  # a tie: the first class's probability
    got = band_confidence(logits)
    p = torch.softmax(logits.double(), dim=0).max(dim=0).values.numpy() * 255
    assert got.dtype == np.uint8 and got.shape == (40, 60)
    clear = np.abs(p - np.floor(p) - 0.5) > 1e-3  # away from a rounding boundary float32 may cross
    assert np.array_equal(got[clear], np.floor(p[clear] + 0.5).astype(np.uint8)) and clear.mean() > 0.99
    assert np.abs(got.astype(int) - np.floor(p + 0.5)).max() <= 1
    assert (got >= 255 // 5).all()  # never below 1 / C


def _scans(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for stem, (h, w) in {"a": (300, 410), "b": (97, 130)}.items():
        pixels = np.kron(rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3)), np.ones((10, 10, 1), np.int64))
        Image.fromarray(pixels[:h, :w].astype(np.uint8)).save(folder / f"{stem}.png")
    return folder


@pytest.mark.slow  # two predict batches and the logits again: 12 s at a load of 8-10
def test_predict_pyramid_true_writes_both_maps_that_match_its_png_map(trained_run, tmp_path):
    scans = _scans(tmp_path / "scans")
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "pyramid=true", "overlay=false", "iiif=false"]) == 0
    trained = load_model(ckpt)
    stats = json.loads((out / "statistics.json").read_text())
    tifs = ["a_classes.tif", "a_confidence.tif", "b_classes.tif", "b_confidence.tif"]
    assert sorted(stats["outputs"]) == sorted(
        ["a_labels.png", "b_labels.png", *tifs, "statistics.csv", "statistics.json"]
    )
    assert sorted(os.listdir(out)) == sorted(stats["outputs"])
    for stem, row in zip("ab", stats["images"]):
        assert (row["classes_tif"], row["confidence_tif"]) == (f"{stem}_classes.tif", f"{stem}_confidence.tif")
        png = np.asarray(Image.open(out / f"{stem}_labels.png"))
        classes, pages, _ = _levels(out / f"{stem}_classes.tif")
        assert np.array_equal(classes[0], png)
        assert all(np.array_equal(lv, png[:: 2**k, :: 2**k]) for k, lv in enumerate(classes))
        assert np.array_equal(pages[0].colormap, _palette(trained.classes))
        confidence, pages, _ = _levels(out / f"{stem}_confidence.tif")
        assert pages[0].predictor == tifffile.PREDICTOR.HORIZONTAL and pages[0].colormap is None
        pixels = np.asarray(Image.open(scans / f"{stem}.png"))
        logits = torch.cat([band.clone() for _, band in logit_bands(trained, ArrayImage(pixels))], dim=1)
        p = torch.softmax(logits.double(), dim=0).max(dim=0).values.numpy() * 255
        assert np.abs(confidence[0].astype(int) - np.floor(p + 0.5)).max() <= 1  # float32 vs float64 rounding
        assert np.array_equal(png, predict_label_map(trained, pixels))
        for k in range(1, len(confidence)):
            assert np.array_equal(confidence[k], _mean_reduction(confidence[k - 1]))

    plain = tmp_path / "plain"  # the default writes no pyramid
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={plain}", "overlay=false"]) == 0
    assert not list(plain.glob("*.tif"))


def test_a_scan_failing_mid_stream_leaves_no_pyramid_and_the_others_are_written(trained_run, tmp_path, monkeypatch):
    import poc59.inference.run as predict

    scans = _scans(tmp_path / "scans")
    real = predict.logit_bands

    def fails_after_a_band(model, scan, *args, **kwargs):
        for k, band in enumerate(real(model, scan, *args, band_rows=64, **kwargs)):
            if scan.path.stem == "a" and k == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            yield band

    monkeypatch.setattr(predict, "logit_bands", fails_after_a_band)
    out = tmp_path / "out"
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "pyramid=true", "overlay=false", "iiif=false"]) == 2
    stats = json.loads((out / "statistics.json").read_text())
    assert [f["image"] for f in stats["failed"]] == [str(scans / "a.png")]
    left = sorted(os.listdir(out))
    assert left == ["b_classes.tif", "b_confidence.tif", "b_labels.png", "statistics.csv", "statistics.json"]
    assert sorted(stats["outputs"]) == left


def test_the_pyramids_of_an_object_mask_hold_the_ignore_label_and_zero_confidence_outside(trained_run, tmp_path):
    scans = _scans(tmp_path / "scans")
    mask = np.zeros((300, 410), np.uint8)
    mask[50:250, 100:300] = 1
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert (
        main(
            [
                f"ckpt={ckpt}",
                f"input={scans / 'a.png'}",
                f"output={out}",
                f"object_mask={tmp_path / 'mask.png'}",
                "pyramid=true",
            ]
        )
        == 0
    )
    classes, _, _ = _levels(out / "a_classes.tif")
    confidence, _, _ = _levels(out / "a_confidence.tif")
    inside = mask > 0
    assert (classes[0][~inside] == 255).all() and (classes[0][inside] < 16).all()
    assert (confidence[0][~inside] == 0).all() and (confidence[0][inside] >= 255 // 16).all()


def test_a_user_file_named_like_a_pyramid_is_never_replaced(trained_run, tmp_path, caplog):
    scans = _scans(tmp_path / "scans")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_confidence.tif").write_bytes(b"the user's own map")
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "pyramid=true"]) == 2
    assert caplog.messages[-1].startswith(f"{out / 'a_confidence.tif'} exists and no earlier predict batch recorded it")
    assert os.listdir(out) == ["a_confidence.tif"] and (out / "a_confidence.tif").read_bytes() == b"the user's own map"


def test_pyramid_true_takes_its_writers_memory_out_of_the_scan_decoding_budget(tmp_path, monkeypatch):
    import poc59.inference.run as predict

    crop = model(LocalConv(classes=3, seed=0), policy="crop", image_size=32)
    monkeypatch.setattr(predict, "load_models", lambda *args: crop)
    budgets = []
    real = predict.open_scan

    def spy(*args, **kwargs):
        budgets.append(kwargs["max_bytes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "open_scan", spy)
    scan = _scans(tmp_path / "scans") / "a.png"
    for pyramid in ("false", "true"):
        out = tmp_path / pyramid
        assert main([f"ckpt={tmp_path / 'unused.ckpt'}", f"input={scan}", f"output={out}", f"pyramid={pyramid}"]) == 0
    assert budgets[0] - budgets[1] == MapPyramids.working_bytes(410) == 2 * 5 * 256 * 512


def test_help_lists_the_pyramid_key_and_a_bad_value_is_named(capsys, monkeypatch):
    """Answered in this process (tests/core/test_cli.py sends predict's --help and a bad value through a real one)."""
    shown = command("predict", ["--help"], capsys, monkeypatch)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.strip().startswith("pyramid="))
    assert line.split()[0] == "pyramid=false" and "<stem>_classes.tif" in line and "<stem>_confidence.tif" in line
    bad = command("predict", ["ckpt=a.ckpt", "input=s", "output=o", "pyramid=maybe"], capsys, monkeypatch)
    assert bad.returncode == 2 and "pyramid=maybe: expected true or false" in bad.stderr
    assert "Traceback" not in bad.stderr
