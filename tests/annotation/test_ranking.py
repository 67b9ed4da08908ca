"""The ranking score: mean normalised entropy plus the capped rare-class bonus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poc59.annotation.ranking import RARE_SHARE_FULL, Uncertainty
from poc59.inference.image import band_labels


def _score(logits: torch.Tensor, rare_ids: list[int], bonus: float = 0.5):
    doubt = Uncertainty(logits.shape[0], rare_ids)
    for y0 in range(0, logits.shape[1], 3):  # band by band, as push feeds it
        band = logits[:, y0 : y0 + 3]
        doubt.add(band, band_labels(band))
    return doubt.score(bonus)


def test_uniform_is_one_certain_is_zero_and_bands_add_up():
    assert _score(torch.zeros(4, 10, 8), []).mean_entropy == pytest.approx(1.0)
    certain = torch.full((4, 10, 8), -50.0)
    certain[0] = 50.0
    assert _score(certain, []).mean_entropy == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(2, 10, 8)
    half[0, :5] = 50.0  # top half certain, bottom half a coin toss
    assert _score(half, []).mean_entropy == pytest.approx(0.5, abs=1e-6)


def test_rare_bonus_grows_with_the_rare_share_and_is_capped():
    logits = torch.full((3, 100, 100), -50.0)
    logits[0] = 50.0
    few = logits.clone()
    few[2, :1, :50] = 100.0  # 50 pixels of class 2: 0.5 % of the scan
    many = logits.clone()
    many[2, :20] = 100.0  # 20 %
    s_few, s_many = _score(few, [2]), _score(many, [2])
    assert s_few.rare_share == pytest.approx(0.005)
    assert s_few.score == pytest.approx(s_few.mean_entropy + 0.5 * 0.005 / RARE_SHARE_FULL)
    assert s_many.score == pytest.approx(s_many.mean_entropy + 0.5)  # capped
    assert _score(many, [1]).rare_share == 0.0
    assert np.isclose(_score(many, [2], bonus=0.0).score, s_many.mean_entropy)
