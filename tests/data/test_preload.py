import numpy as np
import pytest
import torch
from PIL import Image

from poc59.data.preload import load_pair, preload
from poc59.data.sources import DataError, discover

from helpers import CRACKFOREST, make_folder, write_pair


def test_preload_real_jpegs_into_uint8_tensors():
    samples = discover(CRACKFOREST)[:6]
    data = preload(samples, 64, num_classes=2)
    assert data.images.dtype == torch.uint8 and data.images.shape == (6, 3, 64, 64)
    assert data.masks.dtype == torch.uint8 and data.masks.shape == (6, 64, 64)
    assert data.nbytes == 6 * 64 * 64 * 4
    # the same pixels as decoding one file by hand
    ref = np.array(Image.open(samples[3].image).convert("RGB").resize((64, 64), Image.BILINEAR, reducing_gap=None))
    assert torch.equal(data.images[3], torch.from_numpy(ref).permute(2, 0, 1))
    assert set(data.masks.unique().tolist()) <= {0, 1}


def test_ignore_label_survives_resizing_and_is_never_remapped(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    mask[10:20, 20:30] = 15
    write_pair(tmp_path, "a", np.full((32, 32, 3), 100, np.uint8), mask)
    _, lab = load_pair(discover(tmp_path)[0], 16, num_classes=16, ignore_index=255)
    assert set(np.unique(lab).tolist()) == {0, 15, 255}
    assert (lab[:, :8] == 255).all()


def test_label_out_of_range_names_file_and_values(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0], mask[1, 1] = 16, 200
    write_pair(tmp_path, "bad", np.zeros((16, 16, 3), np.uint8), mask)
    with pytest.raises(DataError) as err:
        preload(discover(tmp_path), 8, num_classes=16)
    assert "bad.png" in str(err.value) and "[16, 200]" in str(err.value)


def test_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "m", np.zeros((16, 20, 3), np.uint8), np.zeros((16, 16)))
    with pytest.raises(DataError, match="size mismatch") as err:
        preload(discover(tmp_path), 8, num_classes=2)
    assert "images/m.png" in str(err.value) and "annotations/m.png" in str(err.value)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    make_folder(tmp_path, n=2, copies=0)
    path = tmp_path / "images" / "img001.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="cannot read .*img001.png"):
        preload(discover(tmp_path), 8, num_classes=4)


def test_colour_mask_is_refused_and_palette_mask_read_as_indices(tmp_path):
    write_pair(tmp_path, "c", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "annotations" / "c.png")
    with pytest.raises(DataError, match="not a single-channel label map"):
        preload(discover(tmp_path), 8, num_classes=2)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8).repeat(4, 0).repeat(4, 1), "P")
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    pal.save(tmp_path / "annotations" / "c.png")
    data = preload(discover(tmp_path), 8, num_classes=2)
    assert set(data.masks.unique().tolist()) == {0, 1}


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    arr = {"L": np.full((8, 8), 7, np.uint8), "RGBA": np.full((8, 8, 4), 9, np.uint8), "I;16": np.full((8, 8), 4000, np.uint16)}[mode]
    (tmp_path / "images").mkdir()
    Image.fromarray(arr).save(tmp_path / "images" / "x.png")  # uint16 is written as a 16-bit PNG
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "annotations" / "x.png")
    data = preload(discover(tmp_path), 8, num_classes=2)
    assert data.images.shape == (1, 3, 8, 8)
    assert data.images.float().std() == 0 and data.images.max() > 0
