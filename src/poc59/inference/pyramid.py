"""Tiled, pyramidal TIFF maps written from a stream of row bands, for viewers that stream pyramids.

A map is one channel of uint8 (a label map: class ids with the class table's colours as the TIFF palette; or
a confidence map: 0-255). The file is what QGIS/GDAL, libvips, IIPImage, OpenSeadragon's TIFF servers,
OpenSlide-style readers and tifffile open a region and a scale at a time:

- tiled, `TILE` x `TILE` pixels (edge tiles zero-padded, as TIFF stores them), Deflate-compressed (TIFF
  compression 8 "Adobe Deflate", which every TIFF reader decodes; ZSTD is read by far fewer viewers), at a
  chosen level and optionally with the horizontal differencing predictor (TIFF predictor 2, read by every
  reader that reads Deflate);
- level 0 at the scan's own size, then each level half the one before (rounded up) until a level fits in one
  tile, each the next IFD of the file's main chain marked reduced-resolution (NewSubfileType 1): the layout of
  GDAL's internal overviews (and of a COG) and of libvips' `tiffsave --pyramid`, the pyramid TIFF IIPImage
  serves. Checked: GDAL 3.10 (QGIS's reader) finds every level as an overview, libvips 8.18 every level as a
  page, tifffile every level of its first series. Not SubIFDs (OME-TIFF's layout): libvips takes a file's
  pyramid from its pages and opens a SubIFD only when asked for it by number, and a reader that follows only
  the main chain sees level 0 alone, the slow path a pyramid is meant to avoid. A label map is reduced by nearest neighbour (the top-left pixel of each 2 x 2 block, so
  level k is level 0 sampled every 2^k pixels: a class index is never averaged into another class). A
  confidence map is reduced by the mean of each 2 x 2 block of the level above (edge blocks: of the pixels
  they hold), rounded half up;
- classic TIFF while the uncompressed pyramid stays under `BIGTIFF_ABOVE` bytes (any reader opens it), BigTIFF
  above (a classic TIFF cannot address past 4 GiB, and Deflate can grow incompressible tiles slightly).

Streaming: `PyramidWriter.add` takes the rows top to bottom in bands of any height. Each level keeps one row of
tiles being filled (`TILE` rows of its width) and, as a row of tiles completes, compresses its tiles into an
anonymous spill file beside the map (no name: it vanishes with the process), and passes its rows, reduced, to
the next level. The full-resolution map is therefore never in memory: about 2 x `TILE` rows of the scan's
width are. `close` then writes the TIFF from the spilled tiles (already compressed, copied as they are) under
a temporary name in the map's folder and renames it to the map's name once it is complete and on disk, so an
interrupted write (an error, a kill, a full disk) leaves no file under the map's name.
"""

from __future__ import annotations

import math
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import imagecodecs
import numpy as np
import tifffile

from poc59.core.atomic import replacing

__all__ = ["BIGTIFF_ABOVE", "TILE", "PyramidWriter", "level_sizes", "needs_bigtiff", "working_bytes"]

TILE = 256  # pixels: the tile size OpenSeadragon, IIPImage and libvips's pyramids use by default
BIGTIFF_ABOVE = 2**31  # uncompressed bytes of all levels: past this the map is written as BigTIFF

Reduction = Literal["nearest", "mean"]


def level_sizes(width: int, height: int, tile: int = TILE) -> list[tuple[int, int]]:
    """(width, height) of each level: the full size, then halved (rounded up) until a level fits in one tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append((-(-w // 2), -(-h // 2)))
    return sizes


def needs_bigtiff(width: int, height: int, tile: int = TILE) -> bool:
    """Whether a uint8 map of this size is written as BigTIFF: its levels' tiles, uncompressed, exceed
    `BIGTIFF_ABOVE` bytes."""
    total = sum(math.ceil(w / tile) * math.ceil(h / tile) * tile * tile for w, h in level_sizes(width, height, tile))
    return total > BIGTIFF_ABOVE


def working_bytes(width: int, tile: int = TILE) -> int:
    """What one `PyramidWriter` holds for a map `width` px wide, whatever its height (the band given to it not
    counted): a row of tiles being filled per level (the levels halving: under 2 rows of tiles in all) and the
    reduction's temporaries (the mean's sums: 1.5 rows of tiles). Measured (tracemalloc, 8,000 px wide): 2.6
    rows of tiles (nearest) and 3.9 (mean); 5 leaves room."""
    return 5 * tile * math.ceil(width / tile) * tile


def _mean_2x2(rows: np.ndarray) -> np.ndarray:
    """Each 2 x 2 block of uint8 `rows` [h, w] as the mean of the pixels it holds (a block at an odd edge holds
    fewer), rounded half up: [ceil(h / 2), ceil(w / 2)]. An edge block's sum is doubled (or quadrupled, in the
    corner) so that every block sums four samples: one rounding, (sum + 2) // 4, serves all."""
    h, w = rows.shape
    pairs = rows[0::2].astype(np.uint16)
    pairs[: h // 2] += rows[1::2]
    if h % 2:
        pairs[-1] *= 2
    sums = np.ascontiguousarray(pairs[:, 0::2])
    sums[:, : w // 2] += pairs[:, 1::2]
    if w % 2:
        sums[:, -1] *= 2
    sums += 2
    sums >>= 2
    return sums.astype(np.uint8)


def _reduce(rows: np.ndarray, how: Reduction) -> np.ndarray:
    """One level down: `rows` [h, w] (h even, or the level's last rows) -> [ceil(h / 2), ceil(w / 2)]."""
    return np.ascontiguousarray(rows[::2, ::2]) if how == "nearest" else _mean_2x2(rows)


class _Level:
    """One level being streamed: the row of tiles being filled, the rows not yet reduced to the next level,
    and where its compressed tiles lie in the spill file, in TIFF order (row by row, left to right)."""

    def __init__(self, width: int, height: int, tile: int) -> None:
        self.width, self.height, self.tile = width, height, tile
        self.filling = np.zeros((tile, math.ceil(width / tile) * tile), np.uint8)  # zeros: the edge tiles' padding
        self.filled = 0  # rows in `filling`
        self.received = 0  # rows of the level received so far
        self.unpaired: np.ndarray | None = None  # a row waiting for its partner before reduction
        self.tiles: list[tuple[int, int]] = []  # (offset, length) of each compressed tile in the spill file


class StreamedFile(ABC):
    """A file written as it streams, as a context manager: leaving the block normally completes it (`close`),
    leaving it with an error gives it up (`abort`: nothing under its name)."""

    @abstractmethod
    def close(self) -> object:
        """Complete the file (it appears under its name)."""

    @abstractmethod
    def abort(self) -> None:
        """Give up: nothing is left under the file's name."""

    def __enter__(self) -> StreamedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class PyramidWriter(StreamedFile):
    """Writes one uint8 map of `width` x `height` as a tiled, pyramidal, Deflate-compressed TIFF at `path`
    from bands of rows given top to bottom (`add`), then `close` (see the module docstring).

    `reduction`: "nearest" for class indices, "mean" for continuous values. `colormap`: uint8 [256, 3], the
    colour of each value, written as the TIFF palette (photometric palette); without it the map is grayscale
    (0 black). `level`: Deflate's, 1 (fastest) to 12 (smallest; libdeflate's levels). `predictor`: store each
    row's differences from left to right (TIFF predictor 2), smaller for smooth values, not for class ids. Use as a context manager: leaving the block normally closes the writer (the file appears under
    `path`); leaving it with an error aborts it (nothing is written under `path`, the spill file is freed).
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        reduction: Reduction,
        colormap: np.ndarray | None = None,
        tile: int = TILE,
        bigtiff: bool | None = None,
        level: int = 6,
        predictor: bool = False,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"a map needs at least one pixel, got {width} x {height}")
        if reduction not in ("nearest", "mean"):
            raise ValueError(f"reduction must be 'nearest' or 'mean', got {reduction!r}")
        if tile < 16 or tile % 16:
            raise ValueError(f"TIFF tiles are multiples of 16 pixels, got {tile}")
        if colormap is not None and np.shape(colormap) != (256, 3):
            raise ValueError(f"colormap must be uint8 [256, 3], got shape {np.shape(colormap)}")
        self.path = Path(path)
        self.width, self.height, self.reduction, self.tile = width, height, reduction, tile
        self.level, self.predictor = level, predictor
        self.colormap = None if colormap is None else np.asarray(colormap, np.uint16).T * 257  # TIFF: 16 bit
        self.bigtiff = needs_bigtiff(width, height, tile) if bigtiff is None else bigtiff
        self.levels = [_Level(w, h, tile) for w, h in level_sizes(width, height, tile)]
        self._spill: BinaryIO | None = tempfile.TemporaryFile(dir=self.path.parent)
        self._spilled = 0

    def add(self, rows: np.ndarray) -> None:
        """The next rows of the map, uint8 [h, width], below those given before."""
        if self._spill is None:
            raise ValueError(f"{self.path}: the writer is closed")
        rows = np.asarray(rows)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be uint8 [h, {self.width}], got {rows.dtype} {rows.shape}")
        self._feed(0, rows)

    def _feed(self, k: int, rows: np.ndarray) -> None:
        level = self.levels[k]
        if level.received + len(rows) > level.height:
            raise ValueError(f"{self.path}: rows past the map's height {self.height}")
        done = 0
        while done < len(rows):
            n = min(self.tile - level.filled, len(rows) - done)
            level.filling[level.filled : level.filled + n, : level.width] = rows[done : done + n]
            level.filled += n
            level.received += n
            done += n
            if level.filled == self.tile or level.received == level.height:
                self._compress(level)
        if k + 1 == len(self.levels) or not len(rows):
            return
        if level.unpaired is not None:
            rows = np.concatenate([level.unpaired, rows])
            level.unpaired = None
        if level.received < level.height and len(rows) % 2:  # a row pairs with the next band's first row
            level.unpaired = rows[-1:].copy()
            rows = rows[:-1]
        if len(rows):
            self._feed(k + 1, _reduce(rows, self.reduction))

    def _compress(self, level: _Level) -> None:
        """The filled row of tiles, compressed into the spill file; `filling` is then empty again."""
        assert self._spill is not None
        level.filling[level.filled :] = 0  # the last row of tiles: padding below the map
        for x in range(0, level.filling.shape[1], self.tile):
            tile = np.ascontiguousarray(level.filling[:, x : x + self.tile])
            if self.predictor:
                tile = imagecodecs.delta_encode(tile, axis=-1)  # uint8 differences modulo 256, as TIFF's predictor 2
            data = imagecodecs.deflate_encode(tile, self.level)
            self._spill.write(data)
            level.tiles.append((self._spilled, len(data)))
            self._spilled += len(data)
        level.filled = 0

    def _tiles(self, level: _Level) -> Iterator[bytes]:
        assert self._spill is not None
        for offset, length in level.tiles:
            self._spill.seek(offset)
            yield self._spill.read(length)

    def close(self) -> Path:
        """Write the TIFF (under a temporary name, renamed to `path` when complete) and free the spill file.
        ValueError if fewer rows than the map's height were given (nothing is written then)."""
        if self._spill is None:
            raise ValueError(f"{self.path}: the writer is closed")
        try:
            if self.levels[0].received != self.height:
                raise ValueError(f"{self.path}: {self.levels[0].received} of the map's {self.height} rows given")
            with replacing(self.path) as fh, tifffile.TiffWriter(fh, bigtiff=self.bigtiff) as tif:
                for k, level in enumerate(self.levels):
                    tif.write(
                        self._tiles(level),
                        shape=(level.height, level.width),
                        dtype=np.uint8,
                        tile=(self.tile, self.tile),
                        compression="zlib",  # TIFF compression 8, Adobe Deflate
                        predictor=2 if self.predictor else 1,
                        photometric="minisblack" if self.colormap is None else "palette",
                        colormap=self.colormap,
                        subfiletype=1 if k else 0,  # a reduced-resolution version of level 0
                        metadata=None,
                        software="poc59",
                    )
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Give up: free the spill file; nothing is written under `path` (a closed writer: no effect)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
