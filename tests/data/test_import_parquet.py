"""The parquet importer: ARTeFACT's published shards -> the folder layout, checked on the way.

Each test writes its own small shards in the Hugging Face schema (struct image
columns {bytes, path}, id, material, content, type, a description column).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from poc59.core.classes import ARTEFACT
from poc59.data.import_parquet import METADATA_COLUMNS, import_parquet, safe_id
from poc59.data.sources import DataError, discover_pairs
from poc59.import_parquet import main

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
ALL_LABELS = np.array([*range(ARTEFACT.num_classes), ARTEFACT.ignore_index], dtype=np.uint8)
SIZES = [(20, 12), (9, 17), (16, 16), (31, 10), (7, 22)]  # (width, height), non-square mostly


def png(img: Image.Image | np.ndarray) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def colour(labels: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: ARTEFACT.num_classes] = ARTEFACT.rgb()
    lut[ARTEFACT.ignore_index] = (90, 0, 7)
    return lut[labels]


def make_row(rid: str, w: int, h: int, rng: np.random.Generator, labels: np.ndarray | None = None, **over) -> dict:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if labels is None:
        labels = rng.choice(ALL_LABELS, size=(h, w)).astype(np.uint8)
    row = {
        "id": rid,
        "image": {"bytes": png(image), "path": f"{rid}.png"},
        "annotation": {"bytes": png(labels), "path": f"{rid}_ann.png"},
        "annotation_rgb": {"bytes": png(colour(labels)), "path": f"{rid}_rgb.png"},
        "material": "Parchment",
        "content": "Artistic depiction",
        "type": "Manuscript",
        "description": f"a damaged thing called {rid}",
        "_image": image,
        "_labels": labels,
    }
    row.update(over)
    return row


def write_shard(path: Path, rows: list[dict], image_type: pa.DataType = IMAGE_TYPE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "image": pa.array([r["image"] for r in rows], image_type),
        "annotation": pa.array([r["annotation"] for r in rows], image_type),
        "annotation_rgb": pa.array([r["annotation_rgb"] for r in rows], image_type),
    }
    for name in ("material", "content", "type", "description"):
        cols[name] = pa.array([r[name] for r in rows], pa.string())
    pq.write_table(pa.table(cols), path, row_group_size=2)
    return path


@pytest.fixture()
def shards(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Two shards, five rows of different sizes; every label (0..15, 255) occurs."""
    rng = np.random.default_rng(0)
    rows = [make_row(f"item{i}", w, h, rng) for i, (w, h) in enumerate(SIZES)]
    rows[0]["_labels"][0, : ALL_LABELS.size] = ALL_LABELS  # 20 px wide: room for all 17
    rows[0]["annotation"]["bytes"] = png(rows[0]["_labels"])
    rows[0]["annotation_rgb"]["bytes"] = png(colour(rows[0]["_labels"]))
    rows[4]["material"] = "Glass"
    src = tmp_path / "src"
    write_shard(src / "data" / "train-00001-of-00002.parquet", rows[3:])
    write_shard(src / "data" / "train-00000-of-00002.parquet", rows[:3])
    return src, rows


def read_metadata(out: Path) -> list[dict]:
    with (out / "metadata.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METADATA_COLUMNS
        return list(reader)


def one_shard(tmp_path: Path, rows: list[dict]) -> Path:
    return write_shard(tmp_path / "one.parquet", rows)


def test_imports_layout_pixels_and_metadata(shards, tmp_path):
    src, rows = shards
    out = tmp_path / "out"
    assert import_parquet(src, out) == 5
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "annotations_rgb", "images", "metadata.csv"]
    meta = read_metadata(out)
    assert [m["id"] for m in meta] == [r["id"] for r in rows]  # shards in sorted order
    for m, r in zip(meta, rows):
        h, w = r["_labels"].shape
        assert (m["width"], m["height"]) == (str(w), str(h))
        assert (m["material"], m["content"]) == (r["material"], r["content"])
        assert m["image_path"] == f"images/{r['id']}.png"
        image = Image.open(out / m["image_path"])
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), r["_image"])
        ann = Image.open(out / m["annotation_path"])
        assert ann.mode == "L"
        np.testing.assert_array_equal(np.asarray(ann), r["_labels"])
        np.testing.assert_array_equal(np.asarray(Image.open(out / m["annotation_rgb_path"])), colour(r["_labels"]))
    assert set(np.unique(np.asarray(Image.open(out / "annotations/item0.png")))) == set(ALL_LABELS.tolist())


def test_imported_folder_is_discovered(shards, tmp_path):
    src, rows = shards
    out = tmp_path / "out"
    import_parquet(src, out)
    samples = discover_pairs(out)[0]
    assert [s.id for s in samples] == sorted(r["id"] for r in rows)
    for s in samples:
        assert s.image == out / "images" / f"{s.id}.png" and s.mask == out / "annotations" / f"{s.id}.png"
        assert not s.is_copy
    assert {s.id: s.material for s in samples}["item4"] == "Glass"


def test_max_side_caps_long_side_and_keeps_labels(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.kron(rng.choice(ALL_LABELS, size=(4, 9)), np.ones((10, 10), np.uint8)).astype(np.uint8)
    labels[:, :20] = ARTEFACT.ignore_index
    big = make_row("big", 90, 40, rng, labels=labels)
    small = make_row("small", 12, 7, rng)
    out = tmp_path / "out"
    import_parquet(one_shard(tmp_path, [big, small]), out, max_side=30)
    meta = {m["id"]: m for m in read_metadata(out)}
    assert (meta["big"]["width"], meta["big"]["height"]) == ("30", "13")
    assert abs(30 / 13 - 90 / 40) < 90 / 40 * (1 / 13)  # aspect within a pixel
    assert Image.open(out / "images/big.png").size == (30, 13)
    ann = np.asarray(Image.open(out / "annotations/big.png"))
    assert ann.shape == (13, 30)
    assert set(np.unique(ann)) <= set(np.unique(labels)) and ARTEFACT.ignore_index in ann
    assert Image.open(out / "annotations_rgb/big.png").size == (30, 13)
    assert (meta["small"]["width"], meta["small"]["height"]) == ("12", "7")  # under the cap: untouched
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images/small.png")), small["_image"])


def test_palette_annotation_is_read_as_indices(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.choice(ALL_LABELS, size=(6, 11)).astype(np.uint8)
    p = Image.frombytes("P", (11, 6), labels.tobytes())
    p.putpalette([(i * 7) % 256 for i in range(768)])  # colours unrelated to the ids
    row = make_row("pal", 11, 6, rng, labels=labels, annotation={"bytes": png(p), "path": None})
    out = tmp_path / "out"
    import_parquet(one_shard(tmp_path, [row]), out)
    ann = Image.open(out / "annotations/pal.png")
    assert ann.mode == "L"
    np.testing.assert_array_equal(np.asarray(ann), labels)


def test_plain_binary_columns_and_unsafe_ids(tmp_path):
    rng = np.random.default_rng(3)
    row = make_row("a/b c", 8, 5, rng)
    for col in ("image", "annotation", "annotation_rgb"):
        row[col] = row[col]["bytes"]
    out = tmp_path / "out"
    import_parquet(write_shard(tmp_path / "x.parquet", [row], image_type=pa.binary()), out)
    assert read_metadata(out)[0]["id"] == "a_b_c"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "annotations/a_b_c.png")), row["_labels"])
    assert safe_id("..hidden") == "__hidden" and safe_id("ok-1_x.y") == "ok-1_x.y"


def test_rgb_annotation_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    row = make_row("colourful", 8, 6, rng)
    row["annotation"] = row["annotation_rgb"]
    with pytest.raises(DataError, match=r"'colourful'.*RGB.*colour rendering"):
        import_parquet(one_shard(tmp_path, [row]), tmp_path / "out")


def test_unknown_label_names_id_and_value_and_leaves_no_marker(tmp_path):
    rng = np.random.default_rng(5)
    good = make_row("good", 8, 6, rng)
    labels = np.zeros((6, 8), np.uint8)
    labels[2, 3] = 40
    bad = make_row("bad7", 8, 6, rng, labels=labels)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'bad7'.*\b40\b.*0\.\.15.*255"):
        import_parquet(one_shard(tmp_path, [good, bad]), out)
    assert (out / "images/good.png").exists() and not (out / "metadata.csv").exists()


def test_wide_integer_annotation_values(tmp_path):
    rng = np.random.default_rng(6)
    labels = rng.choice(ALL_LABELS, size=(5, 9)).astype(np.uint8)
    ok = make_row(
        "i16",
        9,
        5,
        rng,
        labels=labels,
        annotation={"bytes": png(Image.fromarray(labels.astype(np.uint16))), "path": None},
    )
    out = tmp_path / "out"
    import_parquet(one_shard(tmp_path, [ok]), out)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "annotations/i16.png")), labels)
    wide = labels.astype(np.uint16)
    wide[0, 0] = 256 + 3  # would wrap to class 3 if cast before checking
    bad = make_row("wrap", 9, 5, rng, labels=labels, annotation={"bytes": png(Image.fromarray(wide)), "path": None})
    with pytest.raises(DataError, match=r"'wrap'.*259"):
        import_parquet(write_shard(tmp_path / "b.parquet", [bad]), tmp_path / "out2")


def test_size_mismatch_is_refused(tmp_path):
    rng = np.random.default_rng(7)
    row = make_row("skew", 8, 6, rng)
    row["annotation"] = {"bytes": png(np.zeros((6, 9), np.uint8)), "path": None}
    with pytest.raises(DataError, match=r"'skew'.*8x6.*9x6"):
        import_parquet(one_shard(tmp_path, [row]), tmp_path / "out")


def test_duplicate_id_is_refused(tmp_path):
    rng = np.random.default_rng(8)
    src = tmp_path / "src"
    write_shard(src / "a.parquet", [make_row("twin", 8, 6, rng)])
    write_shard(src / "b.parquet", [make_row("twin", 5, 6, rng)])
    with pytest.raises(DataError, match="duplicate id 'twin'"):
        import_parquet(src, tmp_path / "out")
    with pytest.raises(DataError, match="both map to the file name"):
        import_parquet(one_shard(tmp_path, [make_row("x y", 4, 4, rng), make_row("x_y", 4, 4, rng)]), tmp_path / "out2")


def test_non_empty_out_needs_overwrite_and_the_advice_works_when_pasted(shards, tmp_path):
    """The refusal advises the command's own key (overwrite=true); following it replaces what the import owns."""
    src, rows = shards
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(png(np.zeros((4, 4, 3), np.uint8)))
    (out / "notes.txt").write_text("mine")
    cmd = [sys.executable, "-m", "poc59.import_parquet", f"src={src}", f"out={out}"]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "is not empty" in refused.stderr and (out / "images" / "stale.png").exists()
    advice = [word for word in refused.stderr.split() if word.startswith("overwrite=")]
    assert advice == ["overwrite=true"], refused.stderr  # the key the command takes, as it would be typed
    followed = subprocess.run([*cmd, *advice], capture_output=True, text=True, timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert not (out / "images" / "stale.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert len(discover_pairs(out)[0]) == 5


def test_missing_column_and_missing_source(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "picture": [b"x"]}), path)
    with pytest.raises(DataError, match="annotation"):
        import_parquet(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before touching OUT
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.parquet"):
        import_parquet(tmp_path / "empty", tmp_path / "o")


def test_main_in_process_returns_codes(shards, tmp_path, caplog):
    src, _ = shards
    assert main([f"src={src}", f"out={tmp_path / 'out'}", "max_side=10"]) == 0
    assert all(max(int(m["width"]), int(m["height"])) <= 10 for m in read_metadata(tmp_path / "out"))
    assert main([f"src={src}", f"out={tmp_path / 'out'}"]) == 2  # a user error: one plain line, exit 2
    assert "not empty" in caplog.text


def test_cli_subprocess(shards, tmp_path):
    src, _ = shards
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "poc59.import_parquet"]
    ok = subprocess.run(
        [*cmd, f"src={src}", f"out={tmp_path / 'out'}"], capture_output=True, text=True, env=env, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "imported 5 rows" in ok.stderr
    bad = subprocess.run(
        [*cmd, f"src={tmp_path / 'missing'}", f"out={tmp_path / 'o2'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "parquet source not found" in bad.stderr and "Traceback" not in bad.stderr
