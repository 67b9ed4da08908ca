import json

import numpy as np
import pytest
import torch

from helpers import CRACKFOREST, make_folder, write_pair
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.sources import DataError
from poc59.prepare import main as prepare_main


def _dm(root, tmp_path, **kw):
    kw.setdefault("image_size", 16)
    kw.setdefault("batch_size", 4)
    dm = SegmentationDataModule(root, cache_dir=tmp_path / "cache", **kw)
    dm.setup("fit")
    return dm


def test_batches_come_from_the_training_side_only(tmp_path):
    dm = _dm(make_folder(tmp_path / "d", n=10, copies=2), tmp_path)
    train_ids = set(dm.split["train"])
    by_pixels = {bytes(dm.data.images[i].numpy()): s.id for i, s in enumerate(dm.samples)}
    seen = set()
    for images, masks in dm.train_dataloader():
        assert images.dtype == torch.uint8 and masks.dtype == torch.uint8
        seen |= {by_pixels[bytes(img.numpy())] for img in images}
    assert seen <= train_ids and len(seen) == len(train_ids) // 4 * 4
    val = [i for images, _ in dm.val_dataloader() for i in images]
    assert len(val) == len(dm.split["val"]) and all("_aug" not in i for i in dm.split["val"])


def test_split_file_reuses_the_same_images(tmp_path):
    root = make_folder(tmp_path / "d", n=10, copies=1)
    first = _dm(root, tmp_path, seed=1)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(first.split))
    second = _dm(root, tmp_path, seed=99, split_file=path)
    assert second.split == first.split
    assert _dm(root, tmp_path, seed=99).split != first.split


def test_without_stored_copies(tmp_path):
    dm = _dm(make_folder(tmp_path / "d", n=6, copies=3), tmp_path, use_aug_copies=False)
    assert len(dm.samples) == 6 and not any(s.is_copy for s in dm.samples)


def test_skipped_files_are_recorded(tmp_path):
    root = make_folder(tmp_path / "d", n=6, copies=0)
    (root / "images" / "img003.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="img003"):
        _dm(root, tmp_path)
    dm = _dm(root, tmp_path, on_bad_file="skip")
    skipped = dm.describe()["skipped_files"]
    assert [s["id"] for s in skipped] == ["img003"] and len(dm.samples) == 5


def test_crop_policy_trains_on_windows_and_validates_on_tiles(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for i in range(6):
        img = rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)  # under max_side: native pixels
        write_pair(root, f"im{i}", img, (img[:, :, 0] // 64).astype(np.uint8))
    dm = _dm(root, tmp_path, policy="crop", max_side=48, batch_size=3, val_fraction=0.34)
    assert dm.data.ragged and dm.data.sizes.tolist()[0] == [40, 44]  # native pixels, no canvas
    assert dm.data.images.numel() == 6 * 3 * 40 * 44 and dm.data.masks.numel() == 6 * 40 * 44
    for images, masks in dm.train_dataloader():
        assert images.shape[-2:] == (16, 16)
        valid = masks != 255
        assert torch.equal((images[:, 0] // 64)[valid], masks[valid].to(images.dtype))  # windows stay aligned
    tiles = [m for _, ms in dm.val_dataloader() for m in ms]
    val_pixels = sum(int((m != 255).sum()) for m in tiles)
    assert val_pixels == len(dm.split["val"]) * 40 * 44  # every content pixel scored exactly once


@pytest.mark.slow  # decodes CrackForest's 118 photographs twice: 14 s at a load of 8-10
def test_prepare_reports_real_crackforest(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache"))
    code = prepare_main(["data=artefact", f"data.root={CRACKFOREST}", "data.image_size=32", "encoder=tiny"])
    out = capsys.readouterr().out
    assert code == 0
    assert "background" in out and "crack" in out and "118 pairs" in out
    assert list((tmp_path / "cache" / "data").glob("preload-*/meta.json"))
    assert prepare_main(["data=artefact", f"data.root={tmp_path / 'missing'}", "encoder=tiny"]) == 2
    assert "Pixels per class at 32 px" in out
    monkeypatch.setenv("COLUMNS", "50")  # a narrow terminal: Rich shrinks columns, never the class names
    crop = ["data.policy=crop", "data.max_side=256", "data.image_size=64"]
    assert prepare_main(["data=artefact", f"data.root={CRACKFOREST}", "encoder=tiny", *crop]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "Pixels per class at native scale (long side up to 256 px; training windows 64 px)" in said
    assert "background" in said


def test_an_image_over_pillows_limit_is_refused_naming_the_setting_that_allows_it(tmp_path, monkeypatch):
    from PIL import Image

    from poc59.data.sources import DataError

    root = make_folder(tmp_path / "d", n=4, copies=0, size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40x40 image stands in for a 100 MP scan
    refused = SegmentationDataModule(root, image_size=16, batch_size=2, cache=False)
    with pytest.raises(
        DataError,
        match="over Pillow's decompression-bomb limit of 0 MP: if it is a real scan, set data.allow_large_images=true",
    ):
        refused.setup("fit")
    allowed = SegmentationDataModule(root, image_size=16, batch_size=2, cache=False, allow_large_images=True)
    allowed.setup("fit")
    assert allowed.data.images.shape[0] == 4
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted for the preload only


def test_files_without_their_partner_are_left_out_under_skip_and_named(tmp_path, caplog):
    from poc59.data.sources import DataError

    root = make_folder(tmp_path / "d", n=5, copies=0, size=(16, 16))
    (root / "annotations" / "img004.png").unlink()  # an image without its mask
    write_pair(tmp_path / "other", "lonely", np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16)))
    (tmp_path / "other" / "annotations" / "lonely.png").rename(root / "annotations" / "lonely.png")  # a lone mask
    with pytest.raises(DataError, match="data.on_bad_file=skip leaves them out"):
        SegmentationDataModule(root, image_size=16, batch_size=2, cache=False).setup("fit")
    dm = SegmentationDataModule(root, image_size=16, batch_size=2, cache=False, on_bad_file="skip")
    dm.setup("fit")
    assert len(dm.samples) == 4
    skipped = {s["id"]: s["reason"] for s in dm.describe()["skipped_files"]}  # what summary.json records
    assert skipped == {"img004": "an image without its mask", "lonely": "a mask without its image"}
    assert "Skipping img004: an image without its mask" in caplog.text


@pytest.mark.slow  # four prepare runs: 23 s at a load of 8-10
def test_prepare_names_a_metadata_file_it_cannot_read_and_a_split_from_other_data_keeps_that_file(
    tmp_path, caplog, monkeypatch
):
    """prepare exits 2 naming metadata.csv (a UTF-16 file without its BOM); a split.json of another data set is
    refused with advice that leaves that file alone, and following the advice works."""
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "d", n=6, copies=0, size=(16, 16))
    (root / "metadata.csv").write_bytes("id,material\nimg000,film\n".encode("utf-16-le"))
    args = ["data=artefact", f"data.root={root}", "data.image_size=16", "encoder=tiny"]
    assert prepare_main(args) == 2
    assert f"{root / 'metadata.csv'} is not a CSV text file" in caplog.text
    (root / "metadata.csv").write_text("id,material\nimg000,film\n", encoding="utf-16")  # with its BOM: read
    assert prepare_main(args) == 0
    other = make_folder(tmp_path / "other", n=6, copies=0, size=(16, 16), seed=1)
    (other / "images" / "img005.png").rename(other / "images" / "elsewhere.png")
    (other / "annotations" / "img005.png").rename(other / "annotations" / "elsewhere.png")
    split = tmp_path / "run" / "split.json"
    split.parent.mkdir()
    split.write_text(json.dumps(_dm(other, tmp_path).split))
    before = split.read_bytes()
    caplog.clear()
    assert prepare_main([*args, f"data.split_file={split}"]) == 2
    said = " ".join(caplog.text.split())
    assert "not in the data: elsewhere" in said and "delete" not in said
    assert "or set data.split_file=null for a new split (the file is left as it is" in said
    assert prepare_main([*args, "data.split_file=null"]) == 0  # the advice, followed
    assert split.read_bytes() == before


def test_a_resumed_runs_own_split_that_no_longer_fits_the_data_advises_no_split_file_key(tmp_path):
    """training.run gives a resumed run its own split.json (data.split_file unset): when the images changed,
    the advice is the data or a new run, never a key the resume would override or deleting the run's record."""
    root = make_folder(tmp_path / "d", n=6, copies=0, size=(16, 16))
    split = tmp_path / "run" / "split.json"
    split.parent.mkdir()
    split.write_text(json.dumps(_dm(root, tmp_path).split))
    (root / "images" / "img005.png").rename(root / "images" / "new.png")
    (root / "annotations" / "img005.png").rename(root / "annotations" / "new.png")
    dm = SegmentationDataModule(root, image_size=16, batch_size=4, cache_dir=tmp_path / "cache")
    dm.split_file = split  # as training.run does on resume
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    said = str(err.value)
    assert f"the run was trained on other images than {root} holds now" in said and "resume=never" in said
    assert "data.split_file" not in said and "delete" not in said
