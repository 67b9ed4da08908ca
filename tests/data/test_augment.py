import torch

from poc59.data.augment import FlipRotate


def test_mask_moves_with_image_and_ignore_stays():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    masks = images[:, 0] // 16  # a mask derived from the image: alignment is checkable pixel by pixel
    masks[:, 0, :3] = 255
    out_i, out_m = FlipRotate(hflip=0.5, vflip=0.5, rot90=0.5)(images, masks, torch.Generator().manual_seed(1))
    ignore = out_m == 255
    assert ignore.sum() == 64 * 3
    assert torch.equal(out_m[~ignore], (out_i[:, 0] // 16)[~ignore])
    changed = (out_i != images).flatten(1).any(1)
    assert 20 < int(changed.sum()) < 64  # drawn per sample, not all or nothing


def test_each_transform_is_its_exact_operation_and_p0_is_identity():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    masks = images[:, 0].clone()
    g = torch.Generator().manual_seed(0)
    i, m = FlipRotate(hflip=1.0, vflip=0.0, rot90=0.0)(images, masks, g)
    assert torch.equal(i, images.flip(-1)) and torch.equal(m, masks.flip(-1))
    i, m = FlipRotate(hflip=0.0, vflip=1.0, rot90=0.0)(images, masks, g)
    assert torch.equal(i, images.flip(-2))
    i, m = FlipRotate(hflip=0.0, vflip=0.0, rot90=1.0)(images, masks, g)
    assert torch.equal(i, images.rot90(1, (-2, -1))) and torch.equal(m, masks.rot90(1, (-2, -1)))
    i, m = FlipRotate(0.0, 0.0, 0.0)(images, masks, g)
    assert torch.equal(i, images) and torch.equal(m, masks)
