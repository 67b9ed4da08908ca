import json

import pytest
import torch

from poc59.data.augment import BatchAugment

NO_FLIPS = dict(hflip=0.0, vflip=0.0, rot90=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_batch(b: int, h: int, w: int, block: int, seed: int):
    """Images constant on block x block squares, channel 0 = 16 * label + 8, and mask = image[:, 0] // 16 with a 255 band."""
    g = gen(seed)
    labels = torch.randint(0, 16, (b, 1, -(-h // block), -(-w // block)), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (b, 2, *labels.shape[-2:]), generator=g, dtype=torch.uint8)
    images = torch.cat([labels * 16 + 8, other], 1).repeat_interleave(block, 2).repeat_interleave(block, 3)
    images = images[:, :, :h, :w].contiguous()
    masks = images[:, 0] // 16
    masks[:, : h // 8] = 255  # an ignored band, which must stay 255 and move with the image
    return images, masks


def stable(images: torch.Tensor) -> torch.Tensor:
    """[B,H,W]: pixels whose 3x3 neighbourhood is one value in every channel (so bilinear mixed nothing there)."""
    x = images.float()
    hi = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    lo = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)
    return (hi == lo).all(1)


def eroded(region: torch.Tensor) -> torch.Tensor:
    """[B,H,W] bool: pixels whose whole 3x3 neighbourhood lies in `region` (outside the frame does not)."""
    x = torch.nn.functional.pad(region.float().unsqueeze(1), (1, 1, 1, 1), value=0.0)
    return (-torch.nn.functional.max_pool2d(-x, 3, 1, 0)).squeeze(1) > 0


def misaligned(images: torch.Tensor, masks: torch.Tensor) -> tuple[int, int]:
    """(mismatches, pixels checked): labelled, unmixed pixels whose mask disagrees with image[:, 0] // 16."""
    check = stable(images) & (masks != 255)
    return int((masks != images[:, 0] // 16)[check].sum()), int(check.sum())


# -- flips and rotation ---------------------------------------------------------------------------
def test_mask_moves_with_image_and_ignore_stays():
    g = gen(0)
    images = torch.randint(0, 255, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    masks = images[:, 0] // 16  # a mask derived from the image: alignment is checkable pixel by pixel
    masks[:, 0, :3] = 255
    out_i, out_m = BatchAugment(hflip=0.5, vflip=0.5, rot90=0.5)(images, masks, gen(1))
    ignore = out_m == 255
    assert ignore.sum() == 64 * 3
    assert torch.equal(out_m[~ignore], (out_i[:, 0] // 16)[~ignore])
    changed = (out_i != images).flatten(1).any(1)
    assert 20 < int(changed.sum()) < 64  # drawn per sample, not all or nothing


def test_each_transform_is_its_exact_operation_and_p0_is_identity():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    masks = images[:, 0].clone()
    g = gen(0)
    i, m = BatchAugment(hflip=1.0, vflip=0.0, rot90=0.0)(images, masks, g)
    assert torch.equal(i, images.flip(-1)) and torch.equal(m, masks.flip(-1))
    i, m = BatchAugment(hflip=0.0, vflip=1.0, rot90=0.0)(images, masks, g)
    assert torch.equal(i, images.flip(-2))
    i, m = BatchAugment(hflip=0.0, vflip=0.0, rot90=1.0)(images, masks, g)
    assert torch.equal(i, images.rot90(1, (-2, -1))) and torch.equal(m, masks.rot90(1, (-2, -1)))
    i, m = BatchAugment(0.0, 0.0, 0.0)(images, masks, g)
    assert torch.equal(i, images) and torch.equal(m, masks)


def test_flips_match_a_per_sample_reference_with_the_seed_draws():
    """Each sample: hflip, then vflip, then rot90, decided by torch.rand((3, B)) from the generator (the seed's layout)."""
    images = torch.randint(0, 256, (48, 3, 6, 6), dtype=torch.uint8, generator=gen(2))
    masks = torch.randint(0, 256, (48, 6, 6), dtype=torch.uint8, generator=gen(3))
    before = images.clone(), masks.clone()
    out_i, out_m = BatchAugment(hflip=0.5, vflip=0.5, rot90=0.5)(images, masks, gen(4))
    u = torch.rand((3, 48), generator=gen(4))
    for b in range(48):
        x, m = images[b], masks[b]
        if u[0, b] < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        if u[1, b] < 0.5:
            x, m = x.flip(-2), m.flip(-2)
        if u[2, b] < 0.5:
            x, m = x.rot90(1, (-2, -1)), m.rot90(1, (-2, -1))
        assert torch.equal(out_i[b], x) and torch.equal(out_m[b], m), b
    assert len({tuple(k) for k in (u < 0.5).T.tolist()}) == 8  # every symmetry of the square was exercised
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])  # inputs untouched


def test_rot90_needs_square_batches_but_flips_do_not():
    images, masks = torch.zeros(2, 3, 4, 6, dtype=torch.uint8), torch.zeros(2, 4, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="rot90 needs square"):
        BatchAugment(rot90=0.3)(images, masks, gen(0))
    i, m = BatchAugment(rot90=0.0, scale=[0.8, 1.2], scale_p=1.0)(images, masks, gen(0))
    assert i.shape == images.shape and m.shape == masks.shape


# -- zoom / crop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_mask_stays_aligned_with_image_through_flips_and_zoom(shape):
    h, w = shape
    images, masks = block_batch(32, h, w, block=8, seed=5)
    rot = 0.5 if h == w else 0.0
    aug = BatchAugment(hflip=0.5, vflip=0.5, rot90=rot, scale=[0.6, 1.6], scale_p=0.7)
    out_i, out_m = aug(images, masks, gen(6))
    assert out_i.shape == images.shape and out_m.shape == masks.shape and out_m.dtype == torch.uint8
    bad, checked = misaligned(out_i, out_m)
    assert bad == 0
    assert checked > 0.4 * (out_m != 255).sum()  # most labelled pixels were checked: the test has teeth
    # The check does catch a mask transformed differently from its image (the same batch, another draw):
    other_i, _ = aug(images, masks, gen(7))
    bad, checked = misaligned(other_i, out_m)
    assert bad > 0.2 * checked
    # Unmixed pixels that are 0 came from outside the source, and there the mask is ignored:
    outside = stable(out_i) & (out_i == 0).all(1)
    assert outside.any() and (out_m[outside] == 255).all()


def test_zoom_keeps_labels_and_marks_outside_ignored():
    g = gen(8)
    images = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=g)
    masks = torch.tensor([0, 3, 7, 15], dtype=torch.uint8)[torch.randint(0, 4, (16, 20, 20), generator=g)]
    _, out_m = BatchAugment(**NO_FLIPS, scale=[0.5, 2.0], scale_p=1.0)(images, masks, gen(9))
    assert set(out_m.unique().tolist()) <= {0, 3, 7, 15, 255}  # nearest: never a label in between

    # Shrinking a constant image to half size: a 10x10 valid square, the rest image 0 / mask 255.
    images = torch.full((16, 3, 20, 20), 200, dtype=torch.uint8)
    masks = torch.full((16, 20, 20), 3, dtype=torch.uint8)
    out_i, out_m = BatchAugment(**NO_FLIPS, scale=[0.5, 0.5], scale_p=1.0)(images, masks, gen(10))
    valid = out_m != 255
    assert set(out_m.unique().tolist()) == {3, 255}
    rows, cols = valid.any(2), valid.any(1)
    assert ((rows.sum(1) - 10).abs() <= 1).all() and ((cols.sum(1) - 10).abs() <= 1).all()
    assert torch.equal(valid, rows[:, :, None] & cols[:, None, :])  # a rectangle
    assert len({tuple(r) for r in rows.int().tolist()}) > 4  # placed at random positions
    far, inner = eroded(~valid), eroded(valid)
    assert (out_i.permute(1, 0, 2, 3)[:, far] == 0).all()  # away from the valid square: image 0
    assert (out_i.permute(1, 0, 2, 3)[:, inner] == 200).all()  # inside it: the image, exactly

    # Enlarging crops inside the source: nothing from outside.
    _, out_m = BatchAugment(**NO_FLIPS, scale=[1.2, 2.0], scale_p=1.0)(images, masks, gen(11))
    assert (out_m == 3).all()


def test_zoom_keeps_orientation_and_crops_a_window():
    """Mask label = 16 * row + col: a 2x zoom shows an (at most) 8x8 window of the source, in order."""
    r, c = torch.meshgrid(torch.arange(15), torch.arange(15), indexing="ij")
    masks = (16 * r + c).to(torch.uint8).expand(8, 15, 15).contiguous()
    images = masks.unsqueeze(1).expand(8, 3, 15, 15).contiguous()
    _, out_m = BatchAugment(**NO_FLIPS, scale=[2.0, 2.0], scale_p=1.0)(images, masks, gen(12))
    rows, cols = (out_m // 16).long(), (out_m % 16).long()
    assert (rows.diff(dim=1) >= 0).all() and (cols.diff(dim=2) >= 0).all()
    assert (rows.diff(dim=2) == 0).all() and (cols.diff(dim=1) == 0).all()
    span_r = rows.amax((1, 2)) - rows.amin((1, 2))
    span_c = cols.amax((1, 2)) - cols.amin((1, 2))
    assert ((span_r >= 6) & (span_r <= 8)).all() and ((span_c >= 6) & (span_c <= 8)).all()
    assert len(set(rows.amin((1, 2)).tolist())) > 2  # random crop positions


def test_zoom_one_is_exact_identity_and_unchosen_samples_are_untouched():
    images = torch.randint(0, 256, (8, 3, 17, 23), dtype=torch.uint8, generator=gen(13))
    masks = torch.randint(0, 256, (8, 17, 23), dtype=torch.uint8, generator=gen(14))
    i, m = BatchAugment(**NO_FLIPS, scale=[1.0, 1.0], scale_p=1.0)(images, masks, gen(15))
    assert torch.equal(i, images) and torch.equal(m, masks)

    images, masks = images.repeat(8, 1, 1, 1), masks.repeat(8, 1, 1)
    i, m = BatchAugment(**NO_FLIPS, scale=[0.7, 0.8], scale_p=0.5)(images, masks, gen(16))
    changed = (m != masks).flatten(1).any(1)
    assert 16 < int(changed.sum()) < 48
    assert torch.equal(i[~changed], images[~changed])
    assert torch.equal((i != images).flatten(1).any(1), changed)


def test_zoom_is_per_sample_and_deterministic():
    images = torch.full((16, 3, 24, 24), 120, dtype=torch.uint8)
    masks = torch.ones((16, 24, 24), dtype=torch.uint8)
    aug = BatchAugment(scale=[0.5, 0.95], scale_p=1.0, colour={"brightness": 0.2})
    a = aug(images, masks, gen(17))
    b = aug(images, masks, gen(17))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    valid = (a[1] != 255).flatten(1).sum(1)
    assert (valid < 24 * 24).all() and len(set(valid.tolist())) > 8  # each sample its own zoom

    # Resumable: a generator restored to a saved state draws what the unbroken one did.
    g = gen(18)
    aug(images, masks, g)
    state = g.get_state()
    second = aug(images, masks, g)
    g2 = torch.Generator()
    g2.set_state(state)
    again = aug(images, masks, g2)
    assert torch.equal(second[0], again[0]) and torch.equal(second[1], again[1])


# -- colour ---------------------------------------------------------------------------------------
def test_colour_changes_images_per_sample_and_never_masks():
    images = torch.randint(30, 220, (16, 3, 12, 12), dtype=torch.uint8, generator=gen(19))
    masks = torch.randint(0, 256, (16, 12, 12), dtype=torch.uint8, generator=gen(20))
    colour = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1}
    i, m = BatchAugment(**NO_FLIPS, colour=colour)(images, masks, gen(21))
    assert torch.equal(m, masks)
    assert i.dtype == torch.uint8 and i.shape == images.shape
    assert (i != images).flatten(1).any(1).all()
    ratio = i.float().mean((1, 2, 3)) / images.float().mean((1, 2, 3))
    assert ratio.max() - ratio.min() > 0.1  # drawn per sample

    # The same flips and zoom with and without colour: masks identical (colour draws come last).
    geo = dict(hflip=0.5, vflip=0.5, rot90=0.5, scale=[0.7, 1.3], scale_p=0.5)
    _, m1 = BatchAugment(**geo)(images, masks, gen(22))
    _, m2 = BatchAugment(**geo, colour=colour)(images, masks, gen(22))
    assert torch.equal(m1, m2)


def test_brightness_stays_within_its_factor_range_and_clamps():
    images = torch.full((32, 3, 8, 8), 100, dtype=torch.uint8)
    masks = torch.zeros((32, 8, 8), dtype=torch.uint8)
    i, _ = BatchAugment(**NO_FLIPS, colour={"brightness": 0.2})(images, masks, gen(23))
    assert i.min() >= 80 and i.max() <= 120
    per_sample = i.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()  # one factor per sample, the whole image
    assert per_sample[:, 0].max() - per_sample[:, 0].min() > 20
    # Contrast, saturation and hue leave a constant grey image alone:
    grey = {"contrast": 0.5, "saturation": 0.5, "hue": 0.5}
    i, _ = BatchAugment(**NO_FLIPS, colour=grey)(images, masks, gen(24))
    assert ((i.int() - 100).abs() <= 1).all()
    i, _ = BatchAugment(**NO_FLIPS, colour={"brightness": [2.0, 2.0]})(images + 100, masks, gen(25))
    assert (i == 255).all()
    i, _ = BatchAugment(**NO_FLIPS, colour={"brightness": [0.0, 0.0]})(images, masks, gen(25))
    assert (i == 0).all()


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


@pytest.mark.parametrize(
    "key, factor, reference",
    [  # torchvision's formulas (adjust_brightness / adjust_contrast / adjust_saturation), written out
        ("brightness", 1.3, lambda x, f: x * f),
        ("contrast", 0.6, lambda x, f: f * x + (1 - f) * _grey(x).mean((1, 2, 3), keepdim=True)),
        ("saturation", 1.5, lambda x, f: f * x + (1 - f) * _grey(x)),
    ],
)
def test_single_factor_matches_torchvision_formula(key, factor, reference):
    images = torch.randint(40, 180, (4, 3, 10, 10), dtype=torch.uint8, generator=gen(26))
    masks = torch.zeros((4, 10, 10), dtype=torch.uint8)
    i, _ = BatchAugment(**NO_FLIPS, colour={key: [factor, factor]})(images, masks, gen(27))
    expected = reference(images.float(), factor).round().clamp(0, 255)
    assert (i.float() - expected).abs().max() <= 1


def test_hue_rotates_colour_keeps_grey_and_luma():
    red = torch.tensor([200, 100, 100], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    masks = torch.zeros((2, 4, 4), dtype=torch.uint8)
    i, _ = BatchAugment(**NO_FLIPS, colour={"hue": [0.5, 0.5]})(red, masks, gen(28))
    r, g, b = i[0, :, 0, 0].tolist()
    assert r < g and r < b and abs(g - b) <= 2  # half a turn: red -> cyan
    assert abs(_grey(i.float()) - _grey(red.float())).max() <= 2  # luma kept
    i, _ = BatchAugment(**NO_FLIPS, colour={"hue": [0.0, 0.0], "brightness": [1.0, 1.0]})(red, masks, gen(28))
    assert torch.equal(i, red)  # identity factors are exactly the identity


def test_zoom_and_colour_reach_exactly_the_rows_drawn_for_them():
    """Draw layout: rand((3,B)) flips, rand((4,B)) zoom (row 0 picks), rand((5,B)) colour (row 0 picks)."""
    images = torch.full((64, 3, 16, 16), 100, dtype=torch.uint8)
    masks = torch.zeros((64, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(**NO_FLIPS, scale=[0.5, 0.5], scale_p=0.5, colour={"brightness": [1.5, 1.5]}, colour_p=0.5)
    i, m = aug(images, masks, gen(30))
    g = gen(30)
    torch.rand((3, 64), generator=g)
    zoom = torch.rand((4, 64), generator=g, dtype=torch.float64)[0] < 0.5
    colour = torch.rand((5, 64), generator=g, dtype=torch.float64)[0] < 0.5
    assert {(a, b) for a, b in zip(zoom.tolist(), colour.tolist())} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert torch.equal((m == 255).flatten(1).any(1), zoom)  # zoomed out: a border from outside
    assert (m[~zoom] == 0).all()
    valid = (m == 0).unsqueeze(1).expand_as(i)
    inner = stable(i).unsqueeze(1).expand_as(i) & valid
    expected = torch.where(colour, 150, 100).view(-1, 1, 1, 1).expand_as(i)
    assert torch.equal(i[inner], expected[inner].to(torch.uint8))
    assert (inner.flatten(1).sum(1) > 0).all()
    assert torch.equal(i[~zoom & ~colour], images[~zoom & ~colour])  # untouched rows: exact


# -- settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hflip": 1.5}, "probability"),
        ({"vflip": -0.1}, "probability"),
        ({"rot90": True}, "probability"),
        ({"scale_p": "0.5"}, "probability"),
        ({"scale": [1.25, 0.75]}, "min 1.25 > max 0.75"),
        ({"scale": [0.0, 1.0]}, "> 0"),
        ({"scale": [-1.0, 1.0]}, "> 0"),
        ({"scale": [1.0]}, "pair"),
        ({"scale": 1.2}, "pair"),
        ({"colour": {"brightnes": 0.2}}, "unknown keys"),
        ({"colour": {"brightness": -0.2}}, "brightness"),
        ({"colour": {"hue": 0.7}}, "hue"),
        ({"colour": {"saturation": [-0.5, 1.0]}}, ">= 0"),
        ({"colour": 0.2}, "mapping"),
    ],
)
def test_bad_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchAugment(**kwargs)


def test_settings_round_trip_and_serialise():
    aug = BatchAugment.from_config({"hflip": 0.5, "scale": (0.75, 1.25), "colour": {"brightness": 0.2, "hue": 0.05}})
    d = aug.to_dict()
    assert d["scale"] == [0.75, 1.25] and d["scale_p"] == 0.5
    assert d["colour"]["brightness"] == [0.8, 1.2] and d["colour"]["hue"] == [-0.05, 0.05]
    assert d["colour"]["contrast"] == [1.0, 1.0]
    assert BatchAugment(**d) == aug and aug.describe() == d
    json.dumps(vars(aug))  # what the datamodule writes into summary.json
    assert BatchAugment().to_dict()["scale"] is None and BatchAugment().colour is None
    with pytest.raises(ValueError, match="unknown keys"):
        BatchAugment.from_config({"hflip": 0.5, "zoom": [1, 2]})
    with pytest.raises(TypeError, match="uint8"):
        BatchAugment()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8), gen(0))


def testzoom_grid_is_affine_grid():
    """The zoom grid is built elementwise (no matmul, so no TF32 on a GPU) but is exactly what affine_grid gives."""
    from poc59.data.augment import zoom_grid

    theta = torch.zeros(5, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.linspace(0.5, 1.5, 5)
    theta[:, :, 2] = torch.rand(5, 2, generator=gen(31)) - 0.5
    expected = torch.nn.functional.affine_grid(theta, [5, 3, 7, 11], align_corners=False)
    assert torch.allclose(zoom_grid(theta, 7, 11), expected, atol=1e-6)
