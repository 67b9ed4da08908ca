"""The serve page's pictures of a large scan: reduced as the condition report reduces them, so thin damage
stays visible (a nearest-neighbour resize keeps one pixel in k and drops a crack one pixel wide)."""

from __future__ import annotations

import numpy as np

from poc59.core.classes import ARTEFACT
from poc59.serving.engine import PREVIEW_SIDE, previews


def _reference_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """Written here from the rule, block by block: any damage in a block shows its most frequent damage class
    (the lowest id on a tie), else the block's most frequent label."""
    h, w = labels.shape
    out = np.empty((-(-h // k), -(-w // k)), np.uint8)
    for by in range(out.shape[0]):
        for bx in range(out.shape[1]):
            block = labels[by * k : (by + 1) * k, bx * k : (bx + 1) * k].reshape(-1)
            damage = block[(block > 0) & (block < ARTEFACT.num_classes)]
            pool = damage if damage.size else block
            values, counts = np.unique(pool, return_counts=True)
            out[by, bx] = values[np.argmax(counts)]
    return out


def test_a_one_pixel_crack_on_a_large_scan_shows_on_the_page():
    height, width = 90, 3 * PREVIEW_SIDE + 7  # k = 4: the long side reduced to at most PREVIEW_SIDE
    rng = np.random.default_rng(0)
    labels = np.zeros((height, width), np.uint8)
    labels[41, 5:] = 3  # a horizontal crack one pixel high: row 41 is no multiple of 4
    labels[:, 1001] = 7  # a vertical one, one pixel wide, at a column no multiple of 4
    labels[60:64, 2000:2100] = 255  # an unlabelled patch
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    confidence = rng.integers(0, 256, (height, width), dtype=np.uint8)

    scan, shown, conf = previews(rgb, labels, confidence, ARTEFACT)

    k = 4
    assert max(shown.shape) <= PREVIEW_SIDE and shown.shape == (-(-height // k), -(-width // k))
    assert scan.shape == (*shown.shape, 3) and conf.shape == shown.shape
    np.testing.assert_array_equal(shown, _reference_labels(labels, k))
    row = np.delete(shown[41 // k, 2:], 1001 // k - 2)  # the block where they cross holds more of the 7
    assert (row == 3).all() and (shown[:, 1001 // k] == 7).all()
    # the scan and the confidence: block means of the real pixels (the first whole block checked by hand)
    assert scan[0, 0].tolist() == np.rint(rgb[:4, :4].reshape(-1, 3).mean(axis=0)).astype(int).tolist()
    assert conf[0, 0] == np.rint(confidence[:4, :4].mean())


def test_a_scan_within_the_page_size_is_shown_as_it_is():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = np.full((3, 4, 3), 9, np.uint8)
    confidence = np.full((3, 4), 200, np.uint8)
    scan, shown, conf = previews(rgb, labels, confidence, ARTEFACT)
    np.testing.assert_array_equal(shown, labels)
    np.testing.assert_array_equal(scan, rgb)
    np.testing.assert_array_equal(conf, confidence)
