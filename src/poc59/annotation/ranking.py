"""How much a correction of a scan is worth: the model's uncertainty over it, plus a bonus for rare classes.

`score = mean entropy + rare_bonus x min(1, rare share / RARE_SHARE_FULL)`

- **Mean entropy** of the predicted class distribution over every pixel of the scan, divided by log(C) so it
  runs from 0 (certain everywhere) to 1 (uniform over all C classes). Entropy rather than the margin between
  the two best classes: with 16 classes the model's doubt on thin damage is spread over several classes
  (Hair, Scratch, Cracks, Clean), which the margin, looking at two, does not see; and a mean of a bounded
  quantity compares scans of any size.
- **Rare bonus**: the share of pixels predicted as a rare class (default: Dust, Scratch, Hair and Burn marks,
  the ARTeFACT classes near 0 IoU for lack of labelled pixels) earns up to `rare_bonus` (default 0.5), in full
  from RARE_SHARE_FULL (1 %) of the scan on, pro rata below. A rare class is a few hundred pixels of a scan, so
  a bonus proportional to its share alone would never move the order; capped, it cannot swamp the entropy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

RARE_DEFAULT = ("Dust", "Scratch", "Hair", "Burn marks")
RARE_BONUS = 0.5
RARE_SHARE_FULL = 0.01


class Uncertainty:
    """Accumulates, band by band, the entropy and predicted rare pixels of one scan's logits."""

    def __init__(self, num_classes: int, rare_ids: list[int]) -> None:
        self.norm = math.log(num_classes)
        self.rare_ids = torch.tensor(rare_ids, dtype=torch.long)
        self.entropy_sum = 0.0
        self.rare_pixels = 0
        self.pixels = 0

    def add(self, logits: torch.Tensor, labels: np.ndarray) -> None:
        """One band: logits [C, h, W] and their argmax labels [h, W]."""
        logp = torch.log_softmax(logits.float(), dim=0)
        self.entropy_sum += float(-(logp.exp() * logp).sum(dim=0).sum()) / self.norm
        if len(self.rare_ids):
            self.rare_pixels += int(np.isin(labels, self.rare_ids.numpy()).sum())
        self.pixels += labels.size

    def score(self, rare_bonus: float) -> Score:
        mean = self.entropy_sum / max(self.pixels, 1)
        share = self.rare_pixels / max(self.pixels, 1)
        return Score(mean, share, mean + rare_bonus * min(1.0, share / RARE_SHARE_FULL))


@dataclass(frozen=True)
class Score:
    """A scan's ranking numbers (module docstring)."""

    mean_entropy: float
    rare_share: float
    score: float
