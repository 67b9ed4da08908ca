"""predict's overlay picture: the scan's rows and a legend of the damage classes it holds, encoded as one PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from poc59.analysis.colour import ignore_rgb
from poc59.core.classes import ARTEFACT
from poc59.inference.outputs import OverlayPicture, stacked_png


def test_stacked_png_is_the_parts_one_above_the_other_exactly():
    rng = np.random.default_rng(0)
    top, bottom = rng.integers(0, 256, (37, 23, 3), np.uint8), rng.integers(0, 256, (5, 23, 3), np.uint8)
    data = stacked_png([Image.fromarray(top), Image.fromarray(bottom)], band_rows=8)  # bands cross the parts
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.concatenate([top, bottom]))
    with pytest.raises(ValueError, match="23 px wide"):
        stacked_png([Image.fromarray(top), Image.new("RGB", (22, 4))])


def _swatches(panel: np.ndarray) -> set[str]:
    colours = {name: rgb for name, rgb in zip(ARTEFACT.names, ARTEFACT.rgb())} | {"ignored": ignore_rgb()}
    return {name for name, rgb in colours.items() if name != "Clean" and np.all(panel == rgb, axis=-1).sum() > 20}


def test_the_overlay_legend_lists_only_the_damage_classes_the_scan_holds():
    scan = np.full((60, 400, 3), 200, np.uint8)
    picture = OverlayPicture(400, 60, ARTEFACT)
    picture.paste(0, scan)
    decoded = np.asarray(Image.open(io.BytesIO(picture.png({0, 3, 6, 255}))))
    assert decoded.shape[1] == 400 and decoded.shape[0] > 60
    assert np.array_equal(decoded[:60], scan)
    assert _swatches(decoded[60:]) == {"Dust", "Dirt"}  # not the 14 others, not Clean, not ignored

    only_clean = np.asarray(Image.open(io.BytesIO(picture.png({0}))))
    assert _swatches(only_clean[60:]) == set()
    assert (only_clean[60:].min(axis=-1) < 100).any()  # "only Clean" is written instead
