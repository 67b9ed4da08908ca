"""Reading scans for prediction: any image Pillow opens, TIFF masters and JPEG 2000, as sRGB uint8 RGB rows,
whole or in strips.

Every file is brought to what the model was trained on: EXIF orientation
applied, 16-bit samples scaled by the image's peak exactly as training does
(`poc59.data.decoding.wide_to_8bit`), alpha dropped, palette / grayscale / CMYK
expanded to RGB, and an embedded ICC profile converted to sRGB.

Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 MP)
is enforced for every file; only `allow_large_images=True` lifts it, for that
file only.

TIFF and JPEG 2000 go through `poc59.data.regions`, the reader training and
evaluate use for them too: a TIFF (striped or tiled, any compression imagecodecs
decodes, 8 or 16 bits, BigTIFF) decodes only the strips or tiles that cover the
rows asked for, and a pyramidal TIFF's reduced levels open with `level=`
(`scan_levels`, `level_at_least`). A layout that reader does not handle goes to
Pillow, as every other format does. Its strips or tiles are decoded on as many
threads as PyTorch's intra-op thread count (what predict's and serve's
`threads=` set, `poc59.core.threads`), or `workers=`: the codecs release the
GIL, and a thread beyond the CPUs the job was given would only wait.

Strips. A scan whose decoded pixels would exceed the memory budget is read in
bands of rows, top to bottom, without decoding the whole image first:
- TIFF: bands of whole strip / tile rows, each segment decoded once;
- non-interlaced PNG: the IDAT stream is inflated incrementally; each band's
  filtered rows (with the previous row, unfiltered, as context) are handed to
  Pillow's own PNG row decoder;
- uncompressed single-strip images (PPM/PGM): each band's bytes are read at
  their file offset.
Other files (JPEG, JPEG 2000, interlaced PNG, EXIF-rotated files, ...) cannot
be read partially and are decoded whole (uint8, 3 bytes a pixel after
conversion), with a log line saying so; a JPEG 2000 file over the budget only
when its full resolution is asked for (`Scan.at_least` may read a reduced one
instead). 16-bit strips take two passes (the first finds the peak that
training's scaling uses).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps

from poc59.core.pixels import pixel_limit
from poc59.data.decoding import WIDE_MODES, wide_to_8bit
from poc59.data.regions import NotInRegions, Raster, RegionError, handles, open_raster

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "Scan",
    "ScanError",
    "decode_threads",
    "level_at_least",
    "open_scan",
    "read_object_mask",
    "scan_levels",
    "scan_size",
]

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
    ".jp2",
    ".j2k",
    ".gif",
)
_ORIENTATION = 0x0112  # EXIF tag
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_MIN_STRIP_ROWS = 16


class _NotInBands(Exception):
    """This file's layout cannot be read a band at a time (it is decoded whole instead)."""


class ScanError(ValueError):
    """An image that cannot be read (the message names the file, the reason and what to do)."""


def _base_mode(mode: str) -> str:
    """The 8-bit mode an image is brought to before colour management: L, RGB or CMYK."""
    if mode in WIDE_MODES or mode in ("L", "LA", "La", "1", "I;16N"):
        return "L"
    return "CMYK" if mode == "CMYK" else "RGB"


def _icc_transform(icc: bytes | None, mode: str, path: Path) -> ImageCms.ImageCmsTransform | None:
    """A transform from the embedded ICC profile `icc` to sRGB for images of `mode`, or None (no profile,
    already sRGB, or unusable)."""
    if not icc:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return None
        return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), _base_mode(mode), "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as err:
        log.warning("%s: its ICC profile cannot be applied (%s); colours are used as stored", path, err)
        return None


class _Converter:
    """Pillow image (whole or a band) -> RGB uint8 array, the same way for every band of one file."""

    def __init__(self, transform: ImageCms.ImageCmsTransform | None, peak: float | None = None) -> None:
        self.transform, self.peak = transform, peak

    def __call__(self, img: Image.Image | np.ndarray) -> np.ndarray:
        if isinstance(img, np.ndarray):  # RGB uint8 rows already: only a profile has anything left to do
            if self.transform is None:
                return img
            img = Image.fromarray(img, "RGB")
        img = wide_to_8bit(img, self.peak)
        base = _base_mode(img.mode)
        if img.mode != base:
            img = img.convert(base)
        if self.transform is not None:
            img = ImageCms.applyTransform(img, self.transform)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img)


class _PngBands:
    """Rows of a non-interlaced PNG, a band at a time: zlib inflates IDAT incrementally, Pillow unfilters."""

    def __init__(self, path: Path, img: Image.Image) -> None:
        self.mode, self.rawmode, self.width = img.mode, img.tile[0].args, img.size[0]
        self.palette = img.getpalette() if img.mode == "P" else None
        self.transparency = img.info.get("transparency")
        Image.new(self.mode, (2, 1)).tobytes("raw", self.rawmode)  # a packer for the previous row must exist
        self.f = open(path, "rb")  # noqa: SIM115  (closed by close())
        self.f.seek(16)
        width, _, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", self.f.read(13))
        if interlace:
            self.close()
            raise _NotInBands("interlaced PNG")
        self.stride = (width * _PNG_CHANNELS[colour] * depth + 7) // 8 + 1  # + the filter-type byte
        self.chunks = self._idat()
        self.inflate = zlib.decompressobj()
        self.tail = b""
        self.previous: bytes | None = None  # the last row decoded, unfiltered, as PNG stores it

    def _idat(self):
        self.f.seek(8)
        while True:
            head = self.f.read(8)
            if len(head) < 8:
                return
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return
            if kind == b"IDAT":
                yield self.f.read(length)
                self.f.seek(4, io.SEEK_CUR)
            else:
                self.f.seek(length + 4, io.SEEK_CUR)

    def read(self, n: int) -> Image.Image:
        need = n * self.stride
        data = bytearray()
        while len(data) < need:
            chunk = self.tail or next(self.chunks, b"")
            out = self.inflate.decompress(chunk, need - len(data))
            if not out and not chunk:
                raise OSError("image file is truncated (the PNG data ends before its last row)")
            data += out
            self.tail = self.inflate.unconsumed_tail
        context = b"" if self.previous is None else b"\x00" + self.previous  # filter type 0: stored as is
        rows = n + (self.previous is not None)
        band = Image.frombytes(
            self.mode, (self.width, rows), zlib.compress(context + bytes(data), 0), "zip", self.rawmode
        )
        self.previous = band.crop((0, rows - 1, self.width, rows)).tobytes("raw", self.rawmode)
        if rows != n:
            band = band.crop((0, 1, self.width, rows))
        if self.palette is not None:
            band.putpalette(self.palette)
        if self.transparency is not None:
            band.info["transparency"] = self.transparency
        return band

    def close(self) -> None:
        self.f.close()


class _RawBands:
    """Rows of an uncompressed single-strip image (TIFF raw, PPM/PGM): each band read at its offset."""

    def __init__(self, path: Path, img: Image.Image) -> None:
        (tile,) = img.tile
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        self.rawmode, stride, orientation = (tuple(args) + (0, 1))[:3]
        if tile.codec_name != "raw" or tile.extents != (0, 0, *img.size) or orientation != 1:
            raise _NotInBands(f"{tile.codec_name} tile layout")
        self.mode, self.width = img.mode, img.size[0]
        self.stride = stride or len(Image.new(self.mode, (self.width, 1)).tobytes("raw", self.rawmode))
        self.palette = img.getpalette() if img.mode == "P" else None
        self.offset, self.y = tile.offset, 0
        self.f = open(path, "rb")  # noqa: SIM115  (closed by close())

    def read(self, n: int) -> Image.Image:
        self.f.seek(self.offset + self.y * self.stride)
        data = self.f.read(n * self.stride)
        if len(data) < n * self.stride:
            raise OSError("image file is truncated")
        self.y += n
        band = Image.frombytes(self.mode, (self.width, n), data, "raw", self.rawmode, self.stride, 1)
        if self.palette is not None:
            band.putpalette(self.palette)
        return band

    def close(self) -> None:
        self.f.close()


class _RegionBands:
    """Rows of a TIFF (or JPEG 2000) through `poc59.data.regions`, a band at a time, 16 bits scaled by `peak`."""

    def __init__(self, raster: Raster, peak: float | None, workers: int, first_read: str | None = None) -> None:
        self.raster, self.peak, self.workers, self.y = raster, peak, workers, 0
        self.first_read = first_read  # logged (a warning) when the first rows are read

    def read(self, n: int) -> Image.Image | np.ndarray:
        """The next `n` rows: RGB uint8 [n, W, 3] as they are when the raster is RGB, else a Pillow image."""
        if self.first_read is not None:
            log.warning("%s", self.first_read)
            self.first_read = None
        y, self.y = self.y, self.y + n
        if self.raster.mode == "RGB":
            return self.raster.pixels(y, y + n, self.peak)
        return self.raster.band(y, y + n, self.peak)

    def close(self) -> None:
        self.raster.close()


def _bands(path: Path, img: Image.Image) -> _PngBands | _RawBands | None:
    """A band reader for this file, or None when its format cannot be read partially."""
    try:
        if img.format == "PNG" and len(img.tile) == 1:
            return _PngBands(path, img)
        if len(img.tile) == 1 and img.tile[0].codec_name == "raw":
            return _RawBands(path, img)
    except (_NotInBands, ValueError, KeyError, OSError):
        pass  # decoded whole instead (logged by open_scan)
    return None


def _orientation(img: Image.Image) -> int:
    """EXIF orientation without decoding (Pillow's PNG getexif() would decode the whole image to look after IDAT)."""
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(_ORIENTATION, 1)
    return img.getexif().get(_ORIENTATION, 1)


def _pixel_bytes(img: Image.Image) -> int:
    """Bytes a pixel takes while decoding whole: Pillow's pixels (multi-band: 4), the RGB array, float64 for 16-bit."""
    stored = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2}.get(img.mode, 1 if len(img.getbands()) == 1 else 4)
    return stored + 3 + (8 if img.mode in WIDE_MODES else 0)


class Scan:
    """One image file as RGB uint8 rows [h, W, 3]; `rows` must be asked for top to bottom when `streamed`.

    Rows already passed are dropped; the rows from the last request's start onwards stay available, so a
    caller may ask again for rows it was just given (predict reads a tile row, then the finished band in it).
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        whole: np.ndarray | None = None,
        bands: _PngBands | _RawBands | _RegionBands | None = None,
        convert: _Converter | None = None,
        strip_rows: int = 256,
    ) -> None:
        self.path, self.width, self.height = path, width, height
        self._whole, self._bands, self._convert = whole, bands, convert
        self.strip_rows = max(_MIN_STRIP_ROWS, strip_rows)
        self._buffer = np.zeros((0, width, 3), np.uint8)
        self._start = 0  # image row of self._buffer[0]

    @property
    def streamed(self) -> bool:
        """True when the file is decoded in strips (never whole)."""
        return self._bands is not None

    def at_least(self, width: int, height: int) -> np.ndarray:
        """RGB pixels [h, w, 3] of the smallest resolution the file stores that is at least `width` x `height`,
        for a model that needs the scan only at that size (resize / pad, or a crop model's `max_side`).

        A streamed TIFF pyramid's reduced level, or a JPEG 2000 file's reduced resolution (read whole: it is
        small), scaled by the full resolution's 16-bit peak where one is known (else the level's own) and
        colour-converted as every band is; the log names the level. Otherwise `whole()`: a streamed scan with
        no such level is then decoded whole, with a log line saying so (max_memory_mb does not bound it).
        """
        levels = self._bands.raster.levels if isinstance(self._bands, _RegionBands) else []
        level = level_at_least(levels, width, height) if len(levels) > 1 else 0
        if level == 0:
            if self.streamed:
                log.warning(
                    "%s: decoded whole (%d x %d) to be brought to the model's %d x %d: the file stores no smaller "
                    "level, so max_memory_mb does not bound it",
                    self.path,
                    self.width,
                    self.height,
                    width,
                    height,
                )
            return self.whole()
        try:
            with open_raster(self.path, level, self._bands.workers) as raster:
                log.info(
                    "%s: level %d (%d x %d) read for the model's %d x %d, not the full %d x %d",
                    self.path,
                    level,
                    raster.width,
                    raster.height,
                    width,
                    height,
                    self.width,
                    self.height,
                )
                peak = None
                if raster.wide:  # a level resampled past the full resolution's peak must not overflow
                    peak = max(p for p in (self._bands.peak, raster.peak()) if p is not None)
                return self._convert(raster.band(0, raster.height, peak))
        except (RegionError, NotInRegions) as err:
            raise ScanError(f"cannot read level {level} of {self.path}: {err}") from None

    def whole(self) -> np.ndarray:
        """All pixels [H, W, 3]; for a streamed scan this decodes them all, strip by strip into one array."""
        if self._whole is not None:
            return self._whole
        if self._start > 0:
            return self.rows(0, self.height)  # names the rows already passed
        out = np.empty((self.height, self.width, 3), np.uint8)
        y = len(self._buffer)
        out[:y] = self._buffer
        self._buffer = np.zeros((0, self.width, 3), np.uint8)
        while y < self.height:
            rows = self._decode(min(self.strip_rows, self.height - y))
            out[y : y + len(rows)] = rows
            y += len(rows)
        self._buffer = out
        return out

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Pixels of rows y0..y1-1 [y1 - y0, W, 3]."""
        y1 = min(y1, self.height)
        if self._whole is not None:
            return self._whole[y0:y1]
        if y0 < self._start:
            raise ValueError(f"{self.path}: rows {y0}.. were already passed (a streamed scan is read top to bottom)")
        end = self._start + len(self._buffer)
        while end < y0:  # rows nobody asked for: decoded and dropped
            end += len(self._decode(min(self.strip_rows, y0 - end)))
        parts = [self._buffer[max(0, y0 - self._start) :]]
        while end < y1:
            parts.append(self._decode(min(self.strip_rows, self.height - end)))
            end += len(parts[-1])
        parts = [part for part in parts if len(part)] or parts[:1]
        self._buffer = np.concatenate(parts) if len(parts) > 1 else parts[0]  # a strip read afresh is not copied
        self._start = y0
        return self._buffer[: y1 - y0]

    def _decode(self, n: int) -> np.ndarray:
        try:
            return self._convert(self._bands.read(n))
        except RegionError as err:
            raise ScanError(str(err)) from err
        except (OSError, ValueError, zlib.error) as err:
            raise ScanError(f"cannot read {self.path}: {err}. Replace or remove the file.") from err

    def close(self) -> None:
        if self._bands is not None:
            self._bands.close()


def _open(path: Path, allow_large: bool) -> Image.Image:
    try:
        with pixel_limit(allow_large), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the way out
            img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ScanError(f"{path}: {err}. If you trust the file, pass allow_large_images=true") from None
    except Exception as err:  # Pillow raises many types for bad files
        raise ScanError(f"cannot read {path}: {err}. Replace or remove the file.") from None
    w, h = img.size
    limit = Image.MAX_IMAGE_PIXELS
    if not allow_large and limit and w * h > limit:
        raise ScanError(
            f"{path}: {w} x {h} = {w * h:,} pixels exceeds Pillow's decompression-bomb limit of {limit:,} pixels. "
            "If you trust the file, pass allow_large_images=true"
        )
    return img


def _peak(path: Path, img: Image.Image, strip_rows: int) -> float:
    """The maximum of a 16/32-bit image, band by band (training scales by it)."""
    bands = _bands(path, img)
    peak, h = 0.0, img.size[1]
    try:
        for y in range(0, h, strip_rows):
            peak = max(peak, float(np.asarray(bands.read(min(strip_rows, h - y))).max()))
    finally:
        bands.close()
    return peak


def decode_threads(workers: int | None = None) -> int:
    """Threads that decode a TIFF's strips or tiles: `workers`, else PyTorch's intra-op thread count (what
    predict's and serve's `threads=` set)."""
    if workers is not None:
        return max(1, workers)
    return torch.get_num_threads()


def _raster(path: Path, allow_large: bool, level: int = 0, workers: int = 1) -> Raster | None:
    """The TIFF / JPEG 2000 reader's view of `path` (level `level`, its segments decoded on `workers` threads),
    or None when another decoder reads it."""
    if not handles(path):
        return None
    try:
        with pixel_limit(allow_large), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the way out
            raster = open_raster(path, level, workers)
    except NotInRegions as why:
        log.debug("%s: read through Pillow (%s)", path, why)
        return None
    except RegionError as err:
        raise ScanError(str(err)) from None
    w, h = raster.levels[0]
    limit = Image.MAX_IMAGE_PIXELS
    if not allow_large and limit and w * h > limit:
        raster.close()
        raise ScanError(
            f"{path}: {w} x {h} = {w * h:,} pixels exceeds Pillow's decompression-bomb limit of {limit:,} pixels. "
            "If you trust the file, pass allow_large_images=true"
        )
    return raster


def scan_size(path: str | Path, allow_large_images: bool = False) -> tuple[int, int]:
    """(width, height) as predicted (EXIF orientation applied), from the header only."""
    raster = _raster(Path(path), allow_large_images)
    if raster is not None:
        with raster:
            return raster.width, raster.height
    with _open(Path(path), allow_large_images) as img:
        w, h = img.size
        return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)


def scan_levels(path: str | Path, allow_large_images: bool = False) -> list[tuple[int, int]]:
    """(width, height) of every resolution stored in the file, the full one first: a pyramidal TIFF's levels,
    else the one size. `open_scan(path, level=i)` reads level i."""
    raster = _raster(Path(path), allow_large_images)
    if raster is None:
        return [scan_size(path, allow_large_images)]
    with raster:
        return list(raster.levels)


def level_at_least(levels: list[tuple[int, int]], width: int, height: int) -> int:
    """The index of the smallest level in `levels` (largest first) at least `width` x `height`; 0 if none is."""
    fits = [i for i, (w, h) in enumerate(levels) if w >= width and h >= height]
    return fits[-1] if fits else 0


def _region_pixel_bytes(raster: Raster) -> int:
    """Bytes a pixel takes while a band is converted: stored samples, their uint8 scaling when 16-bit (float64
    in slices of bounded size), Pillow's pixels (4) and the RGB array (3)."""
    colours = raster.sample_bytes // (2 if raster.wide else 1)
    return raster.sample_bytes + (colours if raster.wide else 0) + 4 + 3


def _region_scan(path: Path, raster: Raster, max_bytes: int | None, workers: int) -> Scan:
    """A Scan over a TIFF / JPEG 2000 raster: whole when that fits `max_bytes`, else a band at a time."""
    w, h = raster.width, raster.height
    pixel = _region_pixel_bytes(raster)
    transform = _icc_transform(raster.icc, raster.mode, path)
    try:
        if max_bytes is None or w * h * pixel <= max_bytes:
            try:
                pixels = _Converter(transform)(raster.whole_pixels() if raster.mode == "RGB" else raster.whole())
            finally:
                raster.close()
            return Scan(path, w, h, whole=pixels)
        if raster.whole_only:  # nothing decoded yet: a model that needs less reads a reduced level (at_least)
            why = (
                f"{path}: decoding it whole (~{w * h * pixel / 2**20:.0f} MB, above the {max_bytes / 2**20:.0f} MB "
                "budget) because JPEG 2000 cannot be read in parts (imagecodecs decodes a codestream whole)"
            )
            strip_rows = max(_MIN_STRIP_ROWS, max_bytes // (4 * w * pixel))
            return Scan(
                path,
                w,
                h,
                bands=_RegionBands(raster, None, workers, why),
                convert=_Converter(transform),
                strip_rows=strip_rows,
            )
        segment = raster.rows_per_segment
        strip_rows = max(_MIN_STRIP_ROWS, max_bytes // (4 * w * pixel))
        strip_rows = max(segment, strip_rows // segment * segment)
        if 4 * w * pixel * segment > max_bytes:
            log.warning(
                "%s: its strips or tiles hold %d rows each (~%.0f MB converted), above the %.0f MB budget; "
                "read one segment row at a time",
                path,
                segment,
                4 * w * pixel * segment / 2**20,
                max_bytes / 2**20,
            )
        peak = raster.peak() if raster.wide else None
    except RegionError as err:
        raster.close()
        raise ScanError(str(err)) from None
    log.info("%s: %d x %d read in strips of %d rows (TIFF strips/tiles; never decoded whole)", path, w, h, strip_rows)
    return Scan(
        path, w, h, bands=_RegionBands(raster, peak, workers), convert=_Converter(transform), strip_rows=strip_rows
    )


def open_scan(
    path: str | Path,
    allow_large_images: bool = False,
    max_bytes: int | None = None,
    level: int = 0,
    workers: int | None = None,
) -> Scan:
    """Open one image for prediction; decoded whole if that fits in `max_bytes` (None: always), else in strips.

    `level`: a reduced resolution of a pyramidal TIFF or a JPEG 2000 file (`scan_levels`; 0, the full one, for
    any other file), its 16-bit samples scaled by that level's own peak. `workers`: threads decoding a TIFF's
    strips or tiles (`decode_threads`: PyTorch's thread count unless given).
    """
    path = Path(path)
    workers = decode_threads(workers)
    raster = _raster(path, allow_large_images, level, workers)
    if raster is not None:
        return _region_scan(path, raster, max_bytes, workers)
    if level:
        raise ValueError(f"{path}: level {level} asked for, but the file stores one resolution (see scan_levels)")
    img = _open(path, allow_large_images)
    w, h = img.size
    orientation = _orientation(img)
    whole_bytes = w * h * _pixel_bytes(img)
    bands = None
    if max_bytes is not None and whole_bytes > max_bytes:
        bands = _bands(path, img) if orientation == 1 else None
        if bands is None:
            why = "it is EXIF-rotated" if orientation != 1 else f"{img.format} {img.mode} cannot be read in strips"
            log.warning(
                "%s: decoding it whole (~%.0f MB, above the %.0f MB budget) because %s",
                path,
                whole_bytes / 2**20,
                max_bytes / 2**20,
                why,
            )
    if bands is not None:
        strip_rows = max(_MIN_STRIP_ROWS, max_bytes // (4 * w * _pixel_bytes(img)))
        try:
            peak = _peak(path, img, strip_rows) if img.mode in WIDE_MODES else None
        except (OSError, ValueError, zlib.error) as err:
            bands.close()
            raise ScanError(f"cannot read {path}: {err}. Replace or remove the file.") from err
        log.info("%s: %d x %d read in strips of %d rows (PNG/raw rows; never decoded whole)", path, w, h, strip_rows)
        return Scan(
            path,
            w,
            h,
            bands=bands,
            convert=_Converter(_icc_transform(img.info.get("icc_profile"), img.mode, path), peak),
            strip_rows=strip_rows,
        )
    try:
        with pixel_limit(allow_large_images):
            img.load()
        transform = _icc_transform(img.info.get("icc_profile"), img.mode, path)
        img = ImageOps.exif_transpose(img)
        pixels = _Converter(transform)(img)
    except Exception as err:  # truncated or corrupt data surfaces only when decoding
        raise ScanError(f"cannot read {path}: {err}. Replace or remove the file.") from None
    return Scan(path, pixels.shape[1], pixels.shape[0], whole=pixels)


def read_object_mask(path: str | Path, size: tuple[int, int], allow_large_images: bool = False) -> np.ndarray:
    """bool [H, W]: True on the object. A single-channel image, non-zero = object (white on black)."""
    path = Path(path)
    img = _open(path, allow_large_images)
    try:
        with pixel_limit(allow_large_images):
            img = ImageOps.exif_transpose(img)
        mask = np.asarray(wide_to_8bit(img).convert("L")) > 0
    except Exception as err:
        raise ScanError(f"cannot read object mask {path}: {err}") from None
    if mask.shape[::-1] != tuple(size):
        raise ScanError(
            f"object mask {path} is {mask.shape[1]} x {mask.shape[0]} but its image is {size[0]} x {size[1]}; "
            "a mask must have its image's size"
        )
    return mask
