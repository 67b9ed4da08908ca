"""Whole batches by tensor indexing: no per-sample Python, no worker processes.

Each batch is gathered into a reused buffer (fresh large allocations pay page
faults every batch): on the device with one `index_select`, on a CPU row by row
with NumPy copies (memcpy speed, and no intra-op thread pool to wait on when
other work shares the cores). Buffers form a ring of three,
because Lightning fetches one batch ahead of the one being trained on. With a
CUDA device the buffers are pinned and each batch is copied with
`non_blocking=True`; a buffer is refilled only after its last copy finished.
When the whole set already lives on the device (`data.on_device`), batches are
gathered there and nothing crosses the bus.

Under DDP every rank gets at least one validation batch: a rank whose shard would be empty (fewer
validation samples than ranks) gets one padding item, a real image with an all-ignore mask, which
counts nowhere; a rank without a batch would skip validation and leave the others waiting at the
epoch-end sum of the confusion matrix.

With `window=S` (the `crop` geometry) each item is an S x S window of a larger
canvas instead of the whole sample: a random window inside the sample's real
content for training (a share of them placed over rare classes with `sites` and
`rare_fraction`, see poc59.data.sampling), or, with `tiles=True`, every
non-overlapping tile that touches real content, so validation scores each pixel
exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from poc59.core.classes import IGNORE_INDEX
from poc59.data.sampling import ClassSites
from poc59.data.storage import copy_window, image_view, mask_view

_RING = 3
PADDING = -1  # the sample index of a padding item (see the module docstring)


class BatchFeed:
    """Batches of (images uint8 [B,3,S,S], masks uint8 [B,S,S]) for one rank.

    Shuffling is seeded by (seed, epoch), the same on every rank; rank r then
    takes every world_size-th index, so shards are disjoint. For training the
    order is first trimmed so every rank gets the same number of batches (DDP
    needs that); for validation nothing is dropped, every sample is seen once.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        indices: list[int] | tuple[int, ...],
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        window: int | None = None,
        sizes: torch.Tensor | None = None,
        tiles: bool = False,
        ignore_index: int = IGNORE_INDEX,
        sites: ClassSites | None = None,
        rare_fraction: float = 0.0,
        offsets: torch.Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.masks = images, masks
        self.window, self.sizes = window, sizes
        self.offsets = offsets  # ragged storage (poc59.data.storage): windows only
        if offsets is not None and window is None:
            raise ValueError("ragged storage is read in windows: give window=")
        if window is not None and sizes is None:
            raise ValueError("window needs the samples' content sizes")
        self.units = torch.as_tensor(list(indices), dtype=torch.int64)  # samples, or (sample, y, x) tiles
        if window is not None and tiles:
            self.units = tile_grid(self.units, sizes, window)
        self.random_windows = window is not None and not tiles
        self.sites, self.rare_fraction = sites, float(rare_fraction)  # class-aware windows (poc59.data.sampling)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch_fn = seed, epoch_fn
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.ignore_index = ignore_index
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._copied: list[torch.cuda.Event | None] = [None] * _RING

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in order."""
        order = self.units
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = order[torch.randperm(len(order), generator=g)]
        if self.drop_last:
            order = order[: len(order) // self.world_size * self.world_size]
        shard = order[self.rank :: self.world_size]
        if not self.drop_last and self.world_size > 1 and len(shard) == 0:
            shard = torch.zeros((1, *self.units.shape[1:]), dtype=torch.int64)
            shard.view(-1)[0] = PADDING  # sample PADDING (at y = x = 0 for tiles)
        return shard

    def __len__(self) -> int:
        n = len(self.units)
        if self.drop_last:
            return (n // self.world_size) // self.batch_size
        per_rank = len(range(self.rank, n, self.world_size))
        if self.world_size > 1:
            per_rank = max(per_rank, 1)  # the padding item
        return -(-per_rank // self.batch_size)

    def _buffer(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._buffers:
            pin = self.device.type == "cuda" and self.images.device.type == "cpu"
            side = self.images.shape[-2:] if self.window is None else (self.window, self.window)
            shape = (self.batch_size, 3, *side)
            mshape = (self.batch_size, *side)
            self._buffers = [
                (
                    torch.empty(shape, dtype=torch.uint8, device=self.images.device, pin_memory=pin),
                    torch.empty(mshape, dtype=torch.uint8, device=self.images.device, pin_memory=pin),
                )
                for _ in range(_RING)
            ]
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the previous non_blocking copy out of this buffer is done
        return self._buffers[slot]

    def _windows(self, units: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """(sample, y, x) per item: the tiles themselves, or random windows inside each sample's content."""
        if not self.random_windows:
            return units
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 65_537 + batch * 7 + self.rank)
        room = (self.sizes[units] - self.window).clamp_min(0) + 1  # valid top-left positions per axis
        yx = (torch.rand((len(units), 2), generator=g) * room).long()
        windows = torch.cat([units.view(-1, 1), yx], dim=1)
        n = round(self.rare_fraction * len(units)) if self.sites is not None and self.sites.needed else 0
        if n:  # drawn after the uniform ones: the other items are those of rare_fraction=0
            windows[:n] = self.sites.draw(n, g, self.window, self.sizes)
        return windows

    def _gather(self, units: torch.Tensor, img_buf: torch.Tensor, mask_buf: torch.Tensor, epoch: int, batch: int):
        padding = bool((units.view(len(units), -1)[:, 0] == PADDING).all())
        if padding:  # the image of sample 0, the mask all ignore
            units = units.clone()
            units.view(len(units), -1)[:, 0] = 0
        images, masks = self._gather_units(units, img_buf, mask_buf, epoch, batch)
        if padding:
            masks.fill_(self.ignore_index)
        return images, masks

    def _gather_units(self, units: torch.Tensor, img_buf: torch.Tensor, mask_buf: torch.Tensor, epoch: int, batch: int):
        n = len(units)
        on_cpu = self.images.device.type == "cpu" and img_buf.device.type == "cpu"
        if self.window is None:
            if not on_cpu:
                index = units.to(self.images.device)  # index_select wants its index where the data is
                return (
                    torch.index_select(self.images, 0, index, out=img_buf[:n]),
                    torch.index_select(self.masks, 0, index, out=mask_buf[:n]),
                )
            src_i, src_m, dst_i, dst_m = (t.numpy() for t in (self.images, self.masks, img_buf, mask_buf))
            for k, i in enumerate(units.tolist()):
                np.copyto(dst_i[k], src_i[i])
                np.copyto(dst_m[k], src_m[i])
            return img_buf[:n], mask_buf[:n]
        for k, (i, y, x) in enumerate(self._windows(units, epoch, batch).tolist()):
            image = image_view(self.images, self.sizes, self.offsets, i)
            mask = mask_view(self.masks, self.sizes, self.offsets, i)
            copy_window(image, mask, y, x, img_buf[k], mask_buf[k], self.ignore_index)
        return img_buf[:n], mask_buf[:n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_fn()
        order = self.shard(epoch)
        for b in range(len(self)):
            units = order[b * self.batch_size : (b + 1) * self.batch_size]
            slot = b % _RING
            images, masks = self._gather(units, *self._buffer(slot), epoch, b)
            if self.device.type == "cuda" and images.device != self.device:
                images = images.to(self.device, non_blocking=True)
                masks = masks.to(self.device, non_blocking=True)
                self._copied[slot] = torch.cuda.Event()
                self._copied[slot].record(torch.cuda.current_stream(self.device))  # the copies' device, not cuda:0
            yield images, masks


def tile_grid(indices: torch.Tensor, sizes: torch.Tensor, window: int) -> torch.Tensor:
    """(sample, y, x) for every window-aligned tile that touches a sample's content (h, w)."""
    tiles = []
    for i in indices.tolist():
        h, w = sizes[i].tolist()
        tiles += [(i, y, x) for y in range(0, h, window) for x in range(0, w, window)]
    return torch.tensor(tiles, dtype=torch.int64).view(-1, 3)
