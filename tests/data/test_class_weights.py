import json
import math

import pytest
import torch

from poc59.data.class_weights import class_weights, load_or_compute, pixel_counts


def test_counts_and_weights_match_a_hand_count(caplog):
    masks = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 255, 255]]], dtype=torch.uint8)
    counts = pixel_counts(masks, 3)
    assert counts == [13, 1, 0]  # 255 not counted; class 2 absent
    w = class_weights(counts, ["a", "b", "c"])
    # inverse sqrt of frequency: a -> sqrt(14/13), b -> sqrt(14/1); normalised to mean 1 over a, b
    raw = [math.sqrt(14 / 13), math.sqrt(14)]
    assert w[0] == pytest.approx(2 * raw[0] / sum(raw)) and w[1] == pytest.approx(2 * raw[1] / sum(raw))
    assert w[2] == 0.0
    assert "c" in caplog.text and "weight 0" in caplog.text
    assert w[1] / w[0] == pytest.approx(math.sqrt(13))  # no silent clipping
    capped = class_weights(counts, ["a", "b", "c"], cap=1.2)
    assert max(capped) == pytest.approx(1.2)
    assert class_weights(counts, ["a", "b", "c"], method="none") == [1.0, 1.0, 0.0]


def test_cached_record_is_reused_only_for_the_same_fingerprint(tmp_path):
    masks = torch.zeros((2, 4, 4), dtype=torch.uint8)
    masks[0, 0, 0] = 1
    path = tmp_path / "w.json"
    rec = load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f1")
    assert json.loads(path.read_text())["counts"] == [31, 1]
    masks[1] = 1  # same fingerprint: the cache answers, not the masks
    assert load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f1") == rec
    new = load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f2")
    assert new["counts"] == [15, 17]


def test_a_cached_record_edited_on_disk_is_recomputed_and_the_file_named(tmp_path, caplog):
    """A weight changed by hand (1.77 -> 17.7 in the issue) is never trained on: the record no longer
    matches the hash written with it, so the weights are computed again from the split and the cache rewritten."""
    masks = torch.zeros((2, 4, 4), dtype=torch.uint8)
    masks[0, 0, :3] = 1
    path = tmp_path / "w.json"
    rec = load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f1")
    edited = json.loads(path.read_text())
    edited["weights"][1] *= 10
    path.write_text(json.dumps(edited, indent=2))
    caplog.clear()
    again = load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f1")
    assert again["weights"] == rec["weights"] and again["weights"] != edited["weights"]
    assert f"Class-weight cache {path} differs from the hash written with it" in caplog.text
    assert json.loads(path.read_text())["weights"] == rec["weights"]  # the cache holds the true weights again
    caplog.clear()
    assert load_or_compute(path, masks, ["a", "b"], "inverse_sqrt", None, fingerprint="f1") == rec
    assert "differs" not in caplog.text  # an untouched record is used as it is
