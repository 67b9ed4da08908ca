"""Sliding-window inference at native scale: tiles batched through the network, logits blended without seams.

Pure tensors, no files. The image is covered by a grid of `tile` x `tile` windows
overlapping by at least `overlap`; each window's logits are weighted by a
separable window that fades towards the tile edges (a linear ramp over the
overlap, with a floor > 0 so every pixel keeps a weight) and normalised by the
sum of the weights covering each pixel. Constant logits therefore stay
constant, and a tile's edge (where a network sees least context) counts least.

The image is consumed one row of tiles at a time, top to bottom, so only one
tile row of blended logits is ever held: `stream_logits` reads its rows through
a callable and yields finished bands of logits as soon as no later tile can
touch them. That is what lets `predict` work on scans larger than memory.

Flip test-time augmentation averages the logits of each tile-row band with the
mirrored logits of the mirrored band, the same computation on both, so the
result is exactly mirror-symmetric: pred(flip(x)) == flip(pred(x)), bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from poc59.core.device import autocast as device_autocast

__all__ = ["WINDOW_FLOOR", "TileGrid", "predict_logits", "run_batches", "stream_logits", "tile_starts", "window"]

WINDOW_FLOOR = 0.05  # the weight of a tile's outermost pixels, relative to its centre

Segmenter = Callable[[torch.Tensor], torch.Tensor]  # uint8 [B, 3, h, w] -> float logits [B, C, h, w]
RowReader = Callable[[int, int], torch.Tensor]  # (y0, y1) -> uint8 [3, y1 - y0, W], rows in non-decreasing order


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles covering `length` with neighbours overlapping by at least `overlap` of a tile.

    Spread evenly from 0 to length - tile, so the last tile ends at the border and no tile sticks out.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [i * (length - tile) // (n - 1) for i in range(n)]


def window(tile: int, overlap: float, floor: float = WINDOW_FLOOR) -> torch.Tensor:
    """1-D blending weights [tile]: 1 in the middle, ramping down linearly over the overlap to `floor` at the edges."""
    i = torch.arange(tile, dtype=torch.float32)
    distance = torch.minimum(i + 0.5, tile - i - 0.5)  # to the nearest tile edge
    return (distance / max(1.0, tile * overlap)).clamp(floor, 1.0)


def _normalised(length: int, tile: int, starts: list[int], win: torch.Tensor) -> torch.Tensor:
    """[n, tile]: each tile's window divided by the summed windows at each pixel (so weights sum to 1 per pixel).

    A pixel covered by one tile gets weight w / w = 1 exactly: one tile reproduces the network's output exactly.
    """
    cover = torch.zeros(length)
    for s in starts:
        cover[s : s + tile] += win
    return torch.stack([win / cover[s : s + tile] for s in starts])


@dataclass(frozen=True)
class TileGrid:
    """The tiles covering a `height` x `width` image (zero-padded to at least one tile), and the memory
    streaming them takes: `stream_logits` allocates the shapes below and nothing larger, so `working_bytes`
    is the estimate `predict` budgets with, from the same definitions."""

    height: int
    width: int
    tile: int
    overlap: float = 0.25

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.tile), max(self.width, self.tile)

    @property
    def starts(self) -> tuple[list[int], list[int]]:
        """(row starts, column starts) of the tiles."""
        ph, pw = self.padded
        return tile_starts(ph, self.tile, self.overlap), tile_starts(pw, self.tile, self.overlap)

    def row_shape(self, classes: int) -> tuple[int, int, int]:
        """One tile row of blended logits [C, tile, padded width]: what streaming accumulates into."""
        return classes, self.tile, self.padded[1]

    def working_bytes(self, classes: int, batch_size: int, tta: bool = False) -> int:
        """Float32 bytes `stream_logits` holds at its peak: the tile row it accumulates into (one row, shifted
        up in place; with TTA also the row, its mirrored twin and the twin flipped back, being blended), and one batch of tile logits
        twice (the network's output and the float32 batch it is gathered into)."""
        row = 4 * math.prod(self.row_shape(classes))
        batch = 4 * classes * min(batch_size, len(self.starts[1])) * self.tile * self.tile
        return row * (1 + 3 * tta) + 2 * batch


def run_batches(
    segmenter: Segmenter,
    tiles: torch.Tensor,
    batch_size: int,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits [N, C, h, w] of uint8 tiles [N, 3, h, w], `batch_size` at a time, on `device`."""
    device = torch.device(device)
    out = []
    with torch.no_grad(), device_autocast(device, autocast):
        for i in range(0, len(tiles), batch_size):
            logits = segmenter(tiles[i : i + batch_size].to(device, non_blocking=True))
            if logits.ndim != 4 or logits.shape[-2:] != tiles.shape[-2:]:
                raise ValueError(
                    f"the model returned logits of shape {tuple(logits.shape)} for tiles {tuple(tiles.shape[-2:])}; "
                    "it must return [B, C, H, W] at the input size"
                )
            out.append(logits.float())
    return torch.cat(out)


def _shift_up(acc: torch.Tensor, step: int) -> None:
    """Move the rows of `acc` [C, rows, W] up by `step` in place (rows step.. to 0..) and zero the rows freed at
    the bottom: the next tile row accumulates into the same tensor, so no second row is ever allocated. Copied
    in chunks of at most `step` rows, so that no chunk reads a row that this move has already overwritten."""
    keep = max(0, acc.shape[1] - step)
    for k in range(0, keep, step):
        n = min(step, keep - k)
        acc[:, k : k + n].copy_(acc[:, step + k : step + k + n])
    acc[:, keep:].zero_()


def stream_logits(
    segmenter: Segmenter,
    read_rows: RowReader,
    height: int,
    width: int,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 8,
    tta: bool = False,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended logits of a `height` x `width` image, as bands (y0, logits [C, h, width]) from top to bottom.

    `read_rows(y0, y1)` returns image rows uint8 [3, y1 - y0, width]; it is called once per tile row with
    non-decreasing y0, so a reader may stream the image. Images smaller than a tile are zero-padded.
    Memory: `TileGrid.working_bytes` (about (1 + 3 * tta) tile rows of logits and one batch of tiles),
    never the whole image's logits. A band is a view into the one tile row accumulated: it holds its values
    until the next band is asked for (copy it to keep it longer).
    """
    device = torch.device(device)
    grid = TileGrid(height, width, tile, overlap)
    (ph, pw), (ys, xs) = grid.padded, grid.starts
    win = window(tile, overlap)
    wy, wx = _normalised(ph, tile, ys, win).to(device), _normalised(pw, tile, xs, win).to(device)

    def blend(rows: torch.Tensor, out: torch.Tensor, wy_r: torch.Tensor) -> torch.Tensor:
        """Add one tile row's weighted logits into `out` [C, tile, pw], a batch at a time."""
        band = np.zeros((3, tile, pw), np.uint8)  # zero-padded at the bottom/right, as the training canvas is
        band[:, : rows.shape[1], :width] = rows.cpu().numpy()
        for i in range(0, len(xs), batch_size):
            chunk = xs[i : i + batch_size]
            tiles = torch.from_numpy(
                np.stack([band[:, :, x : x + tile] for x in chunk])
            )  # numpy: strided uint8 copies fast
            logits = run_batches(segmenter, tiles, batch_size, device, autocast)
            logits.mul_(wx[i : i + batch_size, None, None, :] * wy_r[None, None, :, None])  # weights, in place
            if out.numel() == 0:
                out = torch.zeros(grid.row_shape(logits.shape[1]), device=device)
            for t, x in zip(logits, chunk):
                out[:, :, x : x + tile] += t
        return out

    ones = torch.ones(tile, device=device)
    acc = torch.empty(0, device=device)
    for r, y in enumerate(ys):
        rows = read_rows(y, min(y + tile, height))
        if rows.shape[0] != 3 or rows.shape[-1] != width:
            raise ValueError(f"read_rows returned {tuple(rows.shape)}, expected [3, rows, {width}]")
        if tta:  # the same computation on the mirrored rows, mirrored back: exactly symmetric by construction
            row = blend(rows, torch.empty(0, device=device), ones)[..., :width]
            mirrored = blend(rows.flip(-1), torch.empty(0, device=device), ones)[..., :width].flip(-1)
            row = row.add_(mirrored).div_(2).mul_(wy[r][None, :, None])  # in place: the same values as out of place
            del mirrored
            acc = row if acc.numel() == 0 else acc.add_(row)
        else:
            acc = blend(rows, acc, wy[r])
        nxt = ys[r + 1] if r + 1 < len(ys) else ph
        done = min(nxt, height) - y
        if done > 0:
            yield y, acc[:, :done, :width]
        _shift_up(acc, nxt - y)


def predict_logits(
    segmenter: Segmenter,
    image: torch.Tensor,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 8,
    tta: bool = False,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Blended logits [C, H, W] of one uint8 image (or strip) [3, H, W] held in memory."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    bands = stream_logits(
        segmenter, lambda y0, y1: image[:, y0:y1], height, width, tile, overlap, batch_size, tta, device, autocast
    )
    out = None
    for y0, band in bands:  # each band holds its values only until the next is asked for: copied out at once
        if out is None:
            out = band.new_empty((band.shape[0], height, width))
        out[:, y0 : y0 + band.shape[1]] = band
    return out
