"""The serve engine in-process: the maps it serves are predict's, and every hostile upload is answered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from poc59.artifacts.trained import ModelLoadError
from poc59.core.config import SettingError
from poc59.inference.report import trust_word
from poc59.predict import main as predict
from poc59.serving.engine import Engine
from poc59.serving.limits import Limits, RequestRefused
from serving.server import make_scan, png_header_only


@pytest.fixture(scope="module")
def engine(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(onnx_model, Limits(max_upload_mb=1, max_pixels=2_000_000), tmp_path_factory.mktemp("work"))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_the_served_maps_and_statistics_are_predicts_for_the_same_scan(engine, onnx_model, tmp_path):
    scan = make_scan(tmp_path / "folio.png")
    served = engine.predict(engine.source_of(str(scan), None), overlap=0.25)
    out = tmp_path / "predicted"
    assert predict([f"ckpt={onnx_model}", f"input={scan}", f"output={out}", "pyramid=true", "threads=1"]) == 0

    classes = Image.open(served.files["classes"])
    assert classes.mode == "P" and classes.getpalette() == Image.open(out / "folio_labels.png").getpalette()
    assert np.array_equal(_pixels(served.files["classes"]), _pixels(out / "folio_labels.png"))
    assert np.array_equal(_pixels(served.files["confidence"]), tifffile.imread(out / "folio_confidence.tif", key=0))
    statistics = json.loads(served.files["statistics"].read_text())
    row = json.loads((out / "statistics.json").read_text())["images"][0]
    assert statistics["image"]["classes"] == row["classes"]
    assert statistics["trust"] == {n: trust_word(engine.ious[n]) for n in engine.classes.names}
    assert "<html" in served.files["report"].read_text().lower()

    found = served.present(engine.classes)
    assert found, "the tiny model finds damage in the generated scan"
    hidden = found[0]
    shown = engine.overlay(served.key, found)
    without = engine.overlay(served.key, found[1:])
    where = served.labels == engine.classes.names.index(hidden)
    assert np.array_equal(without[where], served.scan[where])  # the hidden class drawn as the scan
    assert np.array_equal(without[~where], shown[~where]) and not np.array_equal(without[where], shown[where])


def test_a_minimum_region_size_turns_smaller_damage_regions_clean(engine, tmp_path):
    scan = make_scan(tmp_path / "folio.png", seed=3)
    every = engine.predict(engine.source_of(str(scan), None))
    big = engine.predict(engine.source_of(str(scan), None), min_region=200)
    import cv2

    changed = every.labels != big.labels
    assert changed.any() and (big.labels[changed] == 0).all()
    for c in range(1, engine.classes.num_classes):
        n, _, stats, _ = cv2.connectedComponentsWithStats((big.labels == c).astype(np.uint8), connectivity=8)
        assert (stats[1:, cv2.CC_STAT_AREA] >= 200).all()
    assert big.statistics["classes"]["Clean"]["pixels"] == every.statistics["classes"]["Clean"]["pixels"] + int(
        changed.sum()
    )


def test_hostile_uploads_are_refused_with_a_message_naming_the_file(engine, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n" * 10)
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    corrupt = tmp_path / "cut.png"
    corrupt.write_bytes(make_scan(tmp_path / "whole.png").read_bytes()[:3000])
    large = tmp_path / "large.png"
    large.write_bytes(np.random.default_rng(0).bytes(2 * 2**20))
    too_many = png_header_only(tmp_path / "wide.png", 2000, 1001)
    expected = {
        text: "notes.png: cannot be predicted",
        bomb: "more than this server takes (2,000,000, its max_pixels)",
        corrupt: "cut.png: cannot be predicted",
        large: "more than this server takes (1 MB, its max_upload_mb)",
        too_many: "wide.png: 2000 x 1001 = 2,002,000 pixels",
    }
    for path, words in expected.items():
        with pytest.raises(RequestRefused, match=None) as refused:
            engine.predict(engine.source_of(str(path), None))
        assert words in str(refused.value), (path.name, str(refused.value))
        assert str(tmp_path) not in str(refused.value)  # the upload's temporary folder is not shown
    with pytest.raises(RequestRefused, match="no scan"):
        engine.source_of(None, "")
    with pytest.raises(RequestRefused, match="not a IIIF address"):
        engine.source_of(None, "ftp://example.org/x")


def test_a_scan_over_the_time_budget_is_stopped_and_answered(onnx_model, tmp_path):
    slow = Engine.load(onnx_model, Limits(timeout_s=1e-9), tmp_path / "work")
    scan = make_scan(tmp_path / "folio.png", size=(300, 600))
    with pytest.raises(RequestRefused, match=r"folio.png: stopped after 1e-09 s \(this server's timeout_s"):
        slow.predict(slow.source_of(str(scan), None))
    small = Engine.load(onnx_model, Limits(max_memory_mb=1), tmp_path / "work")
    with pytest.raises(RequestRefused, match="more than this server gives one request"):
        small.predict(small.source_of(str(scan), None))


def test_a_run_folder_and_a_checkpoint_load_and_a_foreign_file_is_refused(trained_run, tmp_path):
    engine = Engine.load(trained_run, Limits(), tmp_path)
    assert engine.model.source.name == "best.ckpt"
    # the report's card has what predict's reports have: the training data and date, found beside the card
    assert engine.card["provenance"]["data"] and engine.card["provenance"]["date"]
    with pytest.raises(SettingError, match="no such file or folder"):
        Engine.load(tmp_path / "missing.onnx", Limits(), tmp_path)
    with pytest.raises(SettingError, match="not a poc59 model file"):
        Engine.load(Path(__file__), Limits(), tmp_path)
    (tmp_path / "model.card.json").write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="not a poc59 model card"):
        Engine.load(tmp_path / "model.onnx", Limits(), tmp_path)


def test_a_iiif_info_json_url_is_predicted_as_the_same_pixels_in_a_file(engine, tmp_path):
    from inference.test_iiif_source import ImageServer

    scan = make_scan(tmp_path / "folio.png")
    service = ImageServer({"folio": np.asarray(Image.open(scan))})
    try:
        remote = engine.predict(engine.source_of(None, service.info(3, "folio")))
        with pytest.raises(RequestRefused, match="either a file or a IIIF address"):
            engine.source_of(str(scan), service.info(3, "folio"))
    finally:
        service.close()
    local = engine.predict(engine.source_of(str(scan), None))
    assert np.array_equal(remote.labels, local.labels) and np.array_equal(remote.confidence, local.confidence)
    assert remote.statistics["classes"] == local.statistics["classes"]
