"""Cross-validation folds over source images: grouped stratified k-fold, and leave one group out.

One 80/20 split of a few hundred images gives a validation score whose spread between splits is larger
than the differences between encoders; K folds score every image once, by a model that did not train on
it. The rules:

- **Groups, never images.** An original and its `_augK` copies are one group, in exactly one fold.
- **Test first.** `test_fraction` holds out the same groups a plain split of the same seed holds out
  (`GroupPlan.test_groups`); they never enter a fold.
- **K folds** (`folds=K`): the groups of each stratum (material, rarest rare class: the split's strata,
  see `poc59.data.split`), in their seeded order, are dealt one at a time to the fold holding the fewest
  of that stratum, then the fewest groups, ties in a seeded fold order. So each fold gets its share of
  every material and rare class, fold sizes differ by at most one group, and the partition depends only
  on the data and `seed`: the same for every encoder and every fold run of a sweep.
- **Leave one group out** (`by=<metadata.csv column>`, e.g. material or content): one fold per value
  present, in sorted order. A group takes the value of its original (by id, else by group id). Groups
  without a value are never held out (they always train; the log names how many). A value with fewer
  than `min_images` source images is merged into one fold named "other"; without `min_images`, a value
  with fewer than MIN_FOLD_IMAGES is refused with its count.
- **Fold i** validates on its groups (originals only unless `val_aug_copies`, as the split does) and
  trains on every other fold's groups.

The record in split.json (`cv`) names the fold, the number of folds, the column, the fold's value, and a
fingerprint of the whole partition: runs of one cross-validation share it, whichever fold they hold out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from poc59.data.sources import DEFAULT_GROUP_PATTERN, DataError, Sample, discover_pairs, metadata_rows
from poc59.data.split import GroupPlan, Split, plan_groups
from poc59.data.synthetic import ensure_synthetic

log = logging.getLogger(__name__)

MIN_FOLD_IMAGES = 3  # a held-out value with fewer source images gives a fold score that means little
OTHER = "other"  # the fold of the merged small values


@dataclass(frozen=True)
class Folds:
    """A partition of the non-test groups into folds."""

    plan: GroupPlan
    folds: tuple[tuple[str, ...], ...]  # group ids per fold, sorted
    names: tuple[str, ...]  # "0".."K-1", or the held-out values
    test: frozenset[str]  # test groups (never in a fold)
    by: str | None = None  # the metadata column of leave-one-group-out
    always_train: tuple[str, ...] = ()  # groups without a value for `by`

    def index(self, fold: int | str) -> int:
        """The fold's position from its index, or (leave one group out) its value."""
        if isinstance(fold, bool) or not isinstance(fold, int | str):
            raise DataError(f"data.cv.fold={fold!r}: give a fold index 0-{len(self.folds) - 1} or a value")
        if isinstance(fold, int):
            if 0 <= fold < len(self.folds):
                return fold
        elif fold in self.names:
            return self.names.index(fold)
        listed = ", ".join(f"{i}={n}" for i, n in enumerate(self.names)) if self.by else f"0-{len(self.folds) - 1}"
        raise DataError(f"data.cv.fold={fold}: there are {len(self.folds)} folds ({listed}); pick one of them")

    def split(self, fold: int | str, val_aug_copies: bool = False) -> Split:
        """Fold `fold` as a train/validation/test split."""
        i = self.index(fold)
        held = set(self.folds[i])
        side_of = {g: "test" if g in self.test else "val" if g in held else "train" for g in self.plan.members}
        return self.plan.assemble(side_of, val_aug_copies)

    def fingerprint(self) -> str:
        """Over every fold's ids and the test ids: the same for all runs of one cross-validation."""
        ids = {
            "folds": [sorted(s.id for g in fold for s in self._members(g)) for fold in self.folds],
            "names": list(self.names),
            "test": sorted(s.id for g in self.test for s in self._members(g)),
        }
        return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]

    def record(self, fold: int | str) -> dict[str, Any]:
        """The `cv` entry of split.json and summary.json."""
        i = self.index(fold)
        return {
            "fold": i,
            "folds": len(self.folds),
            "by": self.by,
            "value": self.names[i] if self.by else None,
            "values": list(self.names) if self.by else None,
            "fold_images": [sum(1 for g in f for s in self._members(g) if not s.is_copy) for f in self.folds],
            "partition_fingerprint": self.fingerprint(),
        }

    def _members(self, group: str) -> list[Sample]:
        return [self.plan.samples[i] for i in self.plan.members[group]]


def make_folds(
    samples: Sequence[Sample],
    *,
    folds: int | None = None,
    by: str | None = None,
    root: str | Path | None = None,
    min_images: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.0,
    use_aug_copies: bool = True,
    presence: Any = None,
) -> Folds:
    """K stratified folds (`folds`), or one fold per value of the metadata column `by` (read from
    ROOT/metadata.csv under `root`); see the module docstring for the rules."""
    if (folds is None) == (by is None):
        raise DataError("cross-validation takes data.cv.folds=K or data.cv.by=<metadata column>, one of them")
    plan = plan_groups(samples, seed, use_aug_copies=use_aug_copies, presence=presence)
    test, take = plan.test_groups(test_fraction)
    if by is None:
        return _k_folds(plan, int(folds), test, take)
    return _by_value(plan, by, Path(root) if root is not None else None, min_images, test)


def _k_folds(plan: GroupPlan, k: int, test: set[str], take: list[int]) -> Folds:
    left = plan.num_groups - len(test)
    if k < 2:
        raise DataError(f"data.cv.folds={k}: cross-validation needs at least 2 folds")
    if left < k:
        raise DataError(
            f"data.cv.folds={k} needs at least {k} source images outside the test split, found {left} "
            "(an original and its _augK copies are one): use fewer folds"
        )
    rank = np.random.default_rng([plan.seed, 2]).permutation(k)  # the seeded fold order that breaks ties
    members: list[list[str]] = [[] for _ in range(k)]
    for order, t in zip(plan.strata, take):
        here = [0] * k
        for g in order[t:]:
            f = min(range(k), key=lambda j: (here[j], len(members[j]), rank[j]))
            members[f].append(g)
            here[f] += 1
    return Folds(plan, tuple(tuple(sorted(m)) for m in members), tuple(str(i) for i in range(k)), frozenset(test))


def _group_values(
    members: dict[str, list[int]], samples: Sequence[Sample], by: str, root: Path | None
) -> dict[str, str]:
    """{group: its value of the metadata column `by` ("" when it has none)}: its original's row, else the
    row named by the group id."""
    columns, rows = metadata_rows(root) if root is not None else ([], {})
    if by not in columns or not rows:
        raise DataError(
            f"data.cv.by={by}: {root / 'metadata.csv' if root else 'metadata.csv'} has no {by!r} column"
            + (f" (columns: {', '.join(columns)})" if columns else " (no file, or no id column)")
            + "; leave one group out needs a value per image"
        )
    value: dict[str, str] = {}
    for g, idx in members.items():
        originals = [samples[i] for i in idx if not samples[i].is_copy] or [samples[i] for i in idx]
        row = next((rows[s.id] for s in originals if s.id in rows), None) or rows.get(g) or {}
        value[g] = (row.get(by) or "").strip()
    return value


def _fold_names(value: dict[str, str], by: str, min_images: int | None) -> dict[str, str]:
    """{group: its fold's name}: its value, or OTHER for the values merged by `min_images`. Counted over
    every group (the test groups too), so the folds are known from the file names and metadata.csv alone."""
    counts = Counter(v for v in value.values() if v)
    floor = min_images if min_images is not None else MIN_FOLD_IMAGES
    small = sorted(v for v, n in counts.items() if n < floor)
    if small and min_images is None:
        listed = ", ".join(f"{v} ({counts[v]})" for v in small)
        raise DataError(
            f"data.cv.by={by}: too few source images to hold out for {listed} (at least {MIN_FOLD_IMAGES} each): "
            f"data.cv.min_images={MIN_FOLD_IMAGES} merges every value with fewer than that into one fold "
            f"{OTHER!r}, or give those images another {by} in metadata.csv"
        )
    merged = sum(counts[v] for v in small)
    if small and merged < floor:
        raise DataError(
            f"data.cv.by={by}: the merged fold {OTHER!r} ({', '.join(small)}) has {merged} source image(s), "
            f"fewer than data.cv.min_images={floor}: lower data.cv.min_images"
        )
    fold_of = {g: (OTHER if v in small else v) for g, v in value.items() if v}
    if len(set(fold_of.values())) < 2:
        raise DataError(
            f"data.cv.by={by}: leave one group out needs at least 2 values, found {sorted(set(fold_of.values()))}"
        )
    if small:
        log.info("data.cv.by=%s: %s merged into the fold %r", by, ", ".join(small), OTHER)
    return fold_of


def _ordered(names: set[str]) -> list[str]:
    return sorted(names - {OTHER}) + ([OTHER] if OTHER in names else [])


def _by_value(plan: GroupPlan, by: str, root: Path | None, min_images: int | None, test: set[str]) -> Folds:
    value = _group_values(plan.members, plan.samples, by, root)
    fold_of = _fold_names(value, by, min_images)
    names = _ordered(set(fold_of.values()))
    without = sorted(g for g, v in value.items() if not v and g not in test)
    if without:
        log.warning(
            "data.cv.by=%s: %d source image(s) have no %s in metadata.csv and are never held out (they always "
            "train): %s",
            by,
            len(without),
            by,
            ", ".join(without[:5]) + (", ..." if len(without) > 5 else ""),
        )
    groups = tuple(tuple(sorted(g for g, n in fold_of.items() if n == name and g not in test)) for name in names)
    emptied = [n for n, g in zip(names, groups) if not g]
    if emptied:
        raise DataError(
            f"data.cv.by={by}: every source image of {', '.join(emptied)} is in the test split, so its fold is "
            "empty: hold out no test images (data.test_fraction=0) or change data.seed"
        )
    return Folds(plan, groups, tuple(names), frozenset(test), by, tuple(without))


def sweep_values(data: Any) -> str:
    """The sweep over every fold of `data`'s cross-validation, as hydra.sweeper.params writes it
    (`data.cv.fold: ${cv_folds:}` in experiment=cv and experiment=leave_one_material_out): range(0,K) for
    K folds; for leave one group out, the fold values from the file names and metadata.csv (the
    built-in synthetic set is generated first)."""
    cv = data.get("cv") or {}
    if cv.get("folds") is not None:
        return f"range(0,{int(cv['folds'])})"
    if not cv.get("by"):
        raise DataError("the cross-validation sweep needs data.cv.folds=K or data.cv.by=<metadata column>")
    root = Path(str(data.root)).expanduser()
    if data.get("synthetic"):
        ensure_synthetic(root, **dict(data.synthetic))
    samples, _ = discover_pairs(root, data.get("group_pattern") or DEFAULT_GROUP_PATTERN, "skip")
    if not data.get("use_aug_copies", True):
        samples = [s for s in samples if not s.is_copy]
    members: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        members.setdefault(s.group, []).append(i)
    names = _ordered(
        set(_fold_names(_group_values(members, samples, cv.by, root), cv.by, cv.get("min_images")).values())
    )
    return ",".join("'" + n.replace("\\", "\\\\").replace("'", "\\'") + "'" for n in names)


def register_cv_folds() -> None:
    """${cv_folds:}: every fold of the config's data.cv (`sweep_values`), for hydra.sweeper.params."""
    OmegaConf.register_new_resolver("cv_folds", lambda *, _root_: sweep_values(_root_.data), replace=True)
