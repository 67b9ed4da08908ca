"""TIFF masters through predict (issue 31): peak memory and read speed on a 20,000 x 15,000 16-bit RGB,
LZW-compressed, tiled (256 px) TIFF generated here, a tile row at a time.

- `tiff_read_speed`: `poc59.inference.scans.open_scan` with predict's memory budget, rows read top to bottom
  in 384-row bands as the sliding window asks for them (the 16-bit peak pass included), megapixels/s,
  against the same 8-bit pixels stored as an uncompressed PNG (compress_level 0) read in strips the same
  way. Interleaved A B A B after one untimed round that checks both give the same pixels; medians.
  Bar: >= 0.8x.
- `tiff_reader_memory`: the reader's share: in a fresh process, the peak RSS while open_scan streams the TIFF
  with what max_memory_mb=1024 leaves the decoded rows beside the logits of a 16-class, 384 px tile row (about
  41 MB). Reported.
- `tiff_predict_memory`: in a fresh process, the model is built and its RSS read; then
  `poc59.inference.run.predict_image` (the command's per-scan path, its defaults, the decompression-bomb limit
  lifted as allow_large_images=true does) handles the TIFF; the peak RSS above the model's own is the figure
  (bench.predict's child). The defaults are the outputs a user gets: the label map, the overlay and the IIIF
  damage layer, annotations and manifest (overlay=true, iiif=true). Full mode adds two children to the
  details: pyramid=true beside the defaults (the pyramidal TIFF maps too: every output predict writes) and
  overlay=false (what the reader, the sliding window and the IIIF step take without the overlay). Bar: the
  worse of the defaults and pyramid=true, at most 1.5 GB. The baseline is the whole 16-bit decode alone
  (W x H x 3 x 2 bytes).

`python -m bench.tiff_masters --only read` (or `memory`) runs one half by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from bench import common
from bench.predict import CLASSES, REPO
from bench.preload_memory import _reset_peak, _status

NAME_SPEED, NAME_MEMORY, NAME_READER = "tiff_read_speed", "tiff_predict_memory", "tiff_reader_memory"
BAR_SPEED = 0.8
BAR_MEMORY = 1.5e9  # bytes above the model's own
TILE = 256  # the TIFF's tiles
BAND = 384  # rows a read asks for at once: one tile row of the sliding window's 384 px tiles
READ_BUDGET = 1024 * 2**20  # predict's default max_memory_mb, all of it given to the decoded rows


@dataclass(frozen=True)
class Sizes:
    height: int
    width: int
    model_tile: int
    repeats: int


FULL = Sizes(height=15_000, width=20_000, model_tile=384, repeats=3)
QUICK = Sizes(height=1_500, width=2_000, model_tile=128, repeats=1)


def master_rows(y0: int, y1: int, width: int, height: int) -> np.ndarray:
    """Rows y0..y1-1 of the master, uint16 [h, W, 3]: gradients over the full range and a fine weave (what
    LZW meets in a scan: smooth areas and texture), its peak below 65,535 so the scaling does something."""
    y = np.arange(y0, y1, dtype=np.uint32)[:, None]
    x = np.arange(width, dtype=np.uint32)[None, :]
    rows = np.empty((y1 - y0, width, 3), np.uint16)
    weave = ((x * 7 + y * 5) % 64) * 16
    rows[..., 0] = x * 60_000 // width + weave // 4
    rows[..., 1] = y * 60_000 // height + weave // 8
    rows[..., 2] = (x * 13 ^ y * 11) % 4096 * 12 + weave // 2
    return rows


def write_master(path: Path, height: int, width: int) -> float:
    """The TIFF, written a tile row at a time (never whole in memory); returns its peak sample."""
    peak = 0

    def tiles() -> Iterator[np.ndarray]:
        nonlocal peak
        for y0 in range(0, height, TILE):
            rows = master_rows(y0, min(y0 + TILE, height), width, height)
            peak = max(peak, int(rows.max()))
            padded = np.zeros((TILE, -(-width // TILE) * TILE, 3), np.uint16)
            padded[: len(rows), :width] = rows
            for x0 in range(0, width, TILE):
                yield padded[:, x0 : x0 + TILE]

    tmp = path.with_suffix(".tmp.tif")
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=(height, width, 3),
        dtype=np.uint16,
        photometric="rgb",
        compression="lzw",
        tile=(TILE, TILE),
        bigtiff=height * width * 6 > 2**31,
    )
    os.replace(tmp, path)
    return float(peak)


def write_png(path: Path, height: int, width: int, peak: float) -> None:
    """The same pixels as the TIFF reads to (8-bit, scaled by its peak), as a PNG of stored (level 0) zlib
    blocks, written a band at a time."""
    from poc59.data.regions import scale_to_8bit

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    tmp = path.with_suffix(".tmp.png")
    deflate = zlib.compressobj(0)
    with open(tmp, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        for y0 in range(0, height, TILE):
            rgb = scale_to_8bit(master_rows(y0, min(y0 + TILE, height), width, height), peak)
            raw = np.zeros((len(rgb), 1 + 3 * width), np.uint8)  # filter type 0 before each row
            raw[:, 1:] = rgb.reshape(len(rgb), -1)
            f.write(chunk(b"IDAT", deflate.compress(raw.tobytes())))
        f.write(chunk(b"IDAT", deflate.flush()) + chunk(b"IEND", b""))
    os.replace(tmp, path)


def files(s: Sizes) -> tuple[Path, Path]:
    """The master TIFF and its PNG twin, generated once into the bench folder."""
    tiff = common.bench_dir() / f"master-{s.width}x{s.height}-16bit-lzw-tiled.tif"
    png = common.bench_dir() / f"master-{s.width}x{s.height}-8bit-stored.png"
    if not tiff.exists() or not png.exists():
        write_png(png, s.height, s.width, write_master(tiff, s.height, s.width))
    return tiff, png


def read_through(path: Path, check: bool = False, budget: int = READ_BUDGET) -> tuple[float, int | None, bool]:
    """(seconds, CRC-32 of every row when `check`, streamed): the file through open_scan within `budget`
    bytes, top to bottom."""
    from PIL import Image

    from poc59.inference.scans import open_scan

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # allow_large_images=true
    crc = 0
    try:
        with common.Stopwatch() as sw:
            scan = open_scan(path, max_bytes=budget)
            try:
                for y in range(0, scan.height, BAND):
                    rows = scan.rows(y, y + BAND)
                    if check:
                        crc = zlib.crc32(np.ascontiguousarray(rows).data, crc)
            finally:
                scan.close()
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return sw.wall, crc if check else None, scan.streamed


def reader_child(path: str, budget: int) -> dict:
    """Peak RSS while open_scan streams `path` within `budget` bytes, top to bottom (run in a fresh process)."""
    read_through(Path(path), budget=budget)  # the codecs and imports loaded, the file cached, before the baseline
    reset = _reset_peak()
    own = _status("VmRSS")
    seconds, _, streamed = read_through(Path(path), budget=budget)
    return {"added_bytes": _status("VmHWM") - own, "peak_reset": reset, "streamed": streamed, "seconds": seconds}


def measure_reader(image: Path, budget: int) -> dict:
    """`reader_child` in a subprocess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = f"import json; from bench.tiff_masters import reader_child; print(json.dumps(reader_child({str(image)!r}, {budget})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"reader child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


MEMORY_CHILD = (
    "import json, sys, PIL.Image\n"
    "PIL.Image.MAX_IMAGE_PIXELS = None  # allow_large_images=true\n"
    "import bench.predict as p\n"
    "from poc59.inference import run\n"
    "changed = json.loads(sys.argv[-1])  # settings other than predict's defaults\n"
    "class Settings(run.Settings):\n"
    "    def __init__(self, **kw):\n"
    "        super().__init__(**{**kw, **changed})\n"
    "run.Settings = Settings\n"
    "a = sys.argv[1:-1]\n"
    "print(json.dumps(p.memory_child(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5]), int(a[6]))))\n"
)


def measure_memory(image: Path, kind: str, tile: int, changed: dict | None = None, max_memory_mb: float = 1024) -> dict:
    """bench.predict's memory child on `image` in a fresh process (bomb limit lifted), with predict's settings
    `changed` from their defaults (e.g. {"overlay": False}, {"pyramid": True})."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="tiff-mem-", dir=common.bench_dir()) as out:
        args = [str(image), out, kind, str(CLASSES), str(tile), str(max_memory_mb), "8"]
        cmd = [sys.executable, "-c", MEMORY_CHILD, *args, json.dumps(changed or {})]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=3 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed_row(s: Sizes, quick: bool) -> dict:
    from poc59.inference.scans import decode_threads

    tiff, png = files(s)
    megapixels = s.width * s.height / 1e6
    (_, crc_tiff, streamed), (_, crc_png, png_streamed) = read_through(tiff, True), read_through(png, True)
    if crc_tiff != crc_png:
        raise RuntimeError("the TIFF and the PNG read to different pixels")
    before = common.load()
    runs = common.interleaved(
        {"tiff": lambda: megapixels / read_through(tiff)[0], "png": lambda: megapixels / read_through(png)[0]},
        s.repeats,
    )
    ours, base = common.median(runs["tiff"]), common.median(runs["png"])
    return common.row(
        NAME_SPEED,
        f"{s.width:,} x {s.height:,} 16-bit LZW tiled TIFF read through open_scan ({READ_BUDGET // 2**20} MB budget)",
        ours,
        "MP/s",
        base,
        "the same 8-bit pixels as an uncompressed PNG, read in strips",
        ours / base,
        "x",
        f">= {BAR_SPEED}x",
        ours / base >= BAR_SPEED,
        quick,
        {
            "runs_mp_per_s": runs,
            "decode_threads": decode_threads(),  # PyTorch's thread count, as predict's threads= leaves it
            "tiff_streamed": streamed,
            "png_streamed": png_streamed,
            "tiff_bytes": tiff.stat().st_size,
            "png_bytes": png.stat().st_size,
            "load_before": before,
            "load_after": common.load(),
        },
    )


def memory_row(s: Sizes, quick: bool, kind: str = "tiny") -> dict:
    tiff, _ = files(s)
    mem = measure_memory(tiff, kind, s.model_tile)
    # quick: proves it runs; full: every output (the pyramidal maps beside the defaults), and without the overlay
    pyramid = None if quick else measure_memory(tiff, kind, s.model_tile, {"pyramid": True})
    bare = None if quick else measure_memory(tiff, kind, s.model_tile, {"overlay": False})
    worst = max(mem["added_bytes"], pyramid["added_bytes"] if pyramid else 0)
    whole = s.width * s.height * 3 * 2
    return common.row(
        NAME_MEMORY,
        f"peak RSS above the model's own, {s.width:,} x {s.height:,} 16-bit LZW TIFF through predict_image "
        f"({kind} network, crop geometry, tile {s.model_tile}; the worse of the defaults"
        f"{'' if quick else ' and pyramid=true'})",
        worst / 1e6,
        "MB",
        whole / 1e6,
        "the whole 16-bit decode alone (W x H x 3 x 2)",
        worst / whole,
        "x",
        f"<= {BAR_MEMORY / 1e6:,.0f} MB",
        worst <= BAR_MEMORY,
        quick,
        {**mem, "pyramid_true": pyramid, "overlay_false": bare, "load": common.load()},
    )


def reader_row(s: Sizes, quick: bool, budget: int = 41 * 2**20) -> dict:
    """The reader's share of predict's memory: open_scan alone, with what max_memory_mb=1024 leaves the decoded
    rows of this scan beside a 16-class, 384 px tile row of logits (about 41 MB)."""
    tiff, _ = files(s)
    got = measure_reader(tiff, budget)
    whole = s.width * s.height * 3 * 2
    return common.row(
        NAME_READER,
        f"peak RSS of open_scan streaming the {s.width:,} x {s.height:,} 16-bit LZW TIFF ({budget / 2**20:.0f} MB budget)",
        got["added_bytes"] / 1e6,
        "MB",
        whole / 1e6,
        "the whole 16-bit decode alone (W x H x 3 x 2)",
        got["added_bytes"] / whole,
        "x",
        common.REPORTED,
        None,
        quick,
        {**got, "budget_bytes": budget, "load": common.load()},
    )


def run(quick: bool) -> list[dict]:
    s = QUICK if quick else FULL
    return [speed_row(s, quick), reader_row(s, quick), memory_row(s, quick)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("read", "reader", "memory"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="tiny", choices=("tiny", "pointwise"))
    a = parser.parse_args()
    s = QUICK if a.quick else FULL
    rows = []
    if a.only in (None, "read"):
        rows.append(speed_row(s, a.quick))
    if a.only in (None, "reader"):
        rows.append(reader_row(s, a.quick))
    if a.only in (None, "memory"):
        rows.append(memory_row(s, a.quick, a.model))
    print(json.dumps(rows, indent=1))
