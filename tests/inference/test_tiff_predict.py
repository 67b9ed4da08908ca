"""python -m poc59.predict on TIFF masters: a 16-bit tiled LZW master streamed within max_memory_mb predicts
what the model predicts on its peak-scaled pixels; a truncated master and one with a tile that does not
decode are named in statistics.json while the batch goes on, and leave no output; a batch of only broken
masters exits 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import CRACKFOREST
from poc59.artifacts.load import load_model
from poc59.inference.image import predict_label_map
from poc59.predict import main
from tests.inference.test_predict_cli import ckpt  # noqa: F401  (the module's trained tiny crop model)


def _master(path, pixels: np.ndarray) -> tuple[list[int], list[int]]:
    """`pixels` as a 16-bit (x 200) tiled LZW TIFF; its tiles' offsets and byte counts."""
    tifffile.imwrite(path, pixels.astype(np.uint16) * 200, photometric="rgb", compression="lzw", tile=(64, 64))
    with tifffile.TiffFile(path) as tif:
        return list(tif.pages[0].dataoffsets), list(tif.pages[0].databytecounts)


@pytest.mark.slow  # trains test_predict_cli's crop model, then streams TIFF masters: 27 s at a load of 8-10
def test_tiff_masters_stream_and_broken_ones_are_named_while_the_batch_goes_on(ckpt, tmp_path, caplog):  # noqa: F811
    pixels = np.asarray(Image.open(CRACKFOREST / "images" / "003.jpg").convert("RGB"))
    scans = tmp_path / "scans"
    scans.mkdir()
    _master(scans / "master.tif", pixels)
    offsets, counts = _master(scans / "corrupt.tif", pixels)
    data = bytearray((scans / "corrupt.tif").read_bytes())
    data[offsets[5] : offsets[5] + counts[5]] = bytes(range(256)) * (counts[5] // 256) + b"\x00" * (counts[5] % 256)
    (scans / "corrupt.tif").write_bytes(bytes(data))
    offsets, counts = _master(scans / "truncated.tif", pixels)
    end = max(o + c for o, c in zip(offsets, counts))
    (scans / "truncated.tif").write_bytes((scans / "truncated.tif").read_bytes()[: end - counts[-1] // 2])
    out = tmp_path / "out"
    caplog.set_level("INFO")
    code = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "batch_size=4", "max_memory_mb=0.01"])
    assert code == 2
    assert f"{scans / 'master.tif'}: 480 x 320 read in strips" in " ".join(caplog.text.split())
    stats = json.loads((out / "statistics.json").read_text())
    failed = {f["image"]: f["reason"] for f in stats["failed"]}
    assert sorted(failed) == [str(scans / "corrupt.tif"), str(scans / "truncated.tif")]
    assert (
        "corrupt.tif: tile 5 (rows 0..63, columns 320..383) does not decode (LZW" in failed[str(scans / "corrupt.tif")]
    )
    assert "truncated.tif: the file is truncated (tile" in failed[str(scans / "truncated.tif")]
    assert stats["predicted"] == 1 and not list(out.glob("corrupt_*")) and not list(out.glob("truncated_*"))
    labels = np.asarray(Image.open(out / "master_labels.png"))
    scaled = np.rint(pixels.astype(np.float64) * 200 * (255.0 / (int(pixels.max()) * 200))).astype(np.uint8)
    assert np.array_equal(labels, predict_label_map(load_model(ckpt), scaled, batch_size=4))

    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    shutil.copy(scans / "corrupt.tif", only_broken)
    code = main([f"ckpt={ckpt}", f"input={only_broken}", f"output={tmp_path / 'out2'}", "max_memory_mb=0.01"])
    assert code == 2
    stats = json.loads((tmp_path / "out2" / "statistics.json").read_text())
    assert stats["predicted"] == 0 and [f["image"] for f in stats["failed"]] == [str(only_broken / "corrupt.tif")]
