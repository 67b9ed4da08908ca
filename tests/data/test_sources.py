import json

import numpy as np
import pytest

from helpers import CRACKFOREST, make_folder, write_pair
from poc59.core.classes import ARTEFACT, load_class_table
from poc59.data.sources import DataError, discover_pairs, metadata_rows


def test_discovers_real_crackforest_with_its_classes():
    samples = discover_pairs(CRACKFOREST)[0]
    assert len(samples) == 118
    assert all(s.image.suffix == ".jpg" and s.mask.suffix == ".png" for s in samples)
    assert all(s.image.stem == s.mask.stem == s.id == s.group for s in samples)
    table = load_class_table(CRACKFOREST)
    assert table.names == ("background", "crack") and table.num_classes == 2
    assert table.palette[0] == "#000000" and table.palette[1] != table.palette[0]


def test_groups_originals_with_their_copies(tmp_path):
    samples = discover_pairs(make_folder(tmp_path, n=3, copies=2))[0]
    assert len(samples) == 9
    by_group = {}
    for s in samples:
        by_group.setdefault(s.group, []).append((s.id, s.is_copy))
    assert by_group["img001"] == [("img001", False), ("img001_aug1", True), ("img001_aug2", True)]


def test_missing_folder_says_where_and_what_to_do(tmp_path):
    with pytest.raises(DataError, match="experiment=quickstart") as err:
        discover_pairs(tmp_path / "nowhere")[0]
    assert str(tmp_path / "nowhere") in str(err.value)


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match="hold no images"):
        discover_pairs(tmp_path)[0]


def test_unpaired_files_are_named(tmp_path):
    make_folder(tmp_path, n=2, copies=0)
    (tmp_path / "annotations" / "img001.png").unlink()
    write_pair(tmp_path, "extra", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
    (tmp_path / "images" / "extra.png").unlink()
    with pytest.raises(DataError) as err:
        discover_pairs(tmp_path)[0]
    assert "image without mask" in str(err.value) and "img001.png" in str(err.value)
    assert "mask without image" in str(err.value) and "extra.png" in str(err.value)


def test_classes_json_overrides_and_bad_json_is_named(tmp_path):
    make_folder(tmp_path, n=2, copies=0)
    assert load_class_table(tmp_path) is ARTEFACT
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    assert load_class_table(tmp_path).names == ("a", "b", "c")
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(ValueError, match="classes.json"):
        load_class_table(tmp_path)


def test_a_metadata_file_that_cannot_serve_the_split_is_said_so(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n=6, copies=1, size=(16, 16))
    (root / "metadata.csv").write_text("id,content\nimg000,portrait\n")
    discover_pairs(root)[0]
    assert "metadata.csv has no material column: the split is stratified by rare classes only" in caplog.text
    caplog.clear()
    (root / "metadata.csv").write_text("id,material\nimg000,parchment\nimg001,film\n")
    samples = discover_pairs(root)[0]
    assert "gives the material of 2 of 6 source images (not of e.g. img002" in caplog.text
    assert {s.id: s.material for s in samples}["img000_aug1"] == "parchment"  # a copy takes its original's
    caplog.clear()
    (root / "metadata.csv").write_text("id,material\n" + "".join(f"img{i:03d},film\n" for i in range(6)))
    discover_pairs(root)[0]
    assert not caplog.text


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])  # "utf-16" writes its byte-order mark
def test_metadata_is_read_in_utf8_with_or_without_bom_and_utf16_with_bom(tmp_path, encoding):
    root = make_folder(tmp_path / "d", n=2, copies=0, size=(16, 16))
    (root / "metadata.csv").write_bytes("id,material\nimg000,Pergament\nimg001,Glas é\n".encode(encoding))
    assert metadata_rows(root)[0] == ["id", "material"]
    assert {s.id: s.material for s in discover_pairs(root)[0]} == {"img000": "Pergament", "img001": "Glas é"}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            "id,material\nimg000,Pergament\nimg001,Glasmalerei ä\n".encode("latin-1"),
            "is not UTF-8 text (line 3 holds byte 0xe4)",
        ),
        ("id,material\nimg000,film\n".encode("utf-16-le"), "is not a CSV text file (it holds NUL bytes)"),  # no BOM
        ("id,material\n".encode("utf-32"), "is UTF-32 text"),
        (bytes(range(256)) * 4, "is not UTF-8 text"),  # binary
    ],
    ids=["latin-1", "utf-16 without BOM", "utf-32", "binary"],
)
def test_metadata_in_another_encoding_is_refused_naming_the_file_and_the_fix(tmp_path, content, says):
    root = make_folder(tmp_path / "d", n=2, copies=0, size=(16, 16))
    (root / "metadata.csv").write_bytes(content)
    for read in (discover_pairs, metadata_rows):
        with pytest.raises(DataError) as err:
            read(root)
        assert str(root / "metadata.csv") in str(err.value) and says in str(err.value)
        assert "CSV UTF-8" in str(err.value)


def test_a_data_root_that_is_a_file_is_said_to_be_a_file_with_the_folder_to_use(tmp_path):
    root = make_folder(tmp_path / "d", n=2, copies=0, size=(16, 16))
    (root / "metadata.csv").write_text("id,material\n")
    with pytest.raises(DataError) as err:
        discover_pairs(root / "metadata.csv")[0]
    said = str(err.value)
    assert f"data.root is a file, not a folder: {root / 'metadata.csv'}" in said and "not found" not in said
    advice = said.split("data.root=")[-1].strip()
    assert len(discover_pairs(advice)[0]) == 2  # the advice, followed, is a dataset
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder.*\n.*holds images/ and annotations/"):
        discover_pairs(tmp_path / "notes.txt")[0]


def test_a_broken_link_is_named_as_one_not_as_a_mask_without_image(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n=3, copies=0, size=(16, 16))
    gone = tmp_path / "elsewhere" / "img001.png"
    (root / "images" / "img001.png").unlink()
    (root / "images" / "img001.png").symlink_to(gone)
    with pytest.raises(DataError) as err:
        discover_pairs(root)[0]
    said = str(err.value)
    assert f"{root / 'images' / 'img001.png'} -> {gone}" in said and "broken link" in said
    assert "without" not in said
    samples, skipped = discover_pairs(root, on_bad_file="skip")
    assert [s.id for s in samples] == ["img000", "img002"]
    assert skipped == [
        {
            "id": "img001",
            "image": str(root / "images" / "img001.png"),
            "mask": str(root / "annotations" / "img001.png"),
            "reason": f"{root / 'images' / 'img001.png'} is a broken link (its target {gone} is gone)",
        }
    ]
    assert "Skipping img001: " in caplog.text and "broken link" in caplog.text
