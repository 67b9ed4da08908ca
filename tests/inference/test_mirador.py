"""Predict's IIIF manifest in a real viewer: a scan served by Debian's iipsrv on 127.0.0.1 is predicted from its
info.json, and the manifest predict wrote opens in Mirador 4 (the npm package's own bundle) in headless Chromium:
the canvas shows the scan's pixels, the damage layer in the class colours over the damaged places, and the
annotation panel lists one entry per damage region, named by its class."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import poc59.inference.run as predict_run
from iipsrv_server import iipsrv_at, require
from poc59.artifacts.card import ModelCard
from poc59.artifacts.trained import TrainedModel
from poc59.core.classes import ClassTable
from poc59.predict import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "screenshots"))
import mirador  # noqa: E402  (scripts/screenshots/mirador.py: the docs' screenshot uses the same pieces)

W, H = 640, 480
BACKGROUND = (30, 80, 200)
CLASSES = ClassTable(("Clean", "Material loss", "Peel"), ("#000000", "#1CE6FF", "#FF34FF"))
# image boxes (x0, y0, x1, y1) of the damage the stand-in model finds: red is Material loss, green is Peel
DAMAGE = {"Material loss": ((96, 96, 288, 224), (220, 40, 40)), "Peel": ((384, 256, 544, 416), (40, 220, 40))}


class ColourIsDamage(nn.Module):
    """Per-pixel logits: Clean 0, Material loss where red is high, Peel where green is high (no context)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] - 128, x[:, 1] - 128], 1) / 16


def _scan() -> np.ndarray:
    pixels = np.empty((H, W, 3), np.uint8)
    pixels[:] = BACKGROUND
    for (x0, y0, x1, y1), colour in DAMAGE.values():
        pixels[y0:y1, x0:x1] = colour
    return pixels


def _requirements() -> None:
    """Skip where Chromium or npm is missing (fail under CI, which installs them), as the iipsrv fixture does."""
    require()
    why = None if mirador.chromium_binary() else "chromium is not installed (apt-get install chromium)"
    if why is None and not (mirador.cache_folder() / f"mirador-{mirador.MIRADOR_VERSION}" / mirador.BUNDLE).exists():
        why = None if shutil.which("npm") else "npm is not installed (apt-get install npm)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def _scan_on_screen(shot: np.ndarray) -> tuple[float, float, float]:
    """(left, top, screen pixels per scan pixel) of the scan on the screenshot. Mirador fits the whole scan
    in its window, so its left, right and top edges are where its background colour starts and ends (the
    bottom may lie under Mirador's translucent navigation bar, so the scale comes from the width)."""
    near = np.abs(shot[..., :3].astype(int) - BACKGROUND).max(-1) < 12  # Mirador's own blue is 20 away
    rows, cols = np.flatnonzero(near.sum(1) > 32), np.flatnonzero(near.sum(0) > 32)  # not a line of the UI's
    assert len(rows) and len(cols), "the scan's pixels are nowhere on the screen"
    scale = (cols[-1] + 1 - cols[0]) / W
    assert scale > 0.5, f"the scan is drawn {cols[-1] + 1 - cols[0]} px wide: not in view"
    assert rows[0] + H * scale <= shot.shape[0] + 2, "the scan is taller on the screen than its width implies"
    return cols[0], rows[0], scale


def _colour_at(shot: np.ndarray, screen: tuple[float, float, float], box: tuple[int, int, int, int]) -> np.ndarray:
    """The median colour of the middle half of the scan's box `box` (x0, y0, x1, y1), where it is on the screen."""
    left, top, scale = screen
    x0, y0, x1, y1 = box
    qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
    rows = slice(int(top + (y0 + qy) * scale), int(top + (y1 - qy) * scale))
    cols = slice(int(left + (x0 + qx) * scale), int(left + (x1 - qx) * scale))
    return np.median(shot[rows, cols, :3].reshape(-1, 3), axis=0)


@pytest.mark.slow  # ~30 s: iipsrv, predict, Chromium loading Mirador and the scan's tiles
def test_mirador_shows_the_scan_the_damage_layer_and_the_annotations_by_class(tmp_path, monkeypatch):
    _requirements()
    root, state, site = tmp_path / "iipsrv", tmp_path / "state", tmp_path / "site"
    for folder in (root, state, site):
        folder.mkdir()
    mirador._pyramid(root / "scan.tif", _scan())
    card = ModelCard(CLASSES, {"mean": [0, 0, 0], "std": [1, 1, 1]}, {}, {"policy": "crop", "image_size": 64}, 64)
    trained = TrainedModel(segmenter=ColourIsDamage().eval(), card=card, source=Path("stand-in"))
    monkeypatch.setattr(predict_run, "load_models", lambda *args: trained)
    with iipsrv_at(root, state, CORS="*") as server, mirador.static_site(site) as url, mirador.Chromium() as chromium:
        maps = site / "maps"
        args = [f"ckpt={tmp_path / 'unused.ckpt'}", f"input={server.info('scan.tif')}", f"output={maps}"]
        assert main([*args, f"iiif_base_url={url}maps/", "threads=1"]) == 0
        summary = json.loads((maps / "statistics.json").read_text())["images"][0]["iiif"]
        assert summary["regions"] == 2 and sorted(summary["classes"]) == sorted(DAMAGE)
        page = mirador.viewer_page(site, f"{url}maps/{summary['manifest']}", highlight=False)
        png, text = mirador.show(chromium, url + page, sorted(DAMAGE))
    (tmp_path / "mirador.png").write_bytes(png)  # kept with the test's folder, to look at when it fails
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    screen = _scan_on_screen(shot)
    clean = (16, 16, 80, 80)  # a corner of the scan with no damage: the scan's own pixels show
    assert np.abs(_colour_at(shot, screen, clean) - BACKGROUND).max() < 24
    lines = text.splitlines()
    assert "Showing 2 annotations" in lines
    for name, (box, _) in DAMAGE.items():  # the layer, opaque: the class colour itself, not a blend with the scan
        colour = np.array(Image.new("RGB", (1, 1), CLASSES.palette[CLASSES.names.index(name)]).getpixel((0, 0)))
        assert np.abs(_colour_at(shot, screen, box) - colour).max() < 24, f"{name} is not drawn in its colour there"
        x0, y0, x1, y1 = box
        listed = [line for line in lines if line.startswith(f"{name} {(x1 - x0) * (y1 - y0)} px, ")]
        assert len(listed) == 1, f"the annotation panel does not list one {name} region: {lines}"


def test_the_driver_gives_up_on_a_page_that_never_answers_and_leaves_no_chromium():
    """A page whose script never returns keeps the DevTools pipe silent: the driver's wait ends at its own
    time-out (a bare read on the pipe would block for ever), and closing it ends every process it started."""
    if mirador.chromium_binary() is None:
        pytest.skip("no chromium here (apt-get install chromium)")
    import time

    import psutil

    started = time.monotonic()
    with pytest.raises(mirador.ViewerError, match="did not answer in time"):
        with mirador.Chromium(800, 600) as browser:
            root = psutil.Process(browser._proc.pid)
            processes = [root, *root.children(recursive=True)]
            browser.open("data:text/html,<p>stuck</p><script>for (;;) {}</script>")
            browser.wait_for("false", timeout=5)
    assert time.monotonic() - started < 45  # the 5 s wait, Chromium's start and its end
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
