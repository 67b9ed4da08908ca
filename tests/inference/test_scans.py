"""Reading scans: orientation, modes, 16-bit, ICC to sRGB, the bomb limit, and strips equal to whole decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from poc59.inference.scans import ScanError, open_scan, read_object_mask, scan_size


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image: gradients plus noise, so the PNG encoder uses every row filter (Sub, Up, Avg, Paeth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 / w, yy * 200 / h, (xx * yy) % 97], -1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _whole(path, **kw) -> np.ndarray:
    scan = open_scan(path, **kw)
    assert not scan.streamed
    return scan.whole()


def _streamed(path, step: int = 23, **kw) -> np.ndarray:
    """Rows read top to bottom in overlapping requests, as the sliding window reads them."""
    scan = open_scan(path, max_bytes=1, **kw)
    assert scan.streamed
    out = np.zeros((scan.height, scan.width, 3), np.uint8)
    for y in range(0, scan.height, step):
        rows = scan.rows(y, y + 2 * step)  # overlaps the next request, like tile rows do
        out[y : y + len(rows)] = rows
    scan.close()
    return out


def test_exif_orientation_is_applied(tmp_path):
    pixels = _smooth(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif)
    expect = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.png")).convert("RGB"))
    assert expect.shape == (40, 20, 3) and np.array_equal(expect, np.rot90(pixels, -1))
    assert scan_size(tmp_path / "r.png") == (20, 40)
    assert np.array_equal(_whole(tmp_path / "r.png"), expect)
    rotated = open_scan(tmp_path / "r.png", max_bytes=1)  # cannot be streamed: decoded whole, still upright
    assert not rotated.streamed and np.array_equal(rotated.whole(), expect)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_grayscale_alpha_and_palette_become_rgb_whole_and_in_strips(tmp_path, mode):
    rgb = _smooth(61, 45)
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, np.arange(61 * 45).reshape(61, 45) % 256]).astype(np.uint8), "RGBA")
    else:
        img = img.convert(mode)
    img.save(tmp_path / "x.png", transparency=0) if mode == "P" else img.save(tmp_path / "x.png")
    expect = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))
    if mode == "RGBA":
        assert np.array_equal(expect, rgb)  # alpha dropped, colours kept (as training reads them)
    if mode in ("L", "LA"):
        assert (expect[..., 0] == expect[..., 2]).all()
    assert np.array_equal(_whole(tmp_path / "x.png"), expect)
    assert np.array_equal(_streamed(tmp_path / "x.png"), expect)


def test_16_bit_is_scaled_by_its_peak_like_training_whole_and_in_strips(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1000, (50, 70)).astype(np.uint16)
    values[3, 4] = 1000
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    gray = np.round(values.astype(np.float64) * 255 / 1000).astype(np.uint8)
    expect = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(_whole(tmp_path / "g16.png"), expect)
    assert np.array_equal(_streamed(tmp_path / "g16.png", step=7), expect)


def _swapped_primaries_profile() -> bytes:
    """An RGB ICC profile that is sRGB with the red and blue primaries swapped (and another name)."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = int.from_bytes(data[128:132], "big")
    tags = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    r, b = tags[b"rXYZ"], tags[b"bXYZ"]
    data[r + 4 : r + 12], data[b + 4 : b + 12] = data[b + 4 : b + 12], data[r + 4 : r + 12]
    return bytes(data).replace("sRGB".encode("utf-16-be"), "swap".encode("utf-16-be")).replace(b"sRGB", b"swap")


def test_icc_profile_is_converted_to_srgb(tmp_path):
    icc = _swapped_primaries_profile()
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[..., 0] = 255  # stored "red" is the profile's blue primary
    Image.fromarray(pixels).save(tmp_path / "icc.png", icc_profile=icc)
    got = _whole(tmp_path / "icc.png")
    assert got[0, 0, 2] > 200 and got[0, 0, 0] < 60  # shown as blue in sRGB
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    expect = np.asarray(ImageCms.profileToProfile(Image.fromarray(pixels), src, ImageCms.createProfile("sRGB")))
    assert np.array_equal(got, expect)
    assert np.array_equal(_streamed(tmp_path / "icc.png", step=3), expect)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    assert np.array_equal(_whole(tmp_path / "plain.png"), pixels)  # no profile: as stored


def test_decompression_bomb_limit_is_lifted_only_explicitly(tmp_path, monkeypatch):
    Image.fromarray(_smooth(40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ScanError, match=r"big.png: 40 x 40 = 1,600 pixels exceeds .* allow_large_images=true"):
        open_scan(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: Pillow's own error, same advice
    with pytest.raises(ScanError, match="allow_large_images=true"):
        open_scan(tmp_path / "big.png")
    assert open_scan(tmp_path / "big.png", allow_large_images=True).whole().shape == (40, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 500  # lifted for that file only


def test_uncompressed_tiff_and_ppm_are_read_in_strips(tmp_path):
    rgb = _smooth(77, 31)
    for name in ("x.tif", "x.ppm"):
        Image.fromarray(rgb).save(tmp_path / name)
        assert np.array_equal(_streamed(tmp_path / name, step=10), rgb)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # tifffile decodes it a strip at a time
    assert np.array_equal(_streamed(tmp_path / "lzw.tif", step=10), rgb)  # LZW streams too (poc59.data.regions)


def test_strips_are_read_top_to_bottom_and_bad_files_are_named(tmp_path):
    Image.fromarray(_smooth(100, 20)).save(tmp_path / "a.png")
    scan = open_scan(tmp_path / "a.png", max_bytes=1)
    scan.rows(40, 60)
    assert scan.rows(40, 50).shape == (10, 20, 3)  # the last request's rows stay available
    with pytest.raises(ValueError, match="top to bottom"):
        scan.rows(0, 10)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cut = open_scan(tmp_path / "cut.png", max_bytes=1)
    with pytest.raises(ScanError, match="cut.png.*truncated"):
        cut.rows(0, 100)
    with pytest.raises(ScanError, match="cut.png"):
        open_scan(tmp_path / "cut.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ScanError, match="cannot read .*junk.png"):
        open_scan(tmp_path / "junk.png")


def test_object_mask(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:8, 3:9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = read_object_mask(tmp_path / "m.png", (12, 10))
    assert got.dtype == bool and got.sum() == 36 and got[2, 3] and not got[0, 0]
    with pytest.raises(ScanError, match="m.png is 12 x 10 but its image is 10 x 12"):
        read_object_mask(tmp_path / "m.png", (10, 12))
