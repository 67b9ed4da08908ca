"""Masks that cannot be right (issue 29 item 8): lossy mask formats, and a binary export stored as 0/255,
refused through the real data module on real files; `data.mask_remap`, the fix, read as training reads masks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import poc59.data.preload as preload_module
from helpers import make_folder, write_pair
from poc59.core.config import SettingError
from poc59.data.cache import cache_key
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.masks import IGNORE_SHARE, check_mask_remap, lossy_format, single_class_problem
from poc59.data.sources import DataError, discover_pairs
from poc59.prepare import main as prepare_main


def _dm(root: Path, tmp_path: Path, stage: str = "fit", **kw) -> SegmentationDataModule:
    kw.setdefault("image_size", 16)
    kw.setdefault("batch_size", 2)
    dm = SegmentationDataModule(root, cache_dir=tmp_path / "cache", **kw)
    dm.setup(stage)
    return dm


def _save_masks_as(root: Path, fmt: str, suffix: str, ids: list[str], **options) -> list[Path]:
    """Replace the PNG masks of `ids` by the same labels saved as `fmt` under `suffix`."""
    out = []
    for i in ids:
        png = root / "annotations" / f"{i}.png"
        labels = Image.open(png)
        png.unlink()
        out.append(root / "annotations" / f"{i}{suffix}")
        labels.save(out[-1], format=fmt, **options)
    return out


def test_jpeg_masks_are_refused_naming_every_file_and_the_fix(tmp_path):
    root = make_folder(tmp_path / "d", n=4, copies=0, size=(32, 32))
    jpegs = _save_masks_as(root, "JPEG", ".jpg", ["img001", "img002"], quality=90)
    with pytest.raises(DataError) as err:
        _dm(root, tmp_path)
    said = str(err.value)
    assert "2 mask(s) are stored in a lossy format" in said
    assert all(f"{p} (JPEG)" in said for p in jpegs)
    assert "Export the masks as PNG" in said


def test_lossy_masks_are_left_out_and_named_under_on_bad_file_skip(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n=5, copies=0, size=(32, 32))
    (jpeg,) = _save_masks_as(root, "JPEG", ".jpeg", ["img003"])
    dm = _dm(root, tmp_path, on_bad_file="skip")
    assert [s.id for s in dm.samples] == ["img000", "img001", "img002", "img004"]
    skipped = dm.describe()["skipped_files"]
    assert [s["id"] for s in skipped] == ["img003"] and skipped[0]["mask"] == str(jpeg)
    assert "JPEG mask: lossy" in skipped[0]["reason"] and "Skipping img003" in caplog.text


def test_the_format_is_read_from_the_header_not_the_name(tmp_path):
    labels = Image.fromarray(np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((8, 8), np.uint8)))
    cases = {
        "jpeg named png.png": ("JPEG", {}, "JPEG"),
        "lossy.webp": ("WEBP", {"lossless": False}, "lossy WebP"),
        "lossless.webp": ("WEBP", {"lossless": True}, None),
        "jpeg.tif": ("TIFF", {"compression": "jpeg"}, "JPEG-compressed TIFF"),
        "deflate.tif": ("TIFF", {"compression": "tiff_adobe_deflate"}, None),
        "plain.png": ("PNG", {}, None),
    }
    for name, (fmt, options, expected) in cases.items():
        path = tmp_path / name
        (labels.convert("RGB") if fmt in ("JPEG", "TIFF") and "jpeg" in name else labels).save(
            path, format=fmt, **options
        )
        assert lossy_format(path) == expected, name
    (tmp_path / "cut.webp").write_bytes((tmp_path / "lossy.webp").read_bytes()[:14])
    assert lossy_format(tmp_path / "cut.webp") is None  # unreadable: the preload says so in Pillow's words


def _binary_0_255(root: Path, n: int = 6, two_classes: bool = True) -> Path:
    """A binary segmentation export: background 0, the object (a crack) saved as 255."""
    rng = np.random.default_rng(3)
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[rng.integers(0, 28) :][:3, :] = 255  # a horizontal crack, 3 px of 32
        write_pair(root, f"crack{i}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mask)
    if two_classes:
        (root / "classes.json").write_text(json.dumps(["background", "crack"]))
    return root


def test_a_binary_set_stored_as_0_255_is_refused_before_the_decode_with_the_remap_as_fix(tmp_path, monkeypatch):
    root = _binary_0_255(tmp_path / "d")

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded the whole set before refusing it")

    monkeypatch.setattr(preload_module, "_decode_into_cache", no_decode)
    with pytest.raises(DataError) as err:
        _dm(root, tmp_path)
    said = str(err.value)
    assert "every labelled pixel of the masks is class 0 (background)" in said
    assert "binary mask stored as 0/255" in said and "data.mask_remap={255:1}" in said
    assert "classes.json" not in said  # the table already has the two classes
    monkeypatch.undo()
    dm = _dm(root, tmp_path, mask_remap={255: 1})  # the advice, followed
    counts = dm.label_counts().sum(0)
    assert counts[1] > 0 and counts[255] == 0 and dm.class_weights[1] > dm.class_weights[0]


def test_the_refusal_also_holds_on_a_warm_cache_and_names_the_class_table_when_it_lacks_the_class(tmp_path):
    root = _binary_0_255(tmp_path / "d", two_classes=False)  # ARTeFACT's 16 classes
    dm = _dm(root, tmp_path, stage="validate")  # scoring such images may be meant: a warning, and a cache
    assert dm.data.source == "decoded"
    with pytest.raises(DataError, match=r"data.mask_remap=\{255:1\}, with ROOT/classes.json listing two classes"):
        _dm(root, tmp_path)  # from the cache built above: the preload's label counts, no decode


def test_the_padding_of_policy_pad_is_not_taken_for_a_0_255_export(tmp_path):
    """Masks of one class and no 255 at all are no 0/255 export, though pad stores its canvas padding as 255."""
    root = tmp_path / "d"
    for i in range(5):
        write_pair(root, f"wide{i}", np.full((8, 32, 3), 9 * i, np.uint8), np.zeros((8, 32)))
    (root / "classes.json").write_text(json.dumps(["background", "crack"]))
    dm = _dm(root, tmp_path, policy="pad")
    assert dm.label_counts()[:, 255].sum() == 5 * (16 * 16 - 4 * 16)  # the padding, stored as ignore


def test_the_remap_is_part_of_the_cache_key_and_is_checked(tmp_path, caplog):
    root = _binary_0_255(tmp_path / "d")
    samples = discover_pairs(root)[0]
    plain = cache_key(samples, 16, "resize", None, 2, "error")
    assert plain == cache_key(samples, 16, "resize", None, 2, "error", {})  # caches without a remap keep their key
    assert cache_key(samples, 16, "resize", None, 2, "error", {255: 1}) != plain
    with caplog.at_level(logging.INFO):
        _dm(root, tmp_path, mask_remap={255: 1})
    assert "Mask values mapped as masks are read (data.mask_remap): 255 -> 1 (crack)" in caplog.text
    with pytest.raises(DataError, match=r"maps \{255: 7\} to labels that are not class ids 0..1"):
        _dm(root, tmp_path, mask_remap={255: 7})
    for bad in (5, {256: 1}, {255: -1}, {"x": 1}, {255: True}):
        with pytest.raises(SettingError, match="data.mask_remap="):
            check_mask_remap(bad)
    assert check_mask_remap({"255": "1"}) == {255: 1} and check_mask_remap(None) == {}


def test_the_threshold_catches_sparse_defects_and_names_only_sets_of_one_class():
    names = ["background", "crack"]
    totals = np.zeros(256, np.int64)
    totals[0], totals[255] = 1_000_000 - 300, 300  # defects on 0.03 % of the pixels, saved as 255
    assert IGNORE_SHARE <= 0.0003 and single_class_problem(totals, names, 255, "ROOT") is not None
    totals[255] = 50  # 0.005 %: nothing hints at a 0/255 export
    assert single_class_problem(totals, names, 255, "ROOT") is None
    totals[255], totals[1] = 300, 10  # a second class: a set to learn from, whatever 255 covers
    assert single_class_problem(totals, names, 255, "ROOT") is None


def test_prepare_refuses_a_remap_that_is_no_mapping_naming_the_key(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache"))
    root = _binary_0_255(tmp_path / "d")
    args = ["data=artefact", f"data.root={root}", "data.image_size=16", "encoder=tiny"]
    assert prepare_main([*args, "data.mask_remap=5"]) == 2
    assert "data.mask_remap=5: a mapping of stored mask values to labels" in caplog.text
    assert "Traceback" not in caplog.text
    assert prepare_main(args) == 2 and "data.mask_remap={255:1}" in caplog.text
    assert prepare_main([*args, "data.mask_remap={255:1}"]) == 0
