import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from helpers import make_folder
from poc59.data.sources import DataError, Sample, discover_pairs
from poc59.data.split import Split, from_dict, grouped_split, load_split


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return discover_pairs(make_folder(tmp_path_factory.mktemp("split"), n=20, copies=3, size=(16, 16)))[0]


def synth(n_groups: int, copies: int = 2, materials: list[str] | None = None) -> list[Sample]:
    """Samples as discover_pairs()[0] would list them (sorted by id); the split never opens the files."""
    out = []
    for g in range(n_groups):
        gid = f"g{g:03d}"
        material = materials[g] if materials else None
        for k in range(copies + 1):
            sid = gid if k == 0 else f"{gid}_aug{k}"
            out.append(Sample(sid, Path(f"images/{sid}.png"), Path(f"annotations/{sid}.png"), gid, k > 0, material))
    return sorted(out, key=lambda s: s.id)


def groups_of(split: Split, samples: list[Sample]) -> dict[str, set[str]]:
    return {side: {samples[i].group for i in getattr(split, side)} for side in ("train", "val", "test")}


# -- the grouped split ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_group_on_both_sides(samples, seed):
    split = grouped_split(samples, 0.2, seed)
    train_groups = {samples[i].group for i in split.train}
    val_groups = {samples[i].group for i in split.val}
    assert not train_groups & val_groups
    assert len(val_groups) == 4 and len(train_groups) == 16
    assert all(not samples[i].is_copy for i in split.val)  # originals only by default
    assert len(split.train) == 16 * 4  # every training group keeps its copies
    assert split.test == ()


def test_no_group_on_two_sides_many_seeds_with_test_and_strata():
    materials = [f"m{g % 3}" for g in range(31)]
    samples = synth(31, copies=2, materials=materials)
    rng = np.random.default_rng(0)
    presence = rng.random((len(samples), 6)) < 0.15
    for seed in range(40):
        split = grouped_split(samples, 0.2, seed, test_fraction=0.1, presence=presence)
        g = groups_of(split, samples)
        assert not g["train"] & g["val"] and not g["train"] & g["test"] and not g["val"] & g["test"]
        assert g["train"] | g["val"] | g["test"] == {s.group for s in samples}  # every group somewhere
        assert (len(g["val"]), len(g["test"])) == (round(0.2 * 31), round(0.1 * 31))
        for side in ("train", "val", "test"):
            assert list(getattr(split, side)) == sorted(getattr(split, side))


def test_split_is_seeded(samples):
    assert grouped_split(samples, 0.2, 3) == grouped_split(samples, 0.2, 3)
    assert grouped_split(samples, 0.2, 3) != grouped_split(samples, 0.2, 4)


def test_without_strata_it_is_a_plain_seeded_permutation_of_groups(samples):
    """The previous (unstratified) split, so runs made before stratification keep their split."""
    groups = sorted({s.group for s in samples})
    order = np.random.default_rng(5).permutation(len(groups))
    expected = {groups[i] for i in order[:4]}
    assert groups_of(grouped_split(samples, 0.2, 5), samples)["val"] == expected


def test_val_copies_on_request_and_split_dict(samples):
    split = grouped_split(samples, 0.2, 0, val_aug_copies=True)
    assert len(split.val) == 4 * 4
    d = split.to_dict(samples)
    assert set(d) == {"train", "val", "test", "fingerprint"} and len(d["val"]) == 16 and d["test"] == []
    assert d["fingerprint"] != grouped_split(samples, 0.2, 1).to_dict(samples)["fingerprint"]


def test_held_out_group_of_copies_only_keeps_them():
    samples = [s for s in synth(10, copies=2) if s.id != "g003"]  # g003 has copies but no original
    for seed in range(20):
        split = grouped_split(samples, 0.5, seed)
        if "g003" in groups_of(split, samples)["val"]:
            assert {samples[i].id for i in split.val} >= {"g003_aug1", "g003_aug2"}
            break
    else:
        pytest.fail("g003 never drawn for validation")


def test_bad_fraction_and_too_few_groups(samples):
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_split(samples, 1.0, 0)
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_split(samples, 0.0, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        grouped_split(samples, 0.2, 0, test_fraction=-0.1)
    with pytest.raises(ValueError, match="val_fraction \\+ data.test_fraction"):
        grouped_split(samples, 0.5, 0, test_fraction=0.5)
    with pytest.raises(ValueError, match="at least 2 source images"):
        grouped_split([s for s in samples if s.group == "img000"], 0.2, 0)
    with pytest.raises(ValueError, match="at least 3 source images"):
        grouped_split([s for s in samples if s.group in ("img000", "img001")], 0.2, 0, test_fraction=0.2)
    with pytest.raises(ValueError, match="presence"):
        grouped_split(samples, 0.2, 0, presence=np.zeros((3, 4), bool))


# -- stratification ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_stratified_by_material_exactly(seed):
    materials = [f"m{g % 4}" for g in range(40)]  # 10 groups per material
    samples = synth(40, copies=1, materials=materials)
    split = grouped_split(samples, 0.2, seed)
    per_material = Counter(samples[i].material for i in split.val)
    assert per_material == {"m0": 2, "m1": 2, "m2": 2, "m3": 2}


def test_unstratified_split_would_not_balance_materials():
    """Control for the test above: with the materials hidden, some seed leaves them unbalanced."""
    materials = [f"m{g % 4}" for g in range(40)]
    samples = synth(40, copies=1, materials=materials)
    hidden = [Sample(s.id, s.image, s.mask, s.group, s.is_copy, None) for s in samples]
    unbalanced = 0
    for seed in range(10):
        split = grouped_split(hidden, 0.2, seed)
        if Counter(materials[int(samples[i].group[1:])] for i in split.val) != {f"m{k}": 2 for k in range(4)}:
            unbalanced += 1
    assert unbalanced > 0


def rare_class_setup(n_groups: int = 120, rare_groups: tuple[int, ...] = (3, 17, 40, 77, 101)):
    samples = synth(n_groups, copies=1)
    presence = np.zeros((len(samples), 4), bool)
    presence[:, 0] = True  # "clean" everywhere
    for i, s in enumerate(samples):
        g = int(s.group[1:])
        presence[i, 1] = g % 2 == 0  # a common class
        presence[i, 3] = g in rare_groups and not s.is_copy  # rare class 3, seen in the originals only
    return samples, presence, {f"g{g:03d}" for g in rare_groups}


def test_rare_class_reaches_validation_but_not_all_of_it():
    samples, presence, rare = rare_class_setup()
    for seed in range(30):
        val = groups_of(grouped_split(samples, 0.2, seed, presence=presence), samples)["val"]
        assert 1 <= len(val & rare) < len(rare), seed


def test_rare_class_without_presence_is_left_to_chance():
    """Control: without `presence` some seed puts none of the rare groups in validation."""
    samples, _, rare = rare_class_setup()
    assert any(not groups_of(grouped_split(samples, 0.2, seed), samples)["val"] & rare for seed in range(30))


def test_rare_class_with_materials_and_test_fraction():
    """Rare groups spread over materials: the (material, class) strata are too small, the class wins."""
    samples, presence, rare = rare_class_setup()
    samples = [Sample(s.id, s.image, s.mask, s.group, s.is_copy, f"m{int(s.group[1:]) % 4}") for s in samples]
    for seed in range(30):
        g = groups_of(grouped_split(samples, 0.2, seed, test_fraction=0.2, presence=presence), samples)
        assert len(g["val"] & rare) == 1 and len(g["test"] & rare) == 1, seed
        assert len(g["val"]) == 24 and len(g["test"]) == 24


def test_presence_accepts_a_torch_tensor():
    torch = pytest.importorskip("torch")
    samples, presence, _ = rare_class_setup()
    assert grouped_split(samples, 0.2, 3, presence=torch.from_numpy(presence)) == grouped_split(
        samples, 0.2, 3, presence=presence
    )


# -- test fraction and copies --------------------------------------------------------------------


@pytest.mark.parametrize("n_groups,test_fraction,n_test", [(20, 0.1, 2), (20, 0.25, 5), (3, 0.01, 1), (50, 0.15, 8)])
def test_test_fraction_sizes(n_groups, test_fraction, n_test):
    samples = synth(n_groups, copies=2)
    split = grouped_split(samples, 0.2, 0, test_fraction=test_fraction)
    g = groups_of(split, samples)
    assert len(g["test"]) == n_test
    assert len(g["val"]) == min(max(1, round(0.2 * n_groups)), n_groups - n_test - 1)
    assert len(g["train"]) == n_groups - n_test - len(g["val"]) >= 1
    assert not set(split.test) & set(split.val) and not set(split.test) & set(split.train)
    assert all(not samples[i].is_copy for i in split.test)  # held out: originals only
    assert len(split.train) == 3 * len(g["train"])


def test_use_aug_copies_false_drops_copies_everywhere():
    samples = synth(20, copies=3)
    split = grouped_split(samples, 0.2, 0, use_aug_copies=False, val_aug_copies=True, test_fraction=0.1)
    everything = split.train + split.val + split.test
    assert everything and not any(samples[i].is_copy for i in everything)
    assert len(everything) == 20
    with_copies = grouped_split(samples, 0.2, 0, val_aug_copies=True, test_fraction=0.1)
    assert len(with_copies.train) == 4 * len(split.train)  # the same groups, with their copies


# -- split.json ----------------------------------------------------------------------------------


def test_split_file_round_trip(tmp_path):
    samples = synth(30, copies=2, materials=[f"m{g % 3}" for g in range(30)])
    split = grouped_split(samples, 0.2, 4, test_fraction=0.1)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split.to_dict(samples)))
    loaded = load_split(path, samples)
    assert loaded == split
    assert loaded.to_dict(samples) == split.to_dict(samples)
    assert Split.from_dict(split.to_dict(samples), samples) == split


def test_split_file_with_unknown_id_names_it(tmp_path):
    samples = synth(10)
    d = grouped_split(samples, 0.2, 0).to_dict(samples)
    d["val"].append("ghost_image")
    del d["fingerprint"]  # deliberate edit: no fingerprint to check, so the id check speaks
    path = tmp_path / "split.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"split\.json.*1 image id.*ghost_image.*data\.split_file"):
        load_split(path, samples)


def test_split_file_with_an_extra_original_in_the_data():
    samples = synth(10)
    d = grouped_split(samples, 0.2, 0).to_dict(samples)
    more = synth(11)  # g010 and its copies are new
    with pytest.raises(DataError, match="not in the split: g010"):
        from_dict(d, more)


def test_split_file_new_copies_of_training_groups_join_training():
    originals = [s for s in synth(10) if not s.is_copy]
    split = grouped_split(originals, 0.2, 0)
    d = split.to_dict(originals)
    with_copies = synth(10, copies=2)
    loaded = from_dict(d, with_copies)
    train_groups = {originals[i].group for i in split.train}
    assert {with_copies[i].id for i in loaded.train} == {s.id for s in with_copies if s.group in train_groups}
    assert [with_copies[i].id for i in loaded.val] == d["val"]  # validation as the file lists it


def test_split_file_written_with_copies_read_without():
    samples = synth(10, copies=2)
    d = grouped_split(samples, 0.2, 0).to_dict(samples)
    originals = [s for s in samples if not s.is_copy]
    with pytest.raises(DataError, match="not in the data"):
        from_dict(d, originals)  # copies are expected unless use_aug_copies=False
    loaded = from_dict(d, originals, use_aug_copies=False)
    assert [originals[i].id for i in loaded.train] == [x for x in d["train"] if "_aug" not in x]
    assert from_dict(d, samples, use_aug_copies=False).train == tuple(
        i for i in grouped_split(samples, 0.2, 0).train if not samples[i].is_copy
    )


def test_split_file_tampered_fingerprint_and_crossing_group(tmp_path):
    samples = synth(10)
    d = grouped_split(samples, 0.2, 0).to_dict(samples)
    moved = dict(d, train=d["train"][1:], val=d["val"] + d["train"][:1])  # ids moved, fingerprint kept
    path = tmp_path / "split.json"
    path.write_text(json.dumps(moved))
    with pytest.raises(DataError, match="fingerprint"):
        load_split(path, samples)
    # a train copy moved to validation, fingerprint removed: its group would be on both sides
    copy = next(x for x in d["train"] if x.endswith("_aug1"))
    crossing = {"train": [x for x in d["train"] if x != copy], "val": d["val"] + [copy], "test": []}
    with pytest.raises(DataError, match="more than one side.*" + copy.split("_")[0]):
        from_dict(crossing, samples)


def test_split_file_missing_or_not_json(tmp_path):
    samples = synth(4)
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nope.json", samples)
    with pytest.raises(DataError, match=r"nope.json not found; restore the run's") as err:  # the caller's advice
        load_split(tmp_path / "nope.json", samples, fix="restore the run's split.json")
    assert "data.split_file" not in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_split(tmp_path / "bad.json", samples)


def test_a_few_class_set_is_stratified_by_the_rarest_class_each_image_holds(tmp_path):
    """No class under the 5 % rarity threshold (a defect set: background everywhere, a defect in 6 of 20
    images): the split still keys each image by the rarest class it holds, so validation gets the
    defect's share (0.2 x 6 ~ 1) whatever the seed; a plain permutation does not."""
    samples = discover_pairs(make_folder(tmp_path, n=20, copies=0, size=(16, 16)))[0]
    presence = np.zeros((20, 2), bool)
    presence[:, 0] = True
    defect = [2, 5, 7, 11, 13, 17]
    presence[defect, 1] = True
    groups = {samples[i].group for i in defect}
    val_share = lambda split: len(groups & {samples[i].group for i in split.val})
    stratified = [val_share(grouped_split(samples, 0.2, seed=s, presence=presence)) for s in range(20)]
    plain = [val_share(grouped_split(samples, 0.2, seed=s)) for s in range(20)]
    assert set(stratified) == {1}
    assert set(plain) != {1}
