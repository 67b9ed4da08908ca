"""python -m poc59.predict end to end: a real tiny checkpoint trained on CrackForest, real photographs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CRACKFOREST
from poc59.artifacts.load import load_model
from poc59.inference.image import predict_label_map
from poc59.inference.scans import open_scan
from poc59.predict import main, parse_args

IMAGES = ["001", "002"]


@pytest.fixture(scope="module")
def ckpt(crop_ckpt: Path) -> Path:
    """The session's tiny native-scale (crop) model (tests/conftest.py `crop_ckpt`), under this module's name."""
    return crop_ckpt


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for stem in IMAGES:
        shutil.copy(CRACKFOREST / "images" / f"{stem}.jpg", folder)
    return folder


def test_a_folder_of_real_photographs_with_one_unreadable_file(ckpt, scans, tmp_path):
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (scans / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "batch_size=4"])
    assert code == 2  # one image could not be read (the input): reported, the others predicted
    model = load_model(ckpt)
    assert model.geometry["policy"] == "crop" and model.classes.names == ("background", "crack")
    stats = json.loads((out / "statistics.json").read_text())
    assert [f["image"] for f in stats["failed"]] == [str(scans / "broken.png")]
    assert "cannot read" in stats["failed"][0]["reason"]
    assert stats["predicted"] == len(IMAGES) and [r["image"] for r in stats["images"]] == [
        str(scans / f"{s}.jpg") for s in IMAGES
    ]
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert [r["image"] for r in rows] == [str(scans / f"{s}.jpg") for s in IMAGES]
    for stem, row, js in zip(IMAGES, rows, stats["images"]):
        labels_png = Image.open(out / f"{stem}_labels.png")
        assert labels_png.mode == "P" and labels_png.size == (480, 320)
        palette = labels_png.getpalette()
        assert [tuple(palette[3 * c : 3 * c + 3]) for c in range(2)] == model.classes.rgb()
        labels = np.asarray(labels_png)
        pixels = open_scan(scans / f"{stem}.jpg").whole()
        if stem == IMAGES[0]:  # the CLI's streamed prediction is the library's prediction of the same pixels
            assert np.array_equal(labels, predict_label_map(model, pixels, batch_size=4))
        # statistics: a hand count of the label map, percents of the image summing to 100
        counts = np.bincount(labels.reshape(-1), minlength=2)
        for c, name in enumerate(model.classes.names):
            assert js["classes"][name]["pixels"] == int(counts[c]) == int(row[f"{name} pixels"])
            assert js["classes"][name]["percent"] == pytest.approx(100 * counts[c] / labels.size)
        assert sum(v["percent"] for v in js["classes"].values()) == pytest.approx(100.0)
        assert js["reference"] == "image" and js["reference_pixels"] == 480 * 320
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.width == 480 and overlay.height > 320  # legend panel below
        shown = np.asarray(overlay)[:320]
        clean = labels == 0
        assert np.array_equal(shown[clean], pixels[clean])  # Clean pixels are the photograph itself


def test_object_mask_statistics_and_tta(ckpt, scans, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, stem in enumerate(IMAGES):
        m = np.zeros((320, 480), np.uint8)
        m[40 + i : 300, 60 : 400 - i] = 255
        Image.fromarray(m).save(masks / f"{stem}.png")
    out = tmp_path / "out"
    assert (
        main(
            [f"ckpt={ckpt}", f"input={scans}/*.jpg", f"output={out}", f"object_mask={masks}", "tta=true", "overlap=0.3"]
        )
        == 0
    )
    stats = json.loads((out / "statistics.json").read_text())
    model = load_model(ckpt)
    assert len(stats["images"]) == 2
    for i, (stem, js) in enumerate(zip(IMAGES, stats["images"])):
        inside = np.asarray(Image.open(masks / f"{stem}.png")) > 0
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert (labels[~inside] == 255).all()  # outside the object: the ignore label
        if i == 0:
            expect = predict_label_map(model, open_scan(scans / f"{stem}.jpg").whole(), overlap=0.3, tta=True)
            assert np.array_equal(labels[inside], expect[inside])
        assert js["reference"] == "object mask" and js["reference_pixels"] == int(inside.sum())
        assert [v["pixels"] for v in js["classes"].values()] == np.bincount(labels[inside], minlength=2).tolist()
        assert sum(v["percent"] for v in js["classes"].values()) == pytest.approx(100.0)
    assert stats["settings"]["tta"] is True and stats["failed"] == []


def test_refusals_exit_2_before_reading_images(ckpt, scans, tmp_path, caplog):
    out = tmp_path / "out"
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps(["background", "crack", "pothole"]))
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", f"classes={wrong}"]) == 2
    assert "predicts ['background', 'crack'] but classes= asks for ['background', 'crack', 'pothole']" in caplog.text
    recoloured = tmp_path / "recoloured.json"
    recoloured.write_text(json.dumps({"names": ["background", "crack"], "palette": ["#000000", "#FF0000"]}))
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", f"classes={recoloured}"]) == 2
    assert "palette differs" in caplog.text
    assert not out.exists()
    assert (
        main([f"ckpt={ckpt}", f"input={scans / '001.jpg'}", f"output={out}", f"classes={CRACKFOREST / 'classes.json'}"])
        == 0
    )
    assert main([f"ckpt={ckpt}", f"input={scans / '001.jpg'}", f"output={out}"]) == 2  # outputs exist
    assert "pass overwrite=true" in caplog.text
    assert main([f"ckpt={ckpt}", f"input={scans / '001.jpg'}", f"output={out}", "overwrite=true", "overlay=false"]) == 0
    assert main([f"ckpt={tmp_path / 'nope.ckpt'}", f"input={scans}", f"output={tmp_path / 'other'}"]) == 2
    assert "no such checkpoint" in caplog.text
    assert main([f"ckpt={ckpt}", f"input={tmp_path / 'none' / '*.png'}", f"output={out}"]) == 2
    with pytest.raises(ValueError, match="unknown argument 'tiles=3'"):
        parse_args(["ckpt=a", "input=b", "output=c", "tiles=3"])
    with pytest.raises(ValueError, match="tta=maybe: expected true or false"):
        parse_args(["ckpt=a", "input=b", "output=c", "tta=maybe"])
    with pytest.raises(ValueError, match="missing output="):
        parse_args(["ckpt=a", "input=b"])


def test_a_scan_that_runs_out_of_gpu_memory_is_reported_and_the_others_go_on(ckpt, scans, tmp_path, monkeypatch):
    import torch

    import poc59.inference.run as predict

    real = predict.logit_bands

    seen = []

    def first_scan_too_big(model, scan, *args, **kwargs):
        seen.append(scan.path)
        if scan.path.stem == IMAGES[0]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, scan, *args, **kwargs)

    monkeypatch.setattr(predict, "logit_bands", first_scan_too_big)
    out = tmp_path / "out"
    code = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "batch_size=4"])
    assert code == 2 and len(seen) == len(IMAGES)
    stats = json.loads((out / "statistics.json").read_text())
    assert [f["image"] for f in stats["failed"]] == [str(scans / f"{IMAGES[0]}.jpg")]
    assert "out of GPU memory" in stats["failed"][0]["reason"] and "max_memory_mb=" in stats["failed"][0]["reason"]
    assert stats["predicted"] == len(IMAGES) - 1 and (out / f"{IMAGES[1]}_labels.png").exists()


@pytest.mark.slow  # a batch read in strips, then the label map again: 9 s at a load of 8-10
def test_a_small_budget_reads_png_in_strips_says_what_is_decoded_whole_and_names_a_cut_file(
    ckpt, scans, tmp_path, caplog
):
    """max_memory_mb below one image: a PNG is read in strips (the same labels as whole), a JPEG is decoded
    whole with a log line saying why, and a PNG cut short part-way is named and leaves no output."""
    pixels = np.asarray(Image.open(CRACKFOREST / "images" / "003.jpg").convert("RGB"))
    Image.fromarray(pixels).save(scans / "strips.png")
    data = (scans / "strips.png").read_bytes()
    (scans / "cut.png").write_bytes(data[: len(data) * 3 // 5])  # rows decode, then the file ends
    out = tmp_path / "out"
    caplog.set_level("INFO")
    code = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "batch_size=4", "max_memory_mb=0.01"])
    assert code == 2
    said = " ".join(caplog.text.split())
    for stem in IMAGES:
        assert f"{scans / stem}.jpg: decoding it whole" in said and "JPEG RGB cannot be read in strips" in said
    assert f"{scans / 'strips.png'}: decoding it whole" not in said
    stats = json.loads((out / "statistics.json").read_text())
    assert [f["image"] for f in stats["failed"]] == [str(scans / "cut.png")]
    assert "truncated" in stats["failed"][0]["reason"]
    assert not list(out.glob("cut_*")) and not list(out.glob(".*"))  # nothing half-written
    labels = np.asarray(Image.open(out / "strips_labels.png"))
    assert np.array_equal(labels, predict_label_map(load_model(ckpt), pixels, batch_size=4))


def _outputs(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow  # two predict batches of real photographs: 13 s at a load of 8-10
def test_overwrite_replaces_the_earlier_batch_and_nothing_else(ckpt, scans, tmp_path):
    """The folder says what this batch produced: the earlier batch's maps go (a scan that fails now keeps no
    old map), files no batch recorded stay."""
    shutil.copy(CRACKFOREST / "images" / "003.jpg", scans)
    out = tmp_path / "out"
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}"]) == 0
    # per scan: labels, overlay, and the IIIF damage layer, annotations and manifest
    assert len(json.loads((out / "statistics.json").read_text())["outputs"]) == 2 + 3 * 5
    (out / "notes.txt").write_text("mine")
    (out / "my_map.png").write_bytes((out / "003_labels.png").read_bytes())
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(scans / "001.jpg", second)
    (second / "002.jpg").write_bytes(b"no longer a JPEG")  # fails now: its earlier map must not stay
    assert main([f"ckpt={ckpt}", f"input={second}", f"output={out}", "overwrite=true"]) == 2
    mine = ["my_map.png", "notes.txt"]
    produced = ["001.annotations.json", "001.manifest.json", "001_damage.png", "001_labels.png", "001_overlay.png"]
    produced += ["statistics.csv", "statistics.json"]
    assert _outputs(out) == sorted(produced + mine)
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["finished"] is True and sorted(stats["outputs"]) == produced
    assert [r["image"] for r in stats["images"]] == [str(second / "001.jpg")]
    assert [f["image"] for f in stats["failed"]] == [str(second / "002.jpg")]
    assert [r["image"] for r in csv.DictReader((out / "statistics.csv").open())] == [str(second / "001.jpg")]


def test_overwrite_never_replaces_a_file_no_batch_recorded(ckpt, scans, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "001_labels.png").write_bytes(b"the user's own map")
    for overwrite in ([], ["overwrite=true"]):  # the first message's advice never leads to a second refusal
        caplog.clear()
        assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", *overwrite]) == 2
        said = caplog.messages[-1]
        assert said.startswith(f"{out / '001_labels.png'} exists and no earlier predict batch recorded it")
        assert "pass another output=" in said and "pass overwrite=true" not in said
    assert _outputs(out) == ["001_labels.png"] and (out / "001_labels.png").read_bytes() == b"the user's own map"


@pytest.mark.slow  # five predict batches of real photographs: 36 s at a load of 8-10
def test_an_output_folder_inside_the_input_never_reads_its_maps_as_scans(ckpt, scans, tmp_path, caplog):
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={scans}"]) == 0
    caplog.set_level("WARNING")
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={scans}", "overwrite=true"]) == 0
    stats = json.loads((scans / "statistics.json").read_text())
    assert [r["image"] for r in stats["images"]] == [str(scans / f"{s}.jpg") for s in IMAGES]
    assert "6 input file(s) skipped: outputs of a predict batch" in caplog.text
    maps = tmp_path / "scans" / "maps"  # a subfolder, found by a recursive pattern
    assert main([f"ckpt={ckpt}", f"input={scans}/**/0*.*", f"output={maps}", "overwrite=true"]) == 0
    assert main([f"ckpt={ckpt}", f"input={scans}/**/0*.*", f"output={maps}", "overwrite=true"]) == 0
    stats = json.loads((maps / "statistics.json").read_text())
    assert [r["image"] for r in stats["images"]] == [str(scans / f"{s}.jpg") for s in IMAGES]
    assert main([f"ckpt={ckpt}", f"input={maps}", f"output={tmp_path / 'again'}"]) == 2
    assert caplog.messages[-1].startswith(f"input={maps}: its only images are outputs of a predict batch")


def test_output_that_is_a_file_is_refused_and_the_advice_works(ckpt, scans, tmp_path, caplog):
    taken = tmp_path / "result.txt"
    taken.write_text("a user's file")
    assert main([f"ckpt={ckpt}", f"input={scans / '001.jpg'}", f"output={taken}"]) == 2
    said = caplog.messages[-1]
    assert said.startswith(f"output={taken} is a file, not a folder") and "Traceback" not in caplog.text
    assert taken.read_text() == "a user's file"
    advised = said.rsplit("e.g. ", 1)[1]
    assert main([f"ckpt={ckpt}", f"input={scans / '001.jpg'}", advised]) == 0
    assert (tmp_path / "result_maps" / "001_labels.png").exists()


def test_a_read_only_output_folder_is_named_and_nothing_is_written(ckpt, scans, tmp_path, monkeypatch, caplog):
    import errno
    import tempfile

    import poc59.core.atomic as atomic

    out = tmp_path / "out"
    out.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # what a read-only file system answers (root ignores chmod)
        if dir is not None and Path(dir) == out:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}"]) == 2
    assert caplog.messages[-1] == (
        f"output={out}: cannot write there (a read-only file system: Read-only file system). "
        "Pass output=<a folder on a writable disk with free space>"
    )
    assert _outputs(out) == [] and "Traceback" not in caplog.text


def test_a_full_disk_mid_batch_stops_it_naming_the_folder_and_leaves_none_of_its_files(
    ckpt, scans, tmp_path, monkeypatch, caplog
):
    import errno
    from contextlib import contextmanager

    import poc59.inference.outputs as outputs

    real = outputs.replacing

    class FillsUp:
        """The second scan's overlay file: its header goes in, the disk is full when its rows follow."""

        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextmanager
    def full(path):
        with real(path) as f:
            yield FillsUp(f) if Path(path).name == f"{IMAGES[1]}_overlay.png" else f

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(outputs, "replacing", full)  # the overlay is streamed into its file as the rows come
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}"]) == 2
    assert caplog.messages[-1] == (
        f"output={out}: cannot write there (no space left on its disk: No space left on device). "
        "Pass output=<a folder on a writable disk with free space>"
    )
    assert "Traceback" not in caplog.text and "not predicted" not in caplog.text  # the folder, not a scan
    assert _outputs(out) == ["notes.txt"]  # the first scan's maps and the record went with the batch


def test_the_summary_table_shows_every_damage_class_present(scans, tmp_path, monkeypatch, capsys):
    import poc59.inference.run as predict
    from inference.standins import LocalConv, model

    sixteen = model(LocalConv(classes=16, seed=3), policy="resize", image_size=64)
    monkeypatch.setattr(predict, "load_models", lambda *args: sixteen)
    out = tmp_path / "out"
    assert main([f"ckpt={tmp_path / 'unused.ckpt'}", f"input={scans / '001.jpg'}", f"output={out}"]) == 0
    row = json.loads((out / "statistics.json").read_text())["images"][0]
    present = [n for n, v in row["classes"].items() if n != "c0" and v["pixels"] > 0]
    assert len(present) > 4  # more than the table used to show
    printed = " ".join(capsys.readouterr().out.split())
    for name in present:
        percent = row["classes"][name]["percent"]
        assert (f"{name} {percent:.2f}" if percent >= 0.005 else f"{name} <0.01") in printed
