"""Grouped, stratified, seeded train/validation(/test) split, and its split.json form.

An original and all its augmented copies are one group and land on one side,
so no validation image leaks into training through a flipped copy (the earlier
system's random split over files did exactly that).

Groups are stratified by material and by the rarest of the rare classes they
contain, so a few-hundred-image set does not put all the Burn marks on one side
by chance. A split written to split.json can be read back (`data.split_file`),
so the encoders of a sweep are compared on exactly the same images.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poc59.data.sources import DEFAULT_GROUP_PATTERN, DataError, Sample

SIDES = ("train", "val", "test")
MIN_STRATUM = 2  # strata smaller than this are coarsened, then pooled, so singletons don't force odd splits


def _fingerprint(ids: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Indices into the sample list, per side, each sorted ascending."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...] = ()

    def to_dict(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """The form written to split.json: ids per side ("test" always present) and a fingerprint over them."""
        d: dict[str, Any] = {side: [samples[i].id for i in getattr(self, side)] for side in SIDES}
        d["fingerprint"] = _fingerprint(d)
        return d

    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        samples: Sequence[Sample],
        *,
        use_aug_copies: bool = True,
        group_pattern: str = DEFAULT_GROUP_PATTERN,
        source: str = "split file",
    ) -> Split:
        """See `from_dict` (module level)."""
        return from_dict(d, samples, use_aug_copies=use_aug_copies, group_pattern=group_pattern, source=source)


# -- building a split ---------------------------------------------------------------------------


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"data.test_fraction must be in [0, 1), got {test_fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"data.val_fraction + data.test_fraction must leave some training data, got "
            f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
        )


def _presence_array(presence: Any, n: int) -> np.ndarray | None:
    if presence is None:
        return None
    if hasattr(presence, "detach"):  # a torch tensor, possibly on a device
        presence = presence.detach().cpu().numpy()
    arr = np.asarray(presence).astype(bool)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"presence must be a [N_samples, C] array with N_samples={n}, got shape {arr.shape}")
    return arr


def _group_keys(
    groups: list[str],
    members: dict[str, list[int]],
    samples: Sequence[Sample],
    presence: np.ndarray | None,
    rare_fraction: float,
) -> dict[str, tuple[str, str]]:
    """Stratum key per group: (material of its original, rarest rare class it contains), then coarsened.

    Rare classes are those present in at least one but fewer than `rare_fraction` of the
    groups; when no class is that rare (a set of a few classes), every class missing from some
    group is a candidate, so each group is keyed by the rarest class it holds. A (material, class) stratum smaller than MIN_STRATUM first drops the material
    (keeping rare classes on both sides matters most for per-class IoU), then the class,
    then joins one catch-all stratum.
    """
    material: dict[str, str] = {}
    for g in groups:
        originals = [samples[i] for i in members[g] if not samples[i].is_copy] or [samples[i] for i in members[g]]
        material[g] = next((s.material for s in originals if s.material), "")
    rare: dict[str, str] = {g: "" for g in groups}
    if presence is not None and presence.shape[1]:
        in_group = np.stack([presence[members[g]].any(axis=0) for g in groups])  # [G, C]
        counts = in_group.sum(axis=0)
        is_rare = (counts >= 1) & (counts < rare_fraction * len(groups))
        if not is_rare.any():  # no class under the threshold (a few-class set): the rarest one each group holds
            is_rare = (counts >= 1) & (counts < len(groups))
        for k, g in enumerate(groups):
            candidates = np.flatnonzero(in_group[k] & is_rare)
            if candidates.size:  # the rarest by group count; ties go to the lower class id
                rare[g] = str(int(candidates[np.argmin(counts[candidates])]))

    # The ladder each group steps down while its stratum is too small; "" means "not stratified on this".
    ladder = {
        g: list(dict.fromkeys([(material[g], rare[g]), ("", rare[g]), (material[g], ""), ("", "")])) for g in groups
    }
    level = dict.fromkeys(groups, 0)
    while True:
        sizes = Counter(ladder[g][level[g]] for g in groups)
        small = [g for g in groups if sizes[ladder[g][level[g]]] < MIN_STRATUM and level[g] < len(ladder[g]) - 1]
        if not small:
            break
        for g in small:
            level[g] += 1
    keys = {g: ladder[g][level[g]] for g in groups}
    return keys


def _apportion(
    sizes: list[int], capacity: list[int], fraction: float, total: int, rng: np.random.Generator
) -> list[int]:
    """Largest-remainder allocation of `total` over strata (quota fraction*size, at most capacity).

    Ties between equal remainders are broken in a seeded random order, so which small
    stratum gets the extra group varies with the seed instead of always being the first.
    """
    quota = [fraction * n for n in sizes]
    take = [min(int(np.floor(q)), c) for q, c in zip(quota, capacity)]
    tiebreak = rng.permutation(len(sizes))
    order = sorted(range(len(sizes)), key=lambda s: (-(quota[s] - np.floor(quota[s])), tiebreak[s]))
    while sum(take) < total:
        before = sum(take)
        for s in order:
            if sum(take) == total:
                break
            if take[s] < capacity[s]:
                take[s] += 1
        if sum(take) == before:  # every stratum is full; cannot happen with the totals grouped_split asks for
            break
    while sum(take) > total:  # floors exceed the total only if the total was clamped down
        for s in reversed(order):
            if sum(take) == total:
                break
            if take[s] > 0:
                take[s] -= 1
    return take


def _num_test(test_fraction: float, num_groups: int) -> int:
    """Test groups: the fraction, at least one (when asked for), leaving two for training and validation."""
    return min(max(1, round(test_fraction * num_groups)), num_groups - 2) if test_fraction > 0 else 0


@dataclass(frozen=True)
class GroupPlan:
    """The groups of a set in the seeded, stratified order every split and fold assignment deals from."""

    samples: Sequence[Sample]
    members: dict[str, list[int]]  # group -> sample indices (copies dropped when use_aug_copies=False)
    strata: list[list[str]]  # groups per stratum, each in its seeded order; strata in sorted key order
    seed: int

    @property
    def num_groups(self) -> int:
        return len(self.members)

    def test_groups(self, test_fraction: float) -> tuple[set[str], list[int]]:
        """The groups held out for test (the first of each stratum, largest-remainder apportioned), and the
        test take per stratum. The same groups whatever is done with the rest, so a plain split and the
        folds of one seed hold out the same test images."""
        if test_fraction <= 0:
            return set(), [0] * len(self.strata)
        sizes = [len(s) for s in self.strata]
        take = _apportion(sizes, sizes, test_fraction, _num_test(test_fraction, self.num_groups), self.tie_rng)
        return {g for order, t in zip(self.strata, take) for g in order[:t]}, take

    @property
    def tie_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1])

    def assemble(self, side_of: dict[str, str], val_aug_copies: bool) -> Split:
        """Sample indices per side from {group: side}; held-out sides keep originals unless `val_aug_copies`
        (a held-out group made only of copies keeps them, rather than vanish)."""
        out: dict[str, list[int]] = {side: [] for side in SIDES}
        for g in sorted(self.members):
            side = side_of[g]
            idx = self.members[g]
            if side != "train" and not val_aug_copies:
                idx = [i for i in idx if not self.samples[i].is_copy] or idx
            out[side].extend(idx)
        return Split(*(tuple(sorted(out[side])) for side in SIDES))


def plan_groups(
    samples: Sequence[Sample],
    seed: int = 0,
    *,
    use_aug_copies: bool = True,
    presence: Any = None,
    rare_fraction: float = 0.05,
) -> GroupPlan:
    """Group the samples (an original and its `_augK` copies), stratify the groups by material and rare
    class (see `_group_keys`), and shuffle each stratum with `seed`."""
    pres = _presence_array(presence, len(samples))
    kept = [i for i, s in enumerate(samples) if use_aug_copies or not s.is_copy]
    members: dict[str, list[int]] = defaultdict(list)
    for i in kept:
        members[samples[i].group].append(i)
    groups = sorted(members)
    keys = _group_keys(groups, members, samples, pres, rare_fraction)
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for g in groups:
        strata[keys[g]].append(g)
    rng = np.random.default_rng(seed)
    shuffled = [[strata[k][j] for j in rng.permutation(len(strata[k]))] for k in sorted(strata)]
    return GroupPlan(samples, dict(members), shuffled, seed)


def grouped_split(
    samples: Sequence[Sample],
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    val_aug_copies: bool = False,
    test_fraction: float = 0.0,
    use_aug_copies: bool = True,
    presence: Any = None,
    rare_fraction: float = 0.05,
) -> Split:
    """Hold out `val_fraction` (and `test_fraction`) of the groups, stratified by material and rare class.

    - A group (an original and its `_augK` copies) is on exactly one side.
    - `use_aug_copies=False` drops every copy from every side.
    - Validation and test keep only originals unless `val_aug_copies`: copies of a
      held-out image add no new information and would weight it several times
      (a held-out group made only of copies keeps them, rather than vanish).
    - `presence` ([N_samples, C] bool, sample i contains class c) enables the
      rare-class stratification; without it and without materials this is a plain
      seeded permutation of the groups.
    - At least one validation group, one test group when `test_fraction > 0`, and one training group.
    """
    check_fractions(val_fraction, test_fraction)
    plan = plan_groups(samples, seed, use_aug_copies=use_aug_copies, presence=presence, rare_fraction=rare_fraction)
    G = plan.num_groups
    n_sides = 3 if test_fraction > 0 else 2
    if G < n_sides:
        raise DataError(
            f"a train/validation{'/test' if n_sides == 3 else ''} split needs at least {n_sides} source images, "
            f"found {G} ({', '.join(sorted(plan.members)[:10])}; an original and its _augK copies are one): add images"
            + (", or hold out no test images (data.test_fraction=0)" if n_sides == 3 else "")
        )
    n_test = _num_test(test_fraction, G)
    n_val = min(max(1, round(val_fraction * G)), G - n_test - 1)
    tie_rng = plan.tie_rng
    sizes = [len(s) for s in plan.strata]
    t_take = _apportion(sizes, sizes, test_fraction, n_test, tie_rng)
    v_take = _apportion(sizes, [n - t for n, t in zip(sizes, t_take)], val_fraction, n_val, tie_rng)
    side_of: dict[str, str] = {}
    for order, t, v in zip(plan.strata, t_take, v_take):
        for j, g in enumerate(order):
            side_of[g] = "test" if j < t else "val" if j < t + v else "train"
    return plan.assemble(side_of, val_aug_copies)


# -- reading a split back -----------------------------------------------------------------------


SPLIT_FIX = (
    "point data.split_file at a split.json written for these images, or set data.split_file=null for a new split "
    "(the file is left as it is: it may be another run's record)"
)


def _few(ids: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(list(ids)[:k])
    return shown + (f", ... ({len(ids) - k} more)" if len(ids) > k else "")


def from_dict(
    d: dict[str, Any],
    samples: Sequence[Sample],
    *,
    use_aug_copies: bool = True,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
    source: str = "split file",
    fix: str = SPLIT_FIX,
) -> Split:
    """Map the ids of a split.json back to indices into `samples`; refuse anything that isn't the same data.

    - ids in the file missing from the data: DataError (the file describes other images);
      with `use_aug_copies=False`, copies named in the file (by `group_pattern`) are dropped instead.
    - samples not in the file: a copy of a training group joins training (new copies
      add augmentation, not new images); a copy of a held-out group stays out (as the
      split left it); anything else is a DataError.
    - a group on two sides, an id listed twice, or a fingerprint that does not match
      the ids (the file was edited by hand): DataError. A file without a fingerprint
      is taken as written on purpose and not checked.
    """
    ids = _listed_ids(d, source, fix)
    index = {s.id: i for i, s in enumerate(samples)}
    _check_listed_in_data(ids, index, re.compile(group_pattern), use_aug_copies, source, fix)
    out = {
        side: [index[x] for x in ids[side] if x in index and (use_aug_copies or not samples[index[x]].is_copy)]
        for side in SIDES
    }
    sides = _sides_of_groups(out, samples, source, fix)
    _place_unlisted(out, samples, {x for side in SIDES for x in ids[side]}, sides, use_aug_copies, source, fix)
    return Split(*(tuple(sorted(out[side])) for side in SIDES))


def _listed_ids(d: Any, source: str, fix: str) -> dict[str, list[str]]:
    """{side: ids} of a split file, once its shape, its fingerprint and its ids (none twice) are checked."""
    if not isinstance(d, dict) or not all(isinstance(d.get(side), list) for side in ("train", "val")):
        raise DataError(f'{source}: not a split file (expected lists "train" and "val" of image ids); {fix}')
    if "test" in d and not isinstance(d["test"], list):
        raise DataError(f'{source}: "test" must be a list of image ids; {fix}')
    ids = {side: [str(x) for x in d.get(side) or []] for side in SIDES}
    if "fingerprint" in d:
        expected = _fingerprint(ids) if "test" in d else _fingerprint({"train": ids["train"], "val": ids["val"]})
        if d["fingerprint"] != expected:
            raise DataError(
                f"{source}: fingerprint {d['fingerprint']} does not match its ids ({expected}): the file was edited "
                f'after it was written; {fix}, or remove the "fingerprint" entry if the edit is deliberate'
            )
    if not ids["train"] or not ids["val"]:
        raise DataError(f"{source}: no {'training' if not ids['train'] else 'validation'} images listed; {fix}")
    listed = Counter(x for side in SIDES for x in ids[side])
    twice = sorted(x for x, n in listed.items() if n > 1)
    if twice:
        raise DataError(f"{source}: {len(twice)} id(s) listed more than once: {_few(twice)}; {fix}")
    return ids


def _check_listed_in_data(
    ids: dict[str, list[str]],
    index: dict[str, int],
    copy_re: re.Pattern,
    use_aug_copies: bool,
    source: str,
    fix: str,
) -> None:
    """Every listed id is in the data (without copies in use, a listed copy may be gone)."""
    missing = list(dict.fromkeys(x for side in SIDES for x in ids[side] if x not in index))
    if not use_aug_copies:
        missing = [x for x in missing if not copy_re.match(x)]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} image id(s) in the split are not in the data: {_few(sorted(missing))}. "
            f"A split file must describe the same images; {fix}"
        )


def _sides_of_groups(
    out: dict[str, list[int]], samples: Sequence[Sample], source: str, fix: str
) -> dict[str, set[str]]:
    """{group: the sides its listed images are on}; a group on two sides is a DataError."""
    sides: dict[str, set[str]] = defaultdict(set)
    for side in SIDES:
        for i in out[side]:
            sides[samples[i].group].add(side)
    crossing = sorted(g for g, on in sides.items() if len(on) > 1)
    if crossing:
        raise DataError(
            f"{source}: {len(crossing)} source image(s) have copies on more than one side: {_few(crossing)} "
            f"(an original and its copies must stay on one side); {fix}"
        )
    return sides


def _place_unlisted(
    out: dict[str, list[int]],
    samples: Sequence[Sample],
    listed: set[str],
    sides: dict[str, set[str]],
    use_aug_copies: bool,
    source: str,
    fix: str,
) -> None:
    """A copy the file does not list joins training if its group trains, else stays out (validation and test
    stay as the file lists them); any other image the file does not list is a DataError."""
    unknown = []
    for i, s in enumerate(samples):
        if s.id in listed or (s.is_copy and not use_aug_copies):
            continue
        if s.is_copy and s.group in sides:
            if sides[s.group] == {"train"}:
                out["train"].append(i)
            continue
        unknown.append(s.id)
    if unknown:
        raise DataError(
            f"{source}: {len(unknown)} image(s) in the data are not in the split: {_few(unknown)}. "
            f"A split file must describe the same images; {fix}"
        )


def load_split(
    path: str | Path,
    samples: Sequence[Sample],
    *,
    use_aug_copies: bool = True,
    group_pattern: str = DEFAULT_GROUP_PATTERN,
    fix: str = SPLIT_FIX,
) -> Split:
    """Read a split.json (see `from_dict`); DataError naming the file when it is missing or not JSON. `fix` is
    the advice a refusal ends with (the default's keys are those of a split the user gave)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        if fix != SPLIT_FIX:  # a split the caller set (a run's own): data.split_file is not the user's key there
            raise DataError(f"{path} not found; {fix}") from None
        raise DataError(
            f"data.split_file not found: {path}; point it at an existing split.json or set it to null"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"data.split_file {path} is not readable JSON ({err}); {fix}") from None
    return from_dict(d, samples, use_aug_copies=use_aug_copies, group_pattern=group_pattern, source=str(path), fix=fix)
