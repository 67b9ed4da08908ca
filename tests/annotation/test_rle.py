"""Label Studio's brush RLE against label-studio-sdk's converter (run by the server venv's python, since the
package pins what poc59's venv must not have), both ways, and poc59's own round trip."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from label_studio_server import require
from poc59.annotation.rle import RleError, decode_rle, mask_to_rle, rle_to_mask

REFERENCE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
job = json.load(sys.stdin)
out = {"encoded": [], "decoded": []}
for m in job["masks"]:
    out["encoded"].append([int(b) for b in mask2rle(np.array(m, dtype=np.uint8))])
for r, (h, w) in zip(job["rles"], job["shapes"]):
    out["decoded"].append(decode_rle(r).reshape(h, w, 4)[:, :, 3].tolist())
json.dump(out, sys.stdout)
"""


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    speckle = (rng.random((23, 31)) < 0.3).astype(np.uint8) * 255  # runs of 1: literal chunks
    blocks = np.kron(rng.integers(0, 2, (5, 7)), np.ones((9, 13), np.int64)).astype(np.uint8) * 255  # runs <= 256
    long_run = np.zeros((180, 200), np.uint8)  # 144,000 values of 0: a run longer than 2**16, split
    long_run[90:, 150:] = 255
    empty = np.zeros((4, 5), np.uint8)
    return [speckle, blocks, long_run, empty]


def _reference(masks: list[np.ndarray], rles: list[list[int]]) -> dict:
    python = require().parent / "python"
    job = {"masks": [m.tolist() for m in masks], "rles": rles, "shapes": [m.shape for m in masks]}
    done = subprocess.run(
        [str(python), "-c", REFERENCE], input=json.dumps(job), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_rle_matches_label_studio_sdk_both_ways():
    masks = _masks()
    ours = [mask_to_rle(m) for m in masks]
    ref = _reference(masks, ours)
    for mask, mine, theirs, decoded in zip(masks, ours, ref["encoded"], ref["decoded"]):
        assert np.array_equal(np.array(decoded, np.uint8), np.where(mask > 0, 255, 0))  # the SDK reads ours
        assert np.array_equal(rle_to_mask(theirs, *mask.shape), mask > 0)  # we read the SDK's
        assert mine == theirs  # and write the same bytes


def test_rle_reads_other_word_and_field_sizes():
    """The editor's encoder may pick other sizes: a hand-made stream, word size 4, run fields (2, 3, 5, 9)."""
    bits = f"{10:032b}" + f"{4 - 1:05b}" + "".join(f"{s - 1:04b}" for s in (2, 3, 5, 9))
    bits += "1" + "01" + f"{6 - 1:03b}" + "1111"  # run of 6 x 15
    bits += "0" + "00" + f"{4 - 1:02b}" + "0001" + "0010" + "0011" + "0100"  # 4 literals 1..4
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_rle(rle).tolist() == [15] * 6 + [1, 2, 3, 4]


def test_rle_refuses_what_does_not_fit():
    rle = mask_to_rle(np.ones((4, 5), np.uint8))
    with pytest.raises(RleError, match="80 values, not the 5x5x4"):
        rle_to_mask(rle, 5, 5)
    with pytest.raises(RleError, match="ends before"):
        decode_rle(rle[:-3])
