"""TIFF masters and JPEG 2000 through `poc59.data.regions`: every layout streamed pixel for pixel against an
independent decode (tifffile.imread whole, the 16-bit scaling and colour expansion done here by hand), pyramid
levels, faults named in one message, training reading the same pixels, and the memory a streamed read takes."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from poc59.data.decoding import decode_pair, load_native
from poc59.data.regions import NotInRegions, RegionError, open_raster
from poc59.data.sources import DataError, Sample
from poc59.inference.scans import ScanError, level_at_least, open_scan, scan_levels, scan_size
from tests.inference.test_scans import _swapped_primaries_profile

H, W = 70, 53  # not a multiple of the tile (32) nor of the strip (rowsperstrip 9): edges are cropped


def _pixels(samples: int, dtype, seed: int = 0) -> np.ndarray:
    """[H, W, samples] gradients plus noise (every value range used; LZW / Deflate find something to do)."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 50_000
    yy, xx = np.mgrid[0:H, 0:W]
    base = (xx * top / W + yy * top / H)[..., None] / 2 + rng.normal(0, top / 40, (H, W, samples))
    return np.clip(base, 0, top).astype(dtype)


def _by_hand(stored: np.ndarray, photometric: str, colormap: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 from tifffile's whole decode [H, W, S]: 16 bits scaled so the peak of the colour samples is 255,
    extras (alpha) dropped, min-is-white inverted, gray / palette / CMYK expanded."""
    colours = {"minisblack": 1, "miniswhite": 1, "palette": 1, "rgb": 3, "ycbcr": 3, "separated": 4}[photometric]
    arr = stored.reshape(stored.shape[0], stored.shape[1], -1)[..., :colours]
    if photometric == "miniswhite":
        arr = np.iinfo(arr.dtype).max - arr
    if arr.dtype != np.uint8:
        peak = float(arr.max())
        arr = np.rint(arr.astype(np.float64) * (255.0 / peak)).astype(np.uint8)  # ties to even, as training rounds
    if photometric == "palette":
        return (colormap[:, arr[..., 0]] // 256).astype(np.uint8).transpose(1, 2, 0)
    if photometric == "separated":
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr), "CMYK").convert("RGB"))
    return np.repeat(arr, 3, axis=2) if colours == 1 else arr


def _reference(path: Path, photometric: str, level: int = 0, planar: bool = False) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        stored = tif.series[0].levels[level].asarray()
        colormap = tif.series[0].levels[level].keyframe.colormap
    if planar:
        stored = np.moveaxis(stored, 0, -1)
    return _by_hand(stored, photometric, colormap)


def _streamed(path: Path, step: int = 11, **kw) -> np.ndarray:
    """Rows read top to bottom in overlapping requests, as the sliding window reads them, smallest strips."""
    scan = open_scan(path, max_bytes=1, **kw)
    assert scan.streamed
    out = np.zeros((scan.height, scan.width, 3), np.uint8)
    try:
        for y in range(0, scan.height, step):
            rows = scan.rows(y, y + 2 * step)
            out[y : y + len(rows)] = rows
    finally:
        scan.close()
    return out


def _check(path: Path, photometric: str, planar: bool = False) -> None:
    expect = _reference(path, photometric, planar=planar)
    assert np.array_equal(_streamed(path), expect), path.name
    whole = open_scan(path)
    assert not whole.streamed and np.array_equal(whole.whole(), expect), path.name
    assert scan_size(path) == (W, H)


LAYOUTS = {"tiled": {"tile": (32, 32)}, "striped": {"rowsperstrip": 9}}


@pytest.mark.parametrize("compression", [None, "lzw", "deflate", "zstd", "packbits"])
def test_lossless_compressions_stream_every_bit_depth_colour_and_layout_pixel_for_pixel(tmp_path, compression):
    for dtype in (np.uint8, np.uint16):
        for photometric, samples, extra in (("rgb", 3, {}), ("minisblack", 1, {}), ("rgb", 4, {"extrasamples": [2]})):
            for layout, kw in LAYOUTS.items():
                path = tmp_path / f"{np.dtype(dtype).name}-{photometric}{samples}-{layout}.tif"
                data = _pixels(samples, dtype)
                data = data[..., 0] if samples == 1 else data
                tifffile.imwrite(path, data, photometric=photometric, compression=compression, **kw, **extra)
                _check(path, photometric)


def test_jpeg_in_tiff_gray_and_ycbcr_stream_as_tifffile_decodes(tmp_path):
    for layout, kw in LAYOUTS.items():
        rgb = tmp_path / f"ycbcr-{layout}.tif"
        tifffile.imwrite(rgb, _pixels(3, np.uint8), photometric="ycbcr", compression="jpeg", **kw)
        _check(rgb, "ycbcr")
        gray = tmp_path / f"gray-{layout}.tif"
        tifffile.imwrite(gray, _pixels(1, np.uint8)[..., 0], photometric="minisblack", compression="jpeg", **kw)
        _check(gray, "minisblack")


def test_palette_cmyk_miniswhite_planes_predictor_and_bigtiff(tmp_path):
    colormap = np.stack([np.arange(256) * 257, (255 - np.arange(256)) * 256, np.full(256, 0x80FF)]).astype(np.uint16)
    cases = {
        "palette.tif": ("palette", _pixels(1, np.uint8)[..., 0], {"colormap": colormap, "compression": "lzw"}),
        "cmyk8.tif": ("separated", _pixels(4, np.uint8), {"compression": "deflate", "tile": (32, 32)}),
        "cmyk16.tif": ("separated", _pixels(4, np.uint16), {"compression": "lzw", "rowsperstrip": 9}),
        "white.tif": ("miniswhite", _pixels(1, np.uint16)[..., 0], {"compression": "zstd"}),
        "predictor.tif": ("rgb", _pixels(3, np.uint16), {"compression": "lzw", "predictor": True, "tile": (32, 32)}),
        "big.tif": ("rgb", _pixels(3, np.uint16), {"compression": "deflate", "bigtiff": True, "tile": (32, 32)}),
        "gray-alpha.tif": ("minisblack", _pixels(2, np.uint8), {"extrasamples": [2], "rowsperstrip": 9}),
    }
    for name, (photometric, data, kw) in cases.items():
        tifffile.imwrite(tmp_path / name, data, photometric=photometric, **kw)
        _check(tmp_path / name, photometric)
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff
    for layout, kw in LAYOUTS.items():  # separate planes: one strip / tile set per sample
        path = tmp_path / f"planar-{layout}.tif"
        planes = np.moveaxis(_pixels(3, np.uint16), -1, 0).copy()
        tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate", compression="lzw", **kw)
        _check(path, "rgb", planar=True)


def test_single_uncompressed_strip_streams_a_row_at_a_time(tmp_path):
    path = tmp_path / "one-strip.tif"
    data = _pixels(3, np.uint16)
    tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=H, byteorder=">")  # big-endian, one strip
    with open_raster(path) as raster:
        assert raster.rows_per_segment == 1
    _check(path, "rgb")


def test_embedded_icc_profile_is_applied_as_for_any_scan(tmp_path):
    icc = _swapped_primaries_profile()
    pixels = np.zeros((H, W, 3), np.uint8)
    pixels[..., 0] = 255  # stored "red" is the profile's blue primary
    path = tmp_path / "icc.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", compression="lzw", tile=(32, 32), iccprofile=icc)
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    expect = np.asarray(ImageCms.profileToProfile(Image.fromarray(pixels), src, ImageCms.createProfile("sRGB")))
    assert expect[0, 0, 2] > 200 and expect[0, 0, 0] < 60  # shown as blue in sRGB
    assert np.array_equal(_streamed(path), expect)
    assert np.array_equal(open_scan(path).whole(), expect)


def test_pyramid_levels_in_subifds_open_at_a_reduced_resolution(tmp_path):
    path = tmp_path / "pyramid.tif"
    full = np.concatenate([_pixels(3, np.uint16)] * 4, axis=1)  # 70 x 212
    with tifffile.TiffWriter(path) as tif:
        tif.write(full, photometric="rgb", tile=(32, 32), compression="deflate", subifds=2)
        for k in (2, 4):
            tif.write(full[::k, ::k], photometric="rgb", tile=(32, 32), compression="deflate", subfiletype=1)
    assert scan_levels(path) == [(212, 70), (106, 35), (53, 18)]
    assert level_at_least(scan_levels(path), 100, 30) == 1
    assert level_at_least(scan_levels(path), 50, 10) == 2
    assert level_at_least(scan_levels(path), 300, 10) == 0  # none large enough: the full resolution
    for level in (1, 2):
        expect = _reference(path, "rgb", level=level)
        scan = open_scan(path, level=level, max_bytes=1)
        assert (scan.width, scan.height) == expect.shape[1::-1]
        assert np.array_equal(scan.rows(0, scan.height), expect)
        scan.close()
    scan = open_scan(path, max_bytes=1)  # the model's view: a level, scaled by the full resolution's peak
    with tifffile.TiffFile(path) as tif:
        level = tif.series[0].levels[1].asarray()
    by_full_peak = np.rint(level.astype(np.float64) * (255.0 / float(full.max()))).astype(np.uint8)
    assert np.array_equal(scan.at_least(100, 30), by_full_peak)
    assert scan.at_least(300, 10).shape == (70, 212, 3)  # no level that large: the full resolution
    scan.close()
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, full, photometric="rgb", tile=(32, 32))
    assert np.array_equal(open_scan(plain, max_bytes=1).at_least(10, 10), _reference(plain, "rgb"))


def test_jpeg2000_is_decoded_whole_through_imagecodecs_with_one_log_line(tmp_path, caplog):
    for name, data in (("rgb.jp2", _pixels(3, np.uint8)), ("gray16.jp2", _pixels(1, np.uint16)[..., 0])):
        path = tmp_path / name
        path.write_bytes(imagecodecs.jpeg2k_encode(data, level=0, codecformat="jp2"))  # lossless
        expect = _by_hand(data.reshape(H, W, -1), "rgb" if data.ndim == 3 else "minisblack")
        assert np.array_equal(open_scan(path).whole(), expect)
        caplog.clear()
        scan = open_scan(path, max_bytes=1)  # nothing decoded until rows are asked for (a level may do)
        assert not [r for r in caplog.records if "JPEG 2000 cannot be read in parts" in r.getMessage()]
        assert np.array_equal(scan.rows(0, 5), expect[:5]) and np.array_equal(scan.rows(5, H), expect[5:])
        assert len([r for r in caplog.records if "JPEG 2000 cannot be read in parts" in r.getMessage()]) == 1


def test_jpeg2000_reduced_levels_decode_only_the_resolutions_they_keep(tmp_path):
    yy, xx = np.mgrid[0:128, 0:96]
    full = np.stack([xx * 2, yy * 2, xx + yy], -1).astype(np.uint8)
    path = tmp_path / "levels.jp2"
    path.write_bytes(imagecodecs.jpeg2k_encode(full, level=0, codecformat="jp2", resolutions=4))  # 3 wavelet levels
    assert scan_levels(path) == [(96, 128), (48, 64), (24, 32), (12, 16)]
    with Image.open(path) as img:  # OpenJPEG's own reduced decode, as Pillow asks for it
        img.reduce = 2
        img.load()
        expect = np.asarray(img.convert("RGB"))
    got = open_scan(path, level=2).whole()
    assert np.array_equal(got, expect)
    box = full.reshape(32, 4, 24, 4, 3).mean(axis=(1, 3))  # the wavelet's low band is about a 4 x 4 mean
    assert np.abs(got - box).mean() < 3
    odd = tmp_path / "odd.jp2"  # 53 px: a level Pillow would size differently from OpenJPEG is not offered
    odd.write_bytes(imagecodecs.jpeg2k_encode(_pixels(3, np.uint8), level=0, codecformat="jp2", resolutions=3))
    assert scan_levels(odd) == [(53, 70), (27, 35)]


def test_training_reads_a_tiff_master_with_the_same_reader_as_predict(tmp_path):
    image = tmp_path / "master.tif"
    tifffile.imwrite(image, _pixels(3, np.uint16), photometric="rgb", compression="lzw", tile=(32, 32))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "mask.png")
    sample = Sample("m", image, tmp_path / "mask.png", "m", False)
    rgb, labels = load_native(sample, 4, 255)  # evaluate's native-resolution read
    assert np.array_equal(rgb, _reference(image, "rgb")) and labels.shape == (H, W)
    assert np.array_equal(rgb, open_scan(image, max_bytes=1).rows(0, H))
    cached, _, hw = decode_pair(sample, 64, 4, 255, "crop", 128, canvas=False)  # what preload / prepare cache
    assert hw == (H, W) and np.array_equal(cached, rgb)


def _tiff(tmp_path: Path, name: str, compression: str = "lzw") -> tuple[Path, tifffile.TiffPage]:
    path = tmp_path / name
    tifffile.imwrite(path, _pixels(3, np.uint16), photometric="rgb", compression=compression, tile=(32, 32))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return path, (list(page.dataoffsets), list(page.databytecounts), page.tags["Compression"].valueoffset)


def test_truncated_file_corrupt_tile_and_unknown_compression_are_named_in_one_message(tmp_path):
    path, (offsets, counts, _) = _tiff(tmp_path, "truncated.tif")
    last = max(range(len(offsets)), key=lambda i: offsets[i])
    data = path.read_bytes()
    path.write_bytes(data[: offsets[last] + counts[last] // 2])
    with pytest.raises(ScanError, match=r"truncated.tif: the file is truncated \(tile \d+ \(rows 64..69, columns"):
        _streamed(path)
    with pytest.raises(DataError, match=r"truncated.tif: the file is truncated .* \(and its partner\)"):
        load_native(Sample("t", path, path, "t", False), 4, 255)

    path, (offsets, counts, _) = _tiff(tmp_path, "corrupt.tif", "deflate")
    data = bytearray(path.read_bytes())
    data[offsets[3] : offsets[3] + counts[3]] = b"\xff" * counts[3]
    path.write_bytes(bytes(data))
    with pytest.raises(
        ScanError, match=r"corrupt.tif: tile 3 \(rows 32..63, columns 32..52\) does not decode \(DEFLATE: "
    ):
        _streamed(path)
    with pytest.raises(ScanError, match="tile 3"):
        open_scan(path).whole()

    path, (_, _, where) = _tiff(tmp_path, "unknown.tif", None)
    data = bytearray(path.read_bytes())
    data[where : where + 2] = struct.pack("<H", 60000)
    path.write_bytes(bytes(data))
    with pytest.raises(ScanError, match=r"unknown.tif: its compression code 60000 is not supported .* re-save it"):
        open_scan(path, max_bytes=1)
    with pytest.raises(ScanError, match="code 60000"):
        scan_size(path)


def test_layouts_the_reader_leaves_to_pillow_are_still_read(tmp_path):
    path = tmp_path / "bilevel.tif"
    Image.fromarray(np.eye(20, dtype=bool)).save(path)
    with pytest.raises(NotInRegions):
        open_raster(path)
    assert np.array_equal(open_scan(path).whole()[..., 0], np.eye(20, dtype=np.uint8) * 255)
    (tmp_path / "junk.tif").write_bytes(b"II*\x00junk")
    with pytest.raises(ScanError, match=r"junk.tif: the TIFF holds no image. Replace the file"):
        open_scan(tmp_path / "junk.tif")
    with pytest.raises(RegionError):
        open_raster(tmp_path / "junk.tif")


MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from poc59.inference.scans import open_scan

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    path, budget = sys.argv[1], int(sys.argv[2])
    open_scan(path, max_bytes=budget).close()  # imports and codecs loaded before the baseline
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
        reset = True
    except OSError:
        reset = False
    base = status("VmRSS")
    scan = open_scan(path, max_bytes=budget)
    total = 0
    for y in range(0, scan.height, 384):
        total += int(scan.rows(y, y + 384)[::97, ::97].sum())
    scan.close()
    print(json.dumps({"added": status("VmHWM") - base, "reset": reset, "streamed": scan.streamed, "sum": total}))
    """
)


@pytest.mark.slow
def test_a_6000_by_4000_16_bit_lzw_tiff_streams_within_the_budget(tmp_path):
    height, width, budget = 4000, 6000, 128 * 2**20
    yy = np.linspace(0, 40_000, height, dtype=np.uint16)[:, None, None]
    xx = np.linspace(0, 20_000, width, dtype=np.uint16)[None, :, None]
    path = tmp_path / "master.tif"
    master = yy + xx + np.arange(3, dtype=np.uint16)  # 144 MB here, in the test; the child reads the file
    tifffile.imwrite(path, master, photometric="rgb", compression="lzw", tile=(256, 256))
    del master
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(path), str(budget)],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["streamed"]
    whole = height * width * (3 * 2 + 3)  # decoding it whole: the 16-bit samples and the RGB result, 216 MB
    assert got["added"] < budget < whole, got  # the budget holds the strips, the codecs and the allocator's slack


def test_a_streamed_16_bit_tiff_is_decoded_once_and_twice_when_the_disk_has_no_room(tmp_path, monkeypatch):
    """The peak pass keeps what it decoded in an unlinked temporary file: the rows after it come from there
    (the file's tiles, spoilt after the scan was opened, are never decoded again); with no room on the disk,
    they are decoded a second time (and the spoilt tile is then named)."""
    path, (offsets, counts, _) = _tiff(tmp_path, "master.tif", "deflate")
    expect = _reference(path, "rgb")
    spoilt = bytearray(path.read_bytes())
    for o, c in zip(offsets, counts):
        spoilt[o : o + c] = b"\xff" * c

    scan = open_scan(path, max_bytes=1)  # the peak pass runs here
    path.write_bytes(bytes(spoilt))
    assert np.array_equal(scan.rows(0, H), expect)
    scan.close()

    path.unlink()
    _tiff(tmp_path, "master.tif", "deflate")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    scan = open_scan(path, max_bytes=1)
    assert np.array_equal(scan.rows(0, 40), expect[:40])  # decoded again, the same pixels
    path.write_bytes(bytes(spoilt))
    with pytest.raises(ScanError, match=r"master.tif: tile \d+ \(rows 64..69"):
        scan.rows(40, H)
    scan.close()


def test_scaling_16_bits_takes_no_int64_copy_of_the_samples(tmp_path):
    """A 16-bit TIFF decoded whole holds its stored samples (6 bytes a pixel) and their 8-bit scaling (3): the
    table lookup goes a slice at a time (np.take on the whole array would copy the indices as int64, 24 bytes
    a pixel more). NumPy's allocations while it is read stay under 12 bytes a pixel."""
    import tracemalloc

    height, width = 1024, 1024
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 50, yy * 50, (xx + yy) * 25], -1).astype(np.uint16)
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", compression="deflate", tile=(64, 64))
    with open_raster(path) as raster:
        tracemalloc.start()
        try:
            got = raster.whole_pixels()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert np.array_equal(got, _by_hand(pixels, "rgb"))
    assert peak < 12 * height * width, f"{peak / (height * width):.1f} bytes a pixel"


def test_lzw_in_either_byte_order_with_and_without_the_predictor_streams_as_tifffile_decodes(tmp_path):
    """LZW, the masters' usual compression, every way its samples come out of the codec: 8 and 16 bits, big- and
    little-endian, horizontal differencing or none, gray, RGB and RGBA, 32 x 16 tiles and 9-row strips (an
    odd-sized image: edge tiles and a short last strip), bands across their borders on 1 and 2 threads, equal to
    tifffile's own whole decode."""
    cases = [
        (dtype, samples, order, predictor, layout)
        for dtype in (np.uint8, np.uint16)
        for samples in (1, 3, 4)
        for order in ("<", ">")
        for predictor in (False, True)
        for layout in ("tiled", "striped")
    ]
    for dtype, samples, order, predictor, layout in cases:
        name = f"{np.dtype(dtype).name}-{samples}-{'be' if order == '>' else 'le'}-p{int(predictor)}-{layout}.tif"
        photometric = "minisblack" if samples == 1 else "rgb"
        data = _pixels(samples, dtype, seed=len(name))
        tifffile.imwrite(
            tmp_path / name,
            data[..., 0] if samples == 1 else data,
            photometric=photometric,
            compression="lzw",
            predictor=predictor,
            byteorder=order,
            extrasamples=[2] if samples == 4 else None,
            **{"tiled": {"tile": (32, 16)}, "striped": {"rowsperstrip": 9}}[layout],
        )
        expect = _reference(tmp_path / name, photometric)
        for workers in (1, 2):
            assert np.array_equal(_streamed(tmp_path / name, workers=workers), expect), (name, workers)
            assert np.array_equal(open_scan(tmp_path / name, workers=workers).whole(), expect), (name, workers)


def test_tiles_decoded_on_several_threads_give_the_single_threaded_pixels_across_tile_borders(tmp_path, monkeypatch):
    """open_scan's `workers`: a band's tiles decoded on 1 or 3 threads give the same pixels, whole and in bands
    that start and end inside tiles (11 and 22 rows against 32-row tiles), for a 16-bit master (its peak pass
    kept on disk, or decoded twice when the disk has no room), an 8-bit one and min-is-white, all equal to
    tifffile's own whole decode."""
    files = {
        "rgb": tmp_path / "rgb16.tif",
        "miniswhite": tmp_path / "white16.tif",
        "rgb8": tmp_path / "rgb8.tif",
    }
    tifffile.imwrite(files["rgb"], _pixels(3, np.uint16), photometric="rgb", compression="lzw", tile=(32, 32))
    tifffile.imwrite(
        files["miniswhite"],
        _pixels(1, np.uint16, 1)[..., 0],
        photometric="miniswhite",
        compression="lzw",
        tile=(32, 16),
    )
    tifffile.imwrite(files["rgb8"], _pixels(3, np.uint8, 2), photometric="rgb", compression="deflate", tile=(16, 32))

    def read_all(room: bool) -> None:
        for name, path in files.items():
            expect = _reference(path, "rgb" if name == "rgb8" else name)
            for workers in (1, 3):
                assert np.array_equal(_streamed(path, workers=workers), expect), (name, workers, room)
                assert np.array_equal(open_scan(path, workers=workers).whole(), expect), (name, workers, room)

    read_all(room=True)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
    read_all(room=False)


def test_tiff_tiles_are_decoded_on_pytorchs_thread_count_unless_told(tmp_path, monkeypatch):
    import torch

    from poc59.inference import scans

    asked = []

    def recording(path, level=0, workers=None):
        asked.append(workers)
        return open_raster(path, level, workers)

    monkeypatch.setattr(scans, "open_raster", recording)
    path, _ = _tiff(tmp_path, "master.tif")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # what predict's threads=3 sets
        for workers, expect in ((None, 3), (1, 1), (2, 2)):
            asked.clear()
            scan = open_scan(path, max_bytes=1, workers=workers)
            assert np.array_equal(scan.rows(0, H), _reference(path, "rgb"))
            scan.close()
            assert asked == [expect], (workers, asked)
    finally:
        torch.set_num_threads(before)
