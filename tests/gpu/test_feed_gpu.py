"""The batch feed on CUDA: pinned buffers reused under a delayed stream never hand out a batch overwritten
before its copy ran (a control without the wait shows the probe catches that), and a set held on the device
(data.on_device) is gathered there (issue 12, items 2 and 11)."""

from __future__ import annotations

import pytest
import torch

from poc59.data.feed import BatchFeed

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest.py says why)

N, S, B = 192, 384, 32
SLEEP_CYCLES = 60_000_000  # ~30 ms of GPU work after each batch: the next non_blocking copies queue behind it


@pytest.fixture(scope="module")
def source() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, 256, (N, 3, S, S), dtype=torch.uint8, generator=g),
        torch.randint(0, 16, (N, S, S), dtype=torch.uint8, generator=g),
    )


class NoWait(BatchFeed):
    """Control: the feed without its wait on a buffer's last copy (it forgets the copy's event)."""

    def _buffer(self, slot: int):
        assert hasattr(self, "_copied"), "BatchFeed no longer keeps its copy events in _copied: update this control"
        self._copied[slot] = None
        return super()._buffer(slot)


def mismatched(cls: type[BatchFeed], images: torch.Tensor, masks: torch.Tensor) -> tuple[int, int]:
    """(batches, batches whose images or masks differ from the rows the feed's shard names), over 2 epochs with
    the GPU kept busy after each batch, as a slow training step does."""
    dev = torch.device("cuda")
    feed = cls(images, masks, list(range(N)), B, shuffle=True, drop_last=True, seed=1, device=dev)
    outs = []
    for epoch in (0, 1):
        feed.epoch_fn = lambda e=epoch: e
        for im, mk in feed:
            assert im.device.type == "cuda" and mk.device.type == "cuda"
            torch.cuda._sleep(SLEEP_CYCLES)
            outs.append((epoch, im.clone(), mk.clone()))  # stream-ordered after the copy: holds what it delivered
    torch.cuda.synchronize()
    n, bad = len(feed), 0
    for k, (epoch, im, mk) in enumerate(outs):
        idx = feed.shard(epoch)[(k % n) * B : (k % n + 1) * B]
        bad += not (torch.equal(im.cpu(), images[idx]) and torch.equal(mk.cpu(), masks[idx]))
    return len(outs), bad


def test_pinned_buffers_reused_under_a_delayed_stream_give_no_mismatched_batch(source):
    images, masks = source
    feed = BatchFeed(images, masks, list(range(N)), B, shuffle=False, drop_last=True, device="cuda")
    next(iter(feed))
    assert feed._buffers[0][0].is_pinned(), "a CUDA feed from host memory copies out of pinned buffers"
    batches, bad = mismatched(BatchFeed, images, masks)
    assert batches == 2 * (N // B) and bad == 0, f"{bad} of {batches} batches were overwritten before their copy"
    _, control = mismatched(NoWait, images, masks)
    assert control > 0, "the control without the wait should mismatch: the probe no longer exercises the race"


@pytest.mark.parametrize("window", [None, 256])  # resize/pad policies; crop windows
def test_a_set_on_the_device_is_gathered_on_the_device(source, window):
    images, masks = (t[:64].cuda() for t in source)
    sizes = torch.full((64, 2), S) if window else None
    feed = BatchFeed(
        images, masks, list(range(64)), 16, shuffle=True, drop_last=True, device="cuda", window=window, sizes=sizes
    )
    batches = [(im.clone(), mk.clone()) for im, mk in feed]  # a batch is a reused buffer: keep what it held
    assert len(batches) == 4 and all(im.device.type == "cuda" for im, _ in batches)
    if window is None:
        for b, (im, mk) in enumerate(batches):
            idx = feed.shard(0)[b * 16 : (b + 1) * 16].cuda()
            assert torch.equal(im, images[idx]) and torch.equal(mk, masks[idx])
    else:
        assert batches[0][0].shape == (16, 3, window, window) and batches[0][1].shape == (16, window, window)


def test_a_ragged_set_on_the_device_gives_the_canvas_windows(source):
    """policy=crop's ragged storage (poc59.data.storage) moved to the GPU: the same windows as the canvases."""
    images, masks = (t[:8] for t in source)
    sizes = torch.full((8, 2), S)
    offsets = torch.arange(8) * S * S
    kw = dict(shuffle=True, drop_last=True, device="cuda", window=256, sizes=sizes, seed=1)
    dense = BatchFeed(images.cuda(), masks.cuda(), list(range(8)), 4, **kw)
    ragged = BatchFeed(images.reshape(-1).cuda(), masks.reshape(-1).cuda(), list(range(8)), 4, offsets=offsets, **kw)
    for (ia, ma), (ib, mb) in zip(
        [(i.clone(), m.clone()) for i, m in dense], [(i.clone(), m.clone()) for i, m in ragged]
    ):
        assert ib.device.type == "cuda" and torch.equal(ia, ib) and torch.equal(ma, mb)
