"""Sliding-window inference: one tile is one forward pass, blending leaves no seams, flip TTA is exact."""

from __future__ import annotations

import pytest
import torch

from inference.standins import Constant, LocalConv, TilePosition
from poc59.inference.tiling import TileGrid, predict_logits, stream_logits, tile_starts, window


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tta", [False, True])
def test_an_image_one_tile_large_is_exactly_one_forward_pass(tta):
    net = LocalConv()
    image = _image(64, 64)
    with torch.no_grad():
        single = net(image[None])[0]
        if tta:
            single = (single + net(image.flip(-1)[None])[0].flip(-1)) / 2
    assert torch.equal(predict_logits(net, image, tile=64, tta=tta), single)


@pytest.mark.parametrize("shape", [(150, 230), (64, 200), (40, 50), (97, 64)])
def test_constant_logits_stay_constant_everywhere(shape):
    values = [0.3, -1.7, 2.5]
    out = predict_logits(Constant(values), _image(*shape), tile=64, overlap=0.25, batch_size=3)
    assert out.shape == (3, *shape)
    assert torch.allclose(out, torch.tensor(values).view(3, 1, 1).expand_as(out), atol=1e-6, rtol=0)


def test_tile_position_dependent_logits_blend_without_seams():
    image = _image(96, 400)
    out = predict_logits(TilePosition(), image, tile=64, overlap=0.25)[0]
    starts = tile_starts(400, 64, 0.25)
    # stitched without blending (each pixel from the last tile covering it) the ramp jumps at every seam
    hard = torch.zeros(400)
    for x in starts:
        hard[x : x + 64] = torch.linspace(0, 1, 64)
    assert hard.diff().abs().max() > 0.5
    steps = out.diff(dim=1).abs()
    # blended: within a tile the ramp rises 1/63 a pixel; the hand-over between tiles adds at most
    # (spacing / tile) / ramp length = (spacing / 64) / 16 a pixel, with no jump
    spacing = max(b - a for a, b in zip(starts, starts[1:]))
    assert steps.max() <= 1 / 63 + spacing / 64 / 16 + 1e-5
    assert torch.allclose(out, out[:1].expand_as(out))  # rows agree: no horizontal seam either


def test_blending_matches_the_whole_image_pass_away_from_tile_edges():
    """A local convolution sees the same pixels in a tile as in the whole image, except near tile borders."""
    net = LocalConv()
    image = _image(120, 180)
    with torch.no_grad():
        whole = net(image[None])[0]
    tiled = predict_logits(net, image, tile=64, overlap=0.5)
    assert tiled.shape == whole.shape
    # centre weights dominate: the error left is the floor-weighted edge pixels of neighbours
    assert (tiled - whole).abs().max() < 0.1 * whole.abs().max()


@pytest.mark.parametrize("shape", [(130, 211), (40, 50), (64, 97)])
def test_flip_tta_is_exactly_mirror_symmetric(shape):
    net = LocalConv(seed=3)
    image = _image(*shape, seed=1)
    a = predict_logits(net, image, tile=64, overlap=0.3, batch_size=4, tta=True)
    b = predict_logits(net, image.flip(-1), tile=64, overlap=0.3, batch_size=4, tta=True)
    assert torch.equal(b, a.flip(-1))
    assert torch.equal(b.argmax(0), a.argmax(0).flip(-1))
    plain = predict_logits(net, image, tile=64, overlap=0.3)
    assert not torch.equal(plain, a)  # TTA did something


def test_streamed_bands_equal_the_whole_image_and_read_rows_in_order():
    net = LocalConv()
    image = _image(300, 90)
    reads = []

    def read(y0, y1):
        reads.append((y0, y1))
        return image[:, y0:y1]

    # a band holds its values until the next is asked for (one accumulator): kept here as copies
    bands = [(y, b.clone()) for y, b in stream_logits(net, read, 300, 90, tile=64, overlap=0.25, batch_size=2)]
    assert [y for y, _ in bands] == sorted(y for y, _ in bands) and bands[0][0] == 0
    assert sum(b.shape[1] for _, b in bands) == 300
    assert [r[0] for r in reads] == sorted(r[0] for r in reads) and all(y1 - y0 <= 64 for y0, y1 in reads)
    assert torch.equal(
        torch.cat([b for _, b in bands], dim=1), predict_logits(net, image, tile=64, overlap=0.25, batch_size=5)
    )


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("shape", [(300, 90), (40, 50), (130, 211)])
def test_the_memory_estimate_is_the_memory_streaming_allocates(shape, tta):
    """predict budgets its decoded strips with TileGrid.working_bytes: every float tensor stream_logits
    hands out or runs the network on must be within the shapes that estimate counts."""
    height, width = shape
    classes, batch_size, tile = 5, 2, 64
    seen, conv, image = [], LocalConv(classes=classes), _image(height, width)

    def net(tiles):
        out = conv(tiles)
        seen.append(out)
        return out

    grid = TileGrid(height, width, tile, 0.25)
    row_bytes = 4 * classes * tile * max(width, tile)
    storages = set()
    for _, band in stream_logits(net, lambda y0, y1: image[:, y0:y1], height, width, tile, 0.25, batch_size, tta):
        assert band.untyped_storage().nbytes() <= row_bytes  # a band is a view into one tile row, never more
        storages.add(band.untyped_storage().data_ptr())
    # one tile row accumulates every band (shifted up in place): never a second row beside it
    assert len(storages) == 1
    batch = max(t.untyped_storage().nbytes() for t in seen)
    assert batch <= 4 * classes * batch_size * tile * tile
    assert grid.working_bytes(classes, batch_size, tta) == row_bytes * (1 + 3 * tta) + 2 * batch


def test_tile_grid_and_window():
    for length in (64, 65, 100, 1000, 6000):
        starts = tile_starts(length, 64, 0.25)
        assert starts[0] == 0 and starts[-1] == length - 64
        assert all(0 < b - a <= 48 for a, b in zip(starts, starts[1:]))  # overlap >= 25 %, no gaps
    assert tile_starts(30, 64, 0.25) == [0]
    w = window(64, 0.25)
    assert torch.equal(w, w.flip(0)) and w.min() > 0 and w.max() == 1.0 and w[0] < w[20]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 64, 1.0)
