"""TIFF masters and JPEG 2000 read a region of rows at a time: the one reader of those formats for training,
evaluate, prepare and predict.

`open_raster(path, level)` gives a `Raster`: the stored image (or one level of a pyramid) whose rows
`band(y0, y1)` returns as a Pillow image of 8-bit pixels in mode L, RGB, CMYK or P, ready for the colour
conversion each caller applies (training's `convert("RGB")`, predict's ICC transform to sRGB).

TIFF (through tifffile and imagecodecs): striped or tiled, BigTIFF or classic; no compression, LZW,
Deflate, JPEG, ZSTD, PackBits and the rest imagecodecs decodes; contiguous or separate planes; 8 or 16 bits
a sample; gray (min-is-black or min-is-white), RGB, YCbCr in JPEG, CMYK and palette; alpha and other extra
samples dropped. A band decodes only the strips or tiles that cover its rows; an uncompressed strip is read
a row at a time, so even a single-strip file streams. LZW strips and tiles (the masters' usual compression)
are decoded by libtiff through imagecodecs' TIFF codec, about 2.3x faster than the LZW codec tifffile calls
(the same samples); a segment libtiff refuses goes to tifffile, which decodes it or names what is wrong.
A pyramid (SubIFDs, or the reduced pages tifffile groups into a series' levels) lists its levels in
`Raster.levels`, largest first.

JPEG 2000: imagecodecs decodes a codestream only whole, so the raster holds the whole image once its first
band is asked for (`Raster.whole_only`); its reduced resolutions are levels too, decoded by OpenJPEG
through Pillow (which decodes only the resolutions a level keeps).

16 bits (or any sample wider than 8 bits) are scaled as training has always scaled them: by the image's
peak (`scale_to_8bit`, the arithmetic of `poc59.data.decoding.wide_to_8bit`), the peak taken over the
colour samples of the whole image (`Raster.peak()`, a pass over every segment holding one segment row at a
time). A compressed TIFF keeps what that pass decoded in an unlinked temporary file, where the disk has room,
so the bands after it are read back rather than decoded twice.

What this reader does not handle (bilevel, 32-bit or floating-point samples, YCbCr outside JPEG, CIELab,
volumes, an EXIF/TIFF orientation other than top-left) raises `NotInRegions`, and the caller decodes the
file whole through Pillow as before. A file it handles but cannot read (truncated, a segment that does
not decode, a compression no codec decodes) raises `RegionError`, naming the file, the part and the fix.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

log = logging.getLogger(__name__)

__all__ = [
    "JP2_SUFFIXES",
    "TIFF_SUFFIXES",
    "NotInRegions",
    "Raster",
    "RegionError",
    "handles",
    "open_raster",
    "scale_to_8bit",
]

TIFF_SUFFIXES = (".tif", ".tiff")
JP2_SUFFIXES = (".jp2", ".j2k", ".jpf", ".jpx", ".j2c")
_FIX = "Replace the file, or re-save it (e.g. as an uncompressed, LZW or Deflate TIFF)"
_COLOUR_SAMPLES = {0: 1, 1: 1, 2: 3, 3: 1, 5: 4, 6: 3}  # TIFF photometric -> colour samples (the rest: extras)
_MODES = {0: "L", 1: "L", 2: "RGB", 3: "P", 5: "CMYK", 6: "RGB"}
_JPEG = 7
_LZW = 5
_ORIENTATION_TAG = 274
_INKSET_TAG = 332
_LOOKUP_CHUNK = 1 << 16  # 16-bit samples looked up at once (in cache; np.take's int64 indices: 0.5 MB)
_SCALE_CHUNK = 1 << 20  # samples scaled at once: 8 MB of float64
_SPILL_SPARE = 1 << 30  # free disk space a spill file leaves untouched


class NotInRegions(Exception):
    """A layout this reader does not handle: the file is decoded whole through Pillow instead."""


class RegionError(ValueError):
    """A TIFF or JPEG 2000 file that cannot be read: the message names the file, the part and the fix."""


def handles(path: str | Path) -> bool:
    """Whether `path` is a file this reader is meant for (by suffix): TIFF or JPEG 2000."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES + JP2_SUFFIXES


def scale_to_8bit(samples: np.ndarray, peak: float) -> np.ndarray:
    """Samples wider than 8 bits as uint8, scaled so that `peak` becomes 255 (a peak of 0 counts as 1).

    Each value v becomes round(float64(v) * (255 / peak)), rounded half to even. 16-bit samples go through
    a table of that arithmetic for each of the 65,536 values (the same numbers, no float copy; built once a
    peak, and looked up with `np.take` 65,536 samples at a time, about 5x faster than indexing the table with
    the samples, and its int64 copy of the indices stays 0.5 MB; np.take releases the GIL, so threads scale
    parts of a band at once); wider ones are computed in float64 a slice of rows at a time (the float copy
    of a whole band would take 4 times a 16-bit band).
    """
    peak = peak if peak > 0 else 1.0
    samples = np.asarray(samples)
    if samples.dtype.kind == "u" and samples.dtype.itemsize <= 2:
        table = _table(samples.dtype.itemsize, peak)
        flat = samples.reshape(-1)
        out = np.empty(flat.shape, np.uint8)
        # np.take copies its indices as int64: a slice at a time; mode="clip" (every sample is inside the table)
        # spares the bounds pass and the buffered copy of `out` that the default mode makes
        for i in range(0, flat.size, _LOOKUP_CHUNK):
            np.take(table, flat[i : i + _LOOKUP_CHUNK], out=out[i : i + _LOOKUP_CHUNK], mode="clip")
        return out.reshape(samples.shape)
    out = np.empty(samples.shape, np.uint8)
    step = max(1, _SCALE_CHUNK // max(1, samples[:1].size))
    for y in range(0, len(samples), step):
        out[y : y + step] = (samples[y : y + step].astype(np.float64) * (255.0 / peak)).round()
    return out


@functools.lru_cache(maxsize=4)
def _table(itemsize: int, peak: float) -> np.ndarray:
    """uint8 [2**(8 * itemsize)]: `scale_to_8bit`'s value for every sample value (read-only: it is shared)."""
    table = (np.arange(1 << (8 * itemsize), dtype=np.float64) * (255.0 / peak)).round().astype(np.uint8)
    table.flags.writeable = False
    return table


class Raster(ABC):
    """One stored image (or one level of a pyramid) read a band of rows at a time.

    `width`, `height`: the level's size; `levels`: every level's (width, height), largest first; `mode`: the
    8-bit Pillow mode of `band`'s images; `wide`: samples wider than 8 bits (scaled by the peak); `icc`: the
    embedded ICC profile or None; `rows_per_segment`: the rows one strip or tile row holds (bands aligned to
    it decode each segment once); `sample_bytes`: bytes one pixel's stored colour samples take.
    """

    width: int
    height: int
    levels: list[tuple[int, int]]
    mode: str
    wide: bool
    icc: bytes | None
    rows_per_segment: int
    sample_bytes: int
    whole_only: bool = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.palette: list[int] | None = None
        self._peak: float | None = None

    @abstractmethod
    def samples(self, y0: int, y1: int) -> np.ndarray:
        """Rows y0..y1-1 as stored, colour samples only: [h, W, S] uint8 or uint16 (palette: indices)."""

    def peak_rows(self, y0: int, y1: int) -> float:
        """The largest colour sample in rows y0..y1-1 (what `peak` takes the maximum of)."""
        return float(self.samples(y0, y1).max(initial=0))

    def peak(self) -> float:
        """The largest colour sample of the whole level, read a segment row at a time (16-bit scaling uses it)."""
        if self._peak is None:
            step = max(self.rows_per_segment, 1)
            self._peak = max(
                (self.peak_rows(y, min(y + step, self.height)) for y in range(0, self.height, step)), default=0.0
            )
        return self._peak

    def pixels(self, y0: int, y1: int, peak: float | None = None) -> np.ndarray:
        """Rows y0..y1-1 as 8-bit samples [h, W, S] of `mode` (16 bits scaled by `peak`, default the image's)."""
        data = self.samples(y0, y1)
        return scale_to_8bit(data, self.peak() if peak is None else peak) if self.wide else data

    def band(self, y0: int, y1: int, peak: float | None = None) -> Image.Image:
        """Rows y0..y1-1 as an 8-bit Pillow image in `mode` (16 bits scaled by `peak`, default the image's)."""
        return self._image(self.pixels(y0, y1, peak))

    def _image(self, data: np.ndarray) -> Image.Image:
        data = data[..., 0] if data.shape[2] == 1 else data
        img = Image.frombuffer(
            self.mode, (data.shape[1], data.shape[0]), np.ascontiguousarray(data), "raw", self.mode, 0, 1
        )
        if self.palette is not None:
            img.putpalette(self.palette)
        return img

    def whole_pixels(self) -> np.ndarray:
        """Every row, as `pixels` gives them, each segment decoded once (the peak taken on the way)."""
        data = self.samples(0, self.height)
        if self.wide:
            if self._peak is None:
                self._peak = float(data.max(initial=0))
            data = scale_to_8bit(data, self._peak)
        return data

    def whole(self) -> Image.Image:
        """Every row, as `band` gives them (what training and evaluate decode), each segment decoded once."""
        return self._image(self.whole_pixels())

    @abstractmethod
    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TiffRaster(Raster):
    """A TIFF page (a pyramid level) whose strips or tiles are decoded only where a band needs them."""

    def __init__(self, path: Path, level: int, workers: int | None) -> None:
        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error... for a damaged header
            raise RegionError(f"cannot read {path}: not a readable TIFF ({err}). {_FIX}.") from None
        try:
            self._open_level(level)
        except BaseException:
            self._tif.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))

    def _open_level(self, level: int) -> None:
        path, tif = self.path, self._tif
        if not tif.series:
            raise RegionError(f"cannot read {path}: the TIFF holds no image. {_FIX}.")
        series = tif.series[0]
        levels = series.levels or [series]
        page = levels[level].keyframe
        self.levels = [(int(lv.keyframe.imagewidth), int(lv.keyframe.imagelength)) for lv in levels]
        photometric, compression = int(page.photometric), int(page.compression)
        if page.imagedepth > 1 or page.tiledepth > 1:
            raise NotInRegions("a volume (image depth > 1)")
        if photometric not in _MODES or (photometric == 6 and compression != _JPEG):
            raise NotInRegions(f"photometric interpretation {page.photometric.name}")
        inkset = page.tags.get(_INKSET_TAG)
        if photometric == 5 and ((inkset is not None and inkset.value != 1) or page.samplesperpixel < 4):
            raise NotInRegions("separated colours other than CMYK")
        if page.dtype not in (np.uint8, np.uint16) or page.bitspersample not in (8, 16):
            raise NotInRegions(f"{page.bitspersample}-bit {page.dtype} samples")
        orientation = page.tags.get(_ORIENTATION_TAG)
        if orientation is not None and orientation.value != 1:
            raise NotInRegions(f"TIFF orientation {orientation.value}")
        self._page = page
        self._last: tuple[int, list] | None = None
        self._spill = None
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.mode, self.wide = _MODES[photometric], page.dtype != np.uint8
        self._colours = _COLOUR_SAMPLES[photometric]
        self._invert = photometric == 0
        self._separate = page.planarconfig == 2
        self._samples = page.samplesperpixel
        self.sample_bytes = self._colours * page.dtype.itemsize
        self.icc = page.iccprofile
        if photometric == 3:
            self.palette = (np.asarray(page.colormap)[:, :256] // 256).astype(np.uint8).T.reshape(-1).tolist()
            if page.dtype != np.uint8:
                raise NotInRegions("a 16-bit palette")
        if page.is_tiled:
            self._seg_rows, self._seg_cols = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_rows, self._seg_cols = int(page.rowsperstrip or self.height), self.width
        self._across = -(-self.width // self._seg_cols)  # segments in one segment row
        self._down = -(-self.height // self._seg_rows)
        self._direct = compression == 1 and not page.is_tiled and not self._separate and page.fillorder == 1
        self.rows_per_segment = 1 if self._direct else min(self._seg_rows, self.height)
        try:
            self._compression = tifffile.COMPRESSION(compression).name
        except ValueError:
            self._compression = f"code {compression}"
        try:
            tifffile.TIFF.DECOMPRESSORS[compression]
        except (KeyError, NotImplementedError) as err:
            raise RegionError(
                f"cannot read {path}: its compression {self._compression} is not supported ({err}). {_FIX}."
            ) from None
        self._file_size = self._tif.filehandle.size
        self._libtiff = None
        predictor = int(page.predictor)
        if compression == _LZW and page.fillorder == 1 and predictor in (1, 2) and _libtiff_lzw():
            self._libtiff = _LibtiffLzw(
                self._tif.byteorder,
                self._seg_cols,
                1 if self._separate else self._samples,
                page.bitspersample,
                predictor,
            )
        if not self._direct:  # decode the first segment now: an unsupported compression is named at open
            self._decode(0, self._read_segment(0))

    # -- segments -------------------------------------------------------------------------

    def _read_segment(self, index: int) -> bytes | None:
        offset, count = int(self._page.dataoffsets[index]), int(self._page.databytecounts[index])
        if count == 0 or offset == 0:
            return None  # an empty segment: tifffile fills it with 0, as other readers do
        data = os.pread(self._tif.filehandle.fileno(), count, offset)  # no shared file position: any thread
        if len(data) < count:
            raise RegionError(
                f"cannot read {self.path}: the file is truncated ({self._segment_name(index)} needs bytes "
                f"{offset:,}..{offset + count:,}, the file ends at {self._file_size:,}). {_FIX}."
            )
        return data

    def _segment_name(self, index: int) -> str:
        plane, rest = divmod(index, self._across * self._down)
        row, col = divmod(rest, self._across)
        y0, x0 = row * self._seg_rows, col * self._seg_cols
        y1, x1 = min(y0 + self._seg_rows, self.height), min(x0 + self._seg_cols, self.width)
        what = "tile" if self._page.is_tiled else "strip"
        where = f"rows {y0}..{y1 - 1}" + (f", columns {x0}..{x1 - 1}" if self._page.is_tiled else "")
        return f"{what} {index} ({where}{f', sample {plane}' if self._separate else ''})"

    def _decode(self, index: int, data: bytes | None) -> tuple[np.ndarray | None, tuple[int, ...]]:
        if self._libtiff is not None and data is not None:
            rows = self._seg_rows
            if not self._page.is_tiled:  # the last strip holds only the rows left
                rows = min(rows, self.height - index % self._down * self._seg_rows)
            try:
                return self._libtiff.decode(data, rows), ()
            except Exception:  # noqa: BLE001  (tifffile decodes it below: the same pixels, or the error named)
                pass
        try:
            segment, position, _ = self._page.decode(data, index, jpegtables=self._page.jpegtables)
        except Exception as err:  # imagecodecs' ImcdError subclasses, ValueError, NotImplementedError...
            reason = str(err) or type(err).__name__
            if (
                isinstance(err, (NotImplementedError, KeyError))
                or "not supported" in reason
                or "not available" in reason
            ):
                raise RegionError(
                    f"cannot read {self.path}: its compression {self._compression} cannot be decoded ({reason}). "
                    f"{_FIX}."
                ) from None
            raise RegionError(
                f"cannot read {self.path}: {self._segment_name(index)} does not decode ({self._compression}: "
                f"{reason}). {_FIX}."
            ) from None
        return segment, position

    def _block(self, row: int, col: int) -> np.ndarray:
        """The colour samples of the strip or tile at segment row `row`, column `col` (every colour plane, read
        and decoded here: any thread), cropped to the image and inverted where min-is-white: [h, w, colours]."""
        y0, x0 = row * self._seg_rows, col * self._seg_cols
        h, w = min(self._seg_rows, self.height - y0), min(self._seg_cols, self.width - x0)
        out = None
        for plane in range(self._colours if self._separate else 1):  # extra samples (alpha) are not decoded
            index = plane * self._across * self._down + row * self._across + col
            segment, _ = self._decode(index, self._read_segment(index))
            part = None if segment is None else segment[0, :h, :w, : 1 if self._separate else self._colours]
            if out is None and part is not None and part.shape[:2] == (h, w) and not self._separate:
                out = np.ascontiguousarray(part)  # the common case: one copy, off the codec's padded tile
                break
            if out is None:
                out = np.zeros((h, w, self._colours), self._page.dtype)
            if part is not None:  # an empty segment stays 0, a short one 0 past its end, as tifffile fills them
                channels = slice(plane, plane + 1) if self._separate else slice(None)
                out[: part.shape[0], : part.shape[1], channels] = part
        if self._invert:  # a new array: `out` may be the codec's own, read-only
            out = np.subtract(np.iinfo(out.dtype).max, out, dtype=out.dtype)
        return out

    def _row_blocks(self, row: int) -> list[np.ndarray]:
        """Every block of segment row `row`, decoded on the pool's threads; the last row decoded is kept, so a
        band that ends inside a segment row and the band after it decode that row once."""
        if self._last is not None and self._last[0] == row:
            return self._last[1]
        if self._across == 1:
            blocks = [self._block(row, 0)]
        else:
            blocks = list(self._pool.map(self._block, [row] * self._across, range(self._across)))
        self._last = (row, blocks)
        return blocks

    def _spill_offset(self, row: int, col: int, y: int) -> int:
        """Where image row `y` of block (row, col) starts in the spill file: segment rows one after the other,
        each its blocks one after the other (what a worker writes at once), each block row-major."""
        top, x0 = row * self._seg_rows, col * self._seg_cols
        h, w = min(self._seg_rows, self.height - top), min(self._seg_cols, self.width - x0)
        return (top * self.width + h * x0 + (y - top) * w) * self.sample_bytes

    def peak(self) -> float:
        """The largest colour sample, every segment decoded once, on the pool's threads: while it is found, a
        compressed TIFF's colour samples are kept in an unlinked temporary file (where the disk has room for
        them), each worker writing the block it decoded, and the bands read after it come from there instead of
        being decoded a second time. Memory: a block a worker."""
        if self._peak is not None:
            return self._peak
        if self._direct:
            return super().peak()
        spill = _spill_file(self.width * self.height * self.sample_bytes)
        failed: list[OSError] = []

        def one(row: int, col: int) -> float:
            block = self._block(row, col)
            if spill is not None and not failed:
                try:
                    _write_at(
                        spill.fileno(), memoryview(block).cast("B"), self._spill_offset(row, col, row * self._seg_rows)
                    )
                except OSError as err:  # the disk filled meanwhile: decode again instead
                    failed.append(err)
            return float(block.max(initial=0))

        rows, cols = zip(*[(r, c) for r in range(self._down) for c in range(self._across)])
        try:
            peak = max(self._pool.map(one, rows, cols), default=0.0)
        except BaseException:
            if spill is not None:
                spill.close()
            raise
        if spill is not None and failed:
            log.info("%s: decoded samples not kept on disk (%s); bands are decoded again", self.path, failed[0])
            spill.close()
            spill = None
        self._spill, self._peak, self._last = spill, peak, None
        return peak

    def _from_spill(self, y0: int, y1: int, peak: float | None) -> np.ndarray:
        """Rows y0..y1-1 read back from the spill file `peak` wrote, scaled by `peak` unless it is None; each
        block's rows read and scaled on the pool's threads."""
        out = np.empty((y1 - y0, self.width, self._colours), self._page.dtype if peak is None else np.uint8)

        def one(row: int, col: int) -> None:
            top, x0 = row * self._seg_rows, col * self._seg_cols
            a, b = max(y0, top), min(y1, top + self._seg_rows)
            part = np.empty((b - a, min(self._seg_cols, self.width - x0), self._colours), self._page.dtype)
            if (
                os.preadv(self._spill.fileno(), [memoryview(part).cast("B")], self._spill_offset(row, col, a))
                != part.nbytes
            ):
                raise RegionError(
                    f"cannot read {self.path}: its decoded samples, kept in a temporary file, came back short"
                )
            out[a - y0 : b - y0, x0 : x0 + part.shape[1]] = part if peak is None else scale_to_8bit(part, peak)

        first, last = y0 // self._seg_rows, (y1 - 1) // self._seg_rows
        rows, cols = zip(*[(r, c) for r in range(first, last + 1) for c in range(self._across)])
        list(self._pool.map(one, rows, cols))
        return out

    def pixels(self, y0: int, y1: int, peak: float | None = None) -> np.ndarray:
        if not self.wide:
            return self.samples(y0, y1)
        peak = self.peak() if peak is None else peak
        if self._spill is None:
            return super().pixels(y0, y1, peak)
        return self._from_spill(y0, min(y1, self.height), peak)

    def samples(self, y0: int, y1: int) -> np.ndarray:
        y1 = min(y1, self.height)
        if self._spill is not None:
            return self._from_spill(y0, y1, None)
        if self._direct:
            return self._direct_rows(y0, y1)
        out = np.empty((y1 - y0, self.width, self._colours), self._page.dtype)
        for row in range(y0 // self._seg_rows, (y1 - 1) // self._seg_rows + 1):
            top = row * self._seg_rows
            a, b = max(y0, top), min(y1, top + self._seg_rows)
            for col, block in enumerate(self._row_blocks(row)):
                x0 = col * self._seg_cols
                out[a - y0 : b - y0, x0 : x0 + block.shape[1]] = block[a - top : b - top]
        return out

    def _direct_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows of uncompressed strips read at their file offsets (no segment is decoded whole)."""
        dtype = self._page.dtype.newbyteorder(self._tif.byteorder)
        stride = self.width * self._samples * dtype.itemsize
        parts = []
        y = y0
        while y < y1:
            strip, within = divmod(y, self._seg_rows)
            n = min(y1 - y, self._seg_rows - within)
            offset = int(self._page.dataoffsets[strip]) + within * stride
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(n * stride)
            if len(data) < n * stride:
                raise RegionError(
                    f"cannot read {self.path}: the file is truncated (rows {y}..{y + n - 1} need bytes "
                    f"{offset:,}..{offset + n * stride:,}, the file ends at {self._file_size:,}). {_FIX}."
                )
            parts.append(np.frombuffer(data, dtype).reshape(n, self.width, self._samples)[..., : self._colours])
            y += n
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out = out.astype(self._page.dtype, copy=True)  # native byte order, writable
        if self._invert:
            np.subtract(np.iinfo(out.dtype).max, out, out=out)
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._tif.close()
        if self._spill is not None:
            self._spill.close()


def _codestream_header(path: Path) -> tuple[int, int]:
    """(largest bits per component, wavelet decomposition levels) from a JPEG 2000 file's SIZ and COD markers;
    (0, 0) when they are not found in its first megabyte."""
    with path.open("rb") as f:
        head = f.read(1 << 20)
    siz = head.find(b"\xff\x4f\xff\x51") + 2  # SOC, then SIZ
    if siz < 2 or len(head) < siz + 40:
        return 0, 0
    components = int.from_bytes(head[siz + 38 : siz + 40], "big")
    bits = max(((b & 0x7F) + 1 for b in head[siz + 40 : siz + 40 + 3 * components : 3]), default=0)
    at = siz
    while at + 10 <= len(head) and head[at] == 0xFF:
        if head[at + 1] == 0x52:  # COD: Lcod, Scod, SGcod (4 bytes), then the decomposition levels
            return bits, head[at + 9]
        at += 2 + int.from_bytes(head[at + 2 : at + 4], "big")
    return bits, 0


class _Jpeg2000Raster(Raster):
    """A JPEG 2000 image: the full resolution decoded whole by imagecodecs on the first band asked for; a
    reduced level (a wavelet resolution dropped per level, halving each side) decoded by OpenJPEG through
    Pillow's `reduce`, which decodes only the resolutions it keeps. Levels of 8-bit images and of 16-bit
    grayscale (Pillow brings 16-bit colour to 8 bits its own way, not by the peak)."""

    whole_only = True

    def __init__(self, path: Path, level: int) -> None:
        super().__init__(path)
        try:
            bits, decompositions = _codestream_header(path)
            img = Image.open(path)  # the header alone: size, bands and ICC profile, nothing decoded
        except Exception as err:  # Pillow raises many types for bad files
            raise RegionError(f"cannot read {path}: not a readable JPEG 2000 file ({err}). {_FIX}.") from None
        self._img = img
        width, height = img.size
        self.icc = img.info.get("icc_profile")
        self._colours = 1 if len(img.getbands()) <= 2 else 3
        self.wide = bits > 8 or img.mode in ("I;16", "I;16B", "I;16L", "I")
        reducible = not self.wide or self._colours == 1
        self.levels = [(width, height)]
        for k in range(1, decompositions + 1 if reducible else 1):
            size = (-(-width // 2**k), -(-height // 2**k))  # what OpenJPEG decodes
            if size != ((width + 2 ** (k - 1)) // 2**k, (height + 2 ** (k - 1)) // 2**k):  # what Pillow expects
                break  # Pillow would refuse the level's data (it rounds the size half up, OpenJPEG rounds up)
            self.levels.append(size)
        if level >= len(self.levels):
            img.close()
            raise NotInRegions(f"level {level} of a JPEG 2000 file with {len(self.levels)} usable level(s)")
        self._level = level
        self.width, self.height = self.levels[level]
        self.mode = "L" if self._colours == 1 else "RGB"
        self.rows_per_segment = self.height
        self.sample_bytes = self._colours * (2 if self.wide else 1)
        self._pixels: np.ndarray | None = None

    def _decode(self) -> np.ndarray:
        if self._level == 0:
            return imagecodecs.jpeg2k_decode(self.path.read_bytes())
        self._img.reduce = self._level
        self._img.load()
        return np.asarray(self._img)

    def samples(self, y0: int, y1: int) -> np.ndarray:
        if self._pixels is None:
            try:
                pixels = self._decode()
            except Exception as err:  # imagecodecs.Jpeg2kError, OSError from OpenJPEG
                raise RegionError(
                    f"cannot read {self.path}: the JPEG 2000 data does not decode ({err}). {_FIX}."
                ) from None
            finally:
                self._img.close()
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
            if pixels.shape[:2] != (self.height, self.width):
                raise RegionError(
                    f"cannot read {self.path}: its level {self._level} decodes to {pixels.shape[1]} x "
                    f"{pixels.shape[0]}, not the {self.width} x {self.height} its header gives. {_FIX}."
                )
            self.wide = pixels.dtype != np.uint8
            self._pixels = pixels[..., : self._colours]
        return self._pixels[y0:y1]

    def close(self) -> None:
        self._img.close()


@functools.cache
def _libtiff_lzw() -> bool:
    """Whether imagecodecs was built with libtiff (its TIFF codec)."""
    return bool(getattr(imagecodecs, "TIFF", None) and imagecodecs.TIFF.available)


class _LibtiffLzw:
    """LZW strips and tiles decoded by libtiff: the segment's bytes behind a one-strip TIFF header of the
    segment's own size, through `imagecodecs.tiff_decode`. libtiff's LZW decoder (4.5 and later) decodes about
    2.3x faster than imagecodecs' `lzw_decode`, which tifffile uses, and gives the same samples; the header
    keeps the file's byte order and predictor, so libtiff swaps and undoes the differencing itself."""

    def __init__(self, byteorder: str, cols: int, samples: int, bits: int, predictor: int) -> None:
        self.order, self.cols, self.samples, self.bits, self.predictor = byteorder, cols, samples, bits, predictor

    def decode(self, data: bytes, rows: int) -> np.ndarray:
        """The segment's samples [1, rows, cols, samples] in native byte order."""
        o, n = self.order, self.samples
        fields = [  # (tag, TIFF type: 3 SHORT / 4 LONG, values), in ascending tag order
            (256, 4, [self.cols]),
            (257, 4, [rows]),
            (258, 3, [self.bits] * n),
            (259, 3, [_LZW]),
            (262, 3, [1]),  # min-is-black: libtiff hands the samples back as stored, whatever the file says
            (273, 4, [0]),  # the strip's offset: after the arrays
            (277, 3, [n]),
            (278, 4, [rows]),
            (279, 4, [len(data)]),
            (284, 3, [1]),
            (317, 3, [self.predictor]),
            *([(338, 3, [0] * (n - 1))] if n > 1 else []),
            (339, 3, [1] * n),
        ]
        ifd_end = 8 + 2 + 12 * len(fields) + 4
        packed = [struct.pack(f"{o}{len(v)}{'H' if kind == 3 else 'I'}", *v) for _, kind, v in fields]
        arrays = b"".join(p for p in packed if len(p) > 4)  # stored after the directory, the entry pointing there
        entries, at = b"", ifd_end
        for (tag, kind, values), value in zip(fields, packed):
            if tag == 273:
                value = struct.pack(f"{o}I", ifd_end + len(arrays))
            elif len(value) > 4:
                value, at = struct.pack(f"{o}I", at), at + len(value)
            entries += struct.pack(f"{o}HHI", tag, kind, len(values)) + value.ljust(4, b"\0")
        head = (b"II" if o == "<" else b"MM") + struct.pack(f"{o}HIH", 42, 8, len(fields))
        out = imagecodecs.tiff_decode(head + entries + bytes(4) + arrays + data, verbose=0)
        return out.reshape(1, rows, self.cols, n)


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    """All of `data` written at `offset` of `fd` (pwrite may write less than asked)."""
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _spill_file(nbytes: int) -> IO[bytes] | None:
    """An unlinked temporary file for `nbytes` of decoded samples, or None when the disk has not that much room
    (and a spare gigabyte) to give."""
    folder = tempfile.gettempdir()
    try:
        if shutil.disk_usage(folder).free < nbytes + _SPILL_SPARE:
            return None
        return tempfile.TemporaryFile(prefix="poc59-tiff-", dir=folder)
    except OSError:
        return None


def open_raster(path: str | Path, level: int = 0, workers: int | None = None) -> Raster:
    """The TIFF or JPEG 2000 file at `path` (level `level` of a pyramid, 0 the full resolution) as a `Raster`.

    `workers`: threads decoding a segment row's tiles (default: one a CPU, up to 8). NotInRegions for a layout this
    reader does not handle (decode it whole through Pillow); RegionError for a file it cannot read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _TiffRaster(path, level, workers)
    if suffix in JP2_SUFFIXES:
        return _Jpeg2000Raster(path, level)
    raise NotInRegions(f"{suffix or 'no suffix'} is neither TIFF nor JPEG 2000")
