import pytest

from poc59.data.sources import discover
from poc59.data.split import grouped_split

from helpers import make_folder


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return discover(make_folder(tmp_path_factory.mktemp("split"), n=20, copies=3, size=(16, 16)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_group_on_both_sides(samples, seed):
    split = grouped_split(samples, 0.2, seed)
    train_groups = {samples[i].group for i in split.train}
    val_groups = {samples[i].group for i in split.val}
    assert not train_groups & val_groups
    assert len(val_groups) == 4 and len(train_groups) == 16
    assert all(not samples[i].is_copy for i in split.val)  # originals only by default
    assert len(split.train) == 16 * 4  # every training group keeps its copies


def test_split_is_seeded(samples):
    assert grouped_split(samples, 0.2, 3) == grouped_split(samples, 0.2, 3)
    assert grouped_split(samples, 0.2, 3) != grouped_split(samples, 0.2, 4)


def test_val_copies_on_request_and_split_dict(samples):
    split = grouped_split(samples, 0.2, 0, val_aug_copies=True)
    assert len(split.val) == 4 * 4
    d = split.to_dict(samples)
    assert set(d) == {"train", "val", "fingerprint"} and len(d["val"]) == 16
    assert d["fingerprint"] != grouped_split(samples, 0.2, 1).to_dict(samples)["fingerprint"]


def test_bad_fraction_and_too_few_groups(samples):
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_split(samples, 1.0, 0)
    with pytest.raises(ValueError, match="at least 2 source images"):
        grouped_split([s for s in samples if s.group == "img000"], 0.2, 0)
