"""Whole batches by tensor indexing: no per-sample Python, no worker processes.

Each batch is gathered with one `index_select` into a reused buffer (fresh
large allocations pay page faults every batch). Buffers form a ring of three,
because Lightning fetches one batch ahead of the one being trained on. With a
CUDA device the buffers are pinned and each batch is copied with
`non_blocking=True`; a buffer is refilled only after its last copy finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

_RING = 3


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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.masks = images, masks
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch_fn = seed, epoch_fn
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._copied: list[torch.cuda.Event | None] = [None] * _RING

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in order."""
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = order[torch.randperm(len(order), generator=g)]
        if self.drop_last:
            order = order[: len(order) // self.world_size * self.world_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.indices)
        if self.drop_last:
            return (n // self.world_size) // self.batch_size
        per_rank = len(range(self.rank, n, self.world_size))
        return -(-per_rank // self.batch_size)

    def _buffer(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._buffers:
            pin = self.device.type == "cuda"
            shape = (self.batch_size, *self.images.shape[1:])
            mshape = (self.batch_size, *self.masks.shape[1:])
            self._buffers = [
                (torch.empty(shape, dtype=torch.uint8, pin_memory=pin), torch.empty(mshape, dtype=torch.uint8, pin_memory=pin))
                for _ in range(_RING)
            ]
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # the previous non_blocking copy out of this buffer is done
        return self._buffers[slot]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.shard(self.epoch_fn())
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            slot = b % _RING
            img_buf, mask_buf = self._buffer(slot)
            images = torch.index_select(self.images, 0, idx, out=img_buf[: len(idx)])
            masks = torch.index_select(self.masks, 0, idx, out=mask_buf[: len(idx)])
            if self.device.type == "cuda":
                images = images.to(self.device, non_blocking=True)
                masks = masks.to(self.device, non_blocking=True)
                self._copied[slot] = torch.cuda.Event()
                self._copied[slot].record()
            yield images, masks
