"""Grouped, seeded train/validation split.

An original and all its augmented copies are one group and land on one side,
so no validation image leaks into training through a flipped copy (the earlier
system's random split over files did exactly that).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from poc59.data.sources import Sample


@dataclass(frozen=True)
class Split:
    """Indices into the sample list, per side."""

    train: tuple[int, ...]
    val: tuple[int, ...]

    def to_dict(self, samples: list[Sample]) -> dict:
        """The form written to split.json: ids per side and a fingerprint."""
        d = {
            "train": [samples[i].id for i in self.train],
            "val": [samples[i].id for i in self.val],
        }
        d["fingerprint"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        return d


def grouped_split(samples: list[Sample], val_fraction: float, seed: int, val_aug_copies: bool = False) -> Split:
    """Hold out `val_fraction` of the groups (at least one, at most all but one) for validation.

    Validation keeps only originals unless `val_aug_copies`: copies of a validation
    image add no new information and would weight it several times.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    groups = sorted({s.group for s in samples})
    if len(groups) < 2:
        raise ValueError(
            f"a train/validation split needs at least 2 source images, found {len(groups)} group(s): {groups}"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = min(max(1, round(val_fraction * len(groups))), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    train = tuple(i for i, s in enumerate(samples) if s.group not in val_groups)
    val = tuple(
        i for i, s in enumerate(samples) if s.group in val_groups and (val_aug_copies or not s.is_copy)
    )
    if not val:  # a validation group made only of copies: keep them rather than validate on nothing
        val = tuple(i for i, s in enumerate(samples) if s.group in val_groups)
    return Split(train, val)
