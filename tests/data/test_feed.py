import pytest
import torch

from poc59.data.feed import BatchFeed


def _set(n=23, size=4):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    masks = images[:, 0].clone()
    return images, masks


def test_batches_are_the_indexed_samples_and_cover_each_once():
    images, masks = _set()
    indices = list(range(3, 23))
    feed = BatchFeed(images, masks, indices, 6, shuffle=False, drop_last=False)
    batches = [(i.clone(), m.clone()) for i, m in feed]  # buffers are reused: keep copies
    assert len(feed) == len(batches) == 4 and [b[0].shape[0] for b in batches] == [6, 6, 6, 2]
    seen = torch.cat([b[0][:, 0, 0, 0] for b in batches]).tolist()
    assert seen == indices
    for imgs, msks in batches:
        assert torch.equal(imgs[:, 0], msks)


def test_buffers_are_reused_but_not_clobbered_by_one_batch_of_lookahead():
    images, masks = _set(40)
    feed = BatchFeed(images, masks, range(40), 5, shuffle=True, drop_last=True, seed=1)
    it = iter(feed)
    prev = next(it)
    prev_ids = prev[0][:, 0, 0, 0].clone()
    ptrs = {prev[0].data_ptr()}
    for cur in it:  # Lightning holds the previous batch while fetching the next
        assert torch.equal(prev[0][:, 0, 0, 0], prev_ids)
        prev, prev_ids = cur, cur[0][:, 0, 0, 0].clone()
        ptrs.add(cur[0].data_ptr())
    assert len(ptrs) == 3  # a ring of three reused buffers, no fresh allocation per batch


def test_shuffle_is_seeded_per_epoch():
    images, masks = _set(30)
    epoch = {"e": 0}
    feed = BatchFeed(images, masks, range(30), 10, shuffle=True, drop_last=True, seed=5, epoch_fn=lambda: epoch["e"])
    a = torch.cat([b[0][:, 0, 0, 0] for b in feed]).tolist()
    again = torch.cat([b[0][:, 0, 0, 0] for b in feed]).tolist()
    epoch["e"] = 1
    b = torch.cat([b[0][:, 0, 0, 0] for b in feed]).tolist()
    assert a == again and a != b and sorted(a) == sorted(b) == list(range(30))


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_equal_and_cover(world):
    images, masks = _set(23)
    train = [
        BatchFeed(images, masks, range(23), 2, shuffle=True, drop_last=True, seed=0, rank=r, world_size=world)
        for r in range(world)
    ]
    shards = [set(f.shard(0).tolist()) for f in train]
    assert len({len(f) for f in train}) == 1  # equal number of batches on every rank
    assert all(not (shards[i] & shards[j]) for i in range(world) for j in range(i + 1, world))
    assert len(set().union(*shards)) == 23 // world * world
    val = [
        BatchFeed(images, masks, range(23), 4, shuffle=False, drop_last=False, rank=r, world_size=world)
        for r in range(world)
    ]
    seen = sorted(i for f in val for b in f for i in b[0][:, 0, 0, 0].tolist())
    assert seen == list(range(23))  # validation sees every sample exactly once


# -- GPU paths, on the CPU stand-in for CUDA (tests/fake_cuda.py) ------------------------------------------


@pytest.mark.parametrize("window", [None, 2])
def test_data_on_the_device_is_gathered_with_an_index_on_that_device(window):
    """data.on_device=true: the set lives on the GPU, and index_select needs its index there too."""
    from fake_cuda import FakeCuda

    images, masks = _set(12)
    with FakeCuda() as cuda:
        dev_images, dev_masks = cuda.put(images, "cuda:0"), cuda.put(masks, "cuda:0")
        sizes = torch.full((12, 2), 4) if window else None
        feed = BatchFeed(
            dev_images,
            dev_masks,
            range(12),
            4,
            shuffle=True,
            drop_last=True,
            seed=3,
            device=torch.device("cuda:0"),
            window=window,
            sizes=sizes,
        )
        batches = [(i.device, i.clone(), m.clone()) for i, m in feed]
    order = feed.shard(0).tolist()
    assert [d for d, _, _ in batches] == [torch.device("cuda:0")] * 3
    for b, (_, imgs, msks) in enumerate(batches):
        ids = order[4 * b : 4 * b + 4]
        assert imgs[:, 0, 0, 0].tolist() == ids and torch.equal(imgs[:, 0], msks)


def test_copies_to_a_second_gpu_are_awaited_on_that_gpu():
    """A feed for cuda:1 records its copy events on cuda:1's stream (not the default device's)."""
    from fake_cuda import FakeCuda

    images, masks = _set(12)
    with FakeCuda() as cuda:
        feed = BatchFeed(images, masks, range(12), 2, shuffle=False, drop_last=False, device=torch.device("cuda:1"))
        out = [(i.device, i[:, 0, 0, 0].tolist()) for i, _ in feed]
    assert out == [(torch.device("cuda:1"), [2 * b, 2 * b + 1]) for b in range(6)]
    assert cuda.devices_called("event.record") == {torch.device("cuda:1")}


def test_ragged_storage_feeds_the_same_windows_and_tiles_as_the_canvas():
    """The same samples stored on canvases and ragged (each block after the other): identical training
    windows and validation tiles, windows past a sample's content padded with ignore in the batch."""
    from poc59.data.feed import BatchFeed

    g = torch.Generator().manual_seed(0)
    n, side, window = 6, 48, 16
    sizes = torch.tensor([[48, 48], [30, 41], [12, 9], [48, 20], [17, 48], [33, 33]])
    images = torch.zeros((n, 3, side, side), dtype=torch.uint8)
    masks = torch.full((n, side, side), 255, dtype=torch.uint8)
    blocks_i, blocks_m = [], []
    for i, (h, w) in enumerate(sizes.tolist()):
        im = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        mk = torch.randint(0, 4, (h, w), dtype=torch.uint8, generator=g)
        images[i, :, :h, :w], masks[i, :h, :w] = im, mk
        blocks_i.append(im.reshape(-1))
        blocks_m.append(mk.reshape(-1))
    pixels = sizes.prod(1)
    offsets = torch.cumsum(pixels, 0) - pixels
    flat_i, flat_m = torch.cat(blocks_i), torch.cat(blocks_m)
    for train in (True, False):
        kw = dict(shuffle=train, drop_last=train, window=window, sizes=sizes, tiles=not train, seed=3)
        dense = BatchFeed(images, masks, list(range(n)), 4, **kw)
        ragged = BatchFeed(flat_i, flat_m, list(range(n)), 4, offsets=offsets, **kw)
        a = [(i.clone(), m.clone()) for i, m in dense]
        b = [(i.clone(), m.clone()) for i, m in ragged]
        assert len(a) == len(b) > 0
        for (ia, ma), (ib, mb) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(ma, mb)
    tiles = [
        m
        for _, ms in BatchFeed(
            flat_i,
            flat_m,
            list(range(n)),
            4,
            offsets=offsets,
            window=window,
            sizes=sizes,
            tiles=True,
            shuffle=False,
            drop_last=False,
        )
        for m in ms.clone()
    ]
    assert sum(int((t != 255).sum()) for t in tiles) == int(pixels.sum())  # every content pixel once
