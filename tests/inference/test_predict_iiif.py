"""python -m poc59.predict writes the IIIF manifest, the annotations and the damage layer of every scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from iiif_prezi3 import AnnotationPage, Manifest
from PIL import Image

from helpers import CRACKFOREST
from poc59.predict import main


def test_predict_writes_iiif_that_accounts_for_every_damage_pixel(trained_run, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for stem in ("001", "002"):
        shutil.copy(CRACKFOREST / "images" / f"{stem}.jpg", scans)
    out = tmp_path / "out"
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "iiif_min_area=4", "threads=1"]) == 0
    stats = json.loads((out / "statistics.json").read_text())
    for row in stats["images"]:
        stem = Path(row["image"]).stem
        names = [f"{stem}_damage.png", f"{stem}.annotations.json", f"{stem}.manifest.json"]
        assert set(names) <= set(stats["outputs"])  # recorded: overwrite=true replaces them, nothing else does
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}_damage.png")), labels)
        Manifest.model_validate_json((out / f"{stem}.manifest.json").read_text())
        page = json.loads((out / f"{stem}.annotations.json").read_text())
        AnnotationPage.model_validate(page)
        summary = row["iiif"]
        assert summary["regions"] == len(page["items"]) and summary["min_area"] == 4
        for name, figures in row["classes"].items():
            if name == stats["classes"]["names"][0]:
                continue  # Clean: no damage, no annotation
            annotated = sum(a["damage"]["pixels"] for a in page["items"] if a["damage"]["class"] == name)
            specks = summary["classes"].get(name, {"speck_pixels": 0})["speck_pixels"]
            assert annotated + specks == figures["pixels"], name  # every damage pixel: annotated or a counted speck
        assert all(0 <= a["damage"]["mean_confidence"] <= 1 for a in page["items"])
    again = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "overwrite=true", "iiif=false", "threads=1"])
    assert again == 0 and not list(out.glob("*.manifest.json")) and not list(out.glob("*_damage.png"))


def test_a_base_url_that_is_no_address_is_refused_before_any_image_is_read(trained_run, tmp_path, caplog):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    code = main([f"ckpt={ckpt}", f"input={CRACKFOREST / 'images'}", f"output={out}", "iiif_base_url=example.org/maps"])
    assert code == 2 and not out.exists()
    assert "iiif_base_url=example.org/maps" in caplog.text and "https://example.org/maps/" in caplog.text
