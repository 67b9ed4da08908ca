"""A scan's damage as IIIF (poc59.inference.iiif): hand-built label maps -> the manifest, the AnnotationPage and
the damage layer, checked against NumPy and validated with iiif_prezi3's models."""

from __future__ import annotations

import io
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from iiif_prezi3 import AnnotationPage, Manifest
from PIL import Image

from poc59.core.classes import ARTEFACT
from poc59.inference.iiif import (
    MIN_AREA,
    TOLERANCE_PX,
    ScanRef,
    check_base_url,
    damage_layer_palette,
    ids_base,
    output_names,
    write_documents,
    write_iiif,
)
from poc59.inference.outputs import PngFile, SpilledMap

CRACKS, DUST, SCRATCH, PEEL = (ARTEFACT.names.index(n) for n in ("Cracks", "Dust", "Scratch", "Peel"))
H, W = 60, 80


@dataclass
class Documents:
    files: dict[str, bytes]  # each file's contents by name
    summary: dict


def iiif_documents(*args, **kwargs) -> Documents:
    """`write_documents` into memory: what it writes, by name, and its summary."""
    files: dict[str, bytes] = {}

    @contextmanager
    def into_memory(name: str):
        buffer = io.BytesIO()
        yield buffer
        files[name] = buffer.getvalue()

    return Documents(files, write_documents(into_memory, *args, **kwargs))


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """labels, confidence, object mask and each region's pixels: a Cracks ring with a hole, two separate Dust
    blobs (one of them a diagonal staircase), a 3-pixel Scratch speck, no Peel at all; the last rows lie
    outside the object (255)."""
    labels = np.zeros((H, W), np.uint8)
    labels[4:24, 4:28] = CRACKS
    labels[10:16, 12:20] = 0  # the hole: 48 px
    labels[30:38, 40:52] = DUST
    for i in range(12):  # a staircase, 8-connected only through its corners' neighbours
        labels[40 + i, 10 + i : 13 + i] = DUST
    labels[2, 60:63] = SCRATCH  # 3 px < MIN_AREA
    inside = np.ones((H, W), bool)
    inside[56:] = False
    labels[~inside] = ARTEFACT.ignore_index
    confidence = np.random.default_rng(0).random((H, W)).astype(np.float32)
    regions = {"ring": labels == CRACKS, "block": np.zeros((H, W), bool), "stairs": np.zeros((H, W), bool)}
    regions["block"][30:38, 40:52] = True
    regions["stairs"] = (labels == DUST) & ~regions["block"]
    return labels, confidence, inside, regions


def _subpaths(svg: str) -> list[np.ndarray]:
    d = re.search(r' d="([^"]*)"', svg).group(1)
    return [np.array([[float(v) for v in p.split()] for p in sub.split("L")]) for sub in re.findall(r"M([^Z]*)Z", d)]


def _shoelace(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _perimeter(region: np.ndarray) -> int:
    """Pixel edges between the region and the rest."""
    padded = np.pad(region, 1).astype(np.int8)
    return int(np.abs(np.diff(padded, axis=0)).sum() + np.abs(np.diff(padded, axis=1)).sum())


def _annotation_of(page: dict, region: np.ndarray) -> dict:
    ys, xs = np.nonzero(region)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    (found,) = [a for a in page["items"] if a["damage"]["bbox"] == bbox]
    return found


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, dict, dict, dict]:
    labels, confidence, inside, _ = _scene()
    scan = ScanRef.local(tmp_path / "scan.png", W, H)
    summary = write_iiif(tmp_path / "maps", "scan", labels, confidence, ARTEFACT, scan, object_mask=inside)
    out = tmp_path / "maps"
    return (
        out,
        summary,
        json.loads((out / "scan.annotations.json").read_text()),
        json.loads((out / "scan.manifest.json").read_text()),
    )


def test_one_annotation_per_region_naming_its_class_with_exact_figures(written):
    _, summary, page, _ = written
    labels, confidence, inside, regions = _scene()
    assert len(page["items"]) == 3 == summary["regions"]
    assert len({a["id"] for a in page["items"]}) == 3
    for key, name in (("ring", "Cracks"), ("block", "Dust"), ("stairs", "Dust")):
        region = regions[key]
        annotation = _annotation_of(page, region)
        assert annotation["motivation"] == "commenting"
        assert annotation["body"][0] == {
            "type": "TextualBody",
            "value": name,
            "format": "text/plain",
            "language": "en",
            "purpose": "classifying",
        }
        damage = annotation["damage"]
        assert damage["class"] == name and damage["class_id"] == ARTEFACT.names.index(name)
        assert damage["pixels"] == int(region.sum())
        assert damage["percent"] == 100 * int(region.sum()) / int(inside.sum())  # of the object, not the image
        assert damage["reference"] == "object mask"
        assert damage["mean_confidence"] == float(confidence[region].mean(dtype=np.float64))
        figures = annotation["body"][1]["value"]
        assert figures == (
            f"{region.sum()} px, {damage['percent']:.2f} % of the object, "
            f"mean confidence {damage['mean_confidence']:.2f}"
        )
        # the outline: within the simplification tolerance of the pixels it outlines
        subpaths = _subpaths(annotation["target"]["selector"]["value"])
        area = sum(_shoelace(s) for s in subpaths)
        assert abs(area - region.sum()) <= TOLERANCE_PX * _perimeter(region), (key, area, region.sum())
        assert annotation["target"]["source"] == page["items"][0]["target"]["source"]
    assert {a["body"][0]["value"] for a in page["items"]} == {"Cracks", "Dust"}  # no Clean, Peel, Scratch


def test_the_ring_keeps_its_hole_as_a_second_subpath_wound_the_other_way(written):
    _, _, page, _ = written
    _, _, _, regions = _scene()
    ring = _annotation_of(page, regions["ring"])
    svg = ring["target"]["selector"]["value"]
    assert ring["target"]["selector"]["type"] == "SvgSelector" and 'fill-rule="evenodd"' in svg
    outline, hole = _subpaths(svg)
    assert _shoelace(outline) == pytest.approx(20 * 24, abs=TOLERANCE_PX * 88)
    assert _shoelace(hole) == pytest.approx(-6 * 8, abs=TOLERANCE_PX * 28)  # opposite winding: nonzero fills agree
    assert ring["damage"]["holes"] == 1
    xs, ys = hole[:, 0], hole[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (12, 20, 10, 16)  # on the hole's pixel edges


def test_specks_are_counted_not_annotated_and_absent_classes_not_listed(written):
    _, summary, page, _ = written
    assert MIN_AREA > 3
    assert summary["classes"]["Scratch"] == {"regions": 0, "specks": 1, "speck_pixels": 3}
    assert summary["classes"]["Dust"] == {"regions": 2, "specks": 0, "speck_pixels": 0}
    assert summary["specks"] == 1 and summary["min_area"] == MIN_AREA
    assert "Peel" not in summary["classes"] and "Clean" not in summary["classes"]
    assert all(a["damage"]["class"] != "Scratch" for a in page["items"])


def test_the_manifest_validates_paints_scan_and_layer_and_references_the_page_file(written, tmp_path):
    out, summary, page, manifest = written
    Manifest.model_validate_json((out / "scan.manifest.json").read_text())
    AnnotationPage.model_validate_json((out / "scan.annotations.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(output_names("scan"))  # no temporary file left
    assert [summary[k] for k in ("layer", "annotations", "manifest")] == output_names("scan")

    (canvas,) = manifest["items"]
    assert (canvas["width"], canvas["height"]) == (W, H)
    assert canvas["annotations"] == [{"id": page["id"], "type": "AnnotationPage"}]  # no items: viewers fetch it
    assert page["id"] == (out / "scan.annotations.json").resolve().as_uri()
    assert manifest["id"] == (out / "scan.manifest.json").resolve().as_uri()
    scan, layer = (a["body"] for a in canvas["items"][0]["items"])
    assert all(a["motivation"] == "painting" and a["target"] == canvas["id"] for a in canvas["items"][0]["items"])
    assert scan["id"] == (tmp_path / "scan.png").resolve().as_uri() and scan["format"] == "image/png"
    assert layer["id"] == (out / "scan_damage.png").resolve().as_uri()
    assert all(a["target"]["source"] == canvas["id"] for a in page["items"])


def test_the_damage_layer_is_the_label_map_with_clean_and_outside_transparent(written):
    out, *_ = written
    labels, *_ = _scene()
    img = Image.open(io.BytesIO((out / "scan_damage.png").read_bytes()))
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
    palette = np.asarray(img.getpalette()[: 3 * ARTEFACT.num_classes]).reshape(-1, 3)
    assert [tuple(p) for p in palette] == ARTEFACT.rgb()
    rgba = np.asarray(img.convert("RGBA"))
    assert (rgba[labels == 0, 3] == 0).all() and (rgba[labels == 255, 3] == 0).all()
    assert (rgba[(labels != 0) & (labels != 255), 3] == 255).all()


def test_a_iiif_service_scan_and_a_base_url_give_service_body_and_http_ids():
    labels, confidence, _, _ = _scene()
    scan = ScanRef.iiif("https://images.example.org/iiif/3/ms12-f3r/info.json", W, H)
    docs = iiif_documents("f3r", labels, confidence, ARTEFACT, scan, check_base_url("https://maps.example.org/run7"))
    manifest = json.loads(docs.files["f3r.manifest.json"])
    Manifest.model_validate(manifest)
    body = manifest["items"][0]["items"][0]["items"][0]["body"]
    assert body["id"] == "https://images.example.org/iiif/3/ms12-f3r/full/max/0/default.jpg"
    assert body["service"] == [
        {"id": "https://images.example.org/iiif/3/ms12-f3r", "type": "ImageService3", "profile": "level1"}
    ]
    assert manifest["id"] == "https://maps.example.org/run7/f3r.manifest.json"
    page = json.loads(docs.files["f3r.annotations.json"])
    assert page["id"] == "https://maps.example.org/run7/f3r.annotations.json"
    assert all(a["damage"]["reference"] == "image" for a in page["items"])  # no object mask: of the image
    assert all(a["damage"]["percent"] == 100 * a["damage"]["pixels"] / (H * W) for a in page["items"])


def test_uint8_confidence_reads_as_0_to_1():
    labels, confidence, _, regions = _scene()
    as_bytes = np.rint(confidence * 255).astype(np.uint8)
    docs = iiif_documents("s", labels, as_bytes, ARTEFACT, ScanRef.local("s.png", W, H), "file:///m/")
    ring = _annotation_of(json.loads(docs.files["s.annotations.json"]), regions["ring"])
    assert ring["damage"]["mean_confidence"] == pytest.approx(as_bytes[regions["ring"]].mean() / 255, rel=1e-12)


def test_unsimplified_outlines_enclose_exactly_the_pixels_of_any_region():
    """Random masks (holes, diagonal pinches, one-pixel necks and holes): tolerance 0 gives the pixel edges."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        labels = np.where(rng.random((14, 14)) < 0.6, CRACKS, 0).astype(np.uint8)
        docs = iiif_documents(
            "s", labels, np.ones(labels.shape), ARTEFACT, ScanRef.local("s.png", 14, 14), "file:///m/", None, 1, 0.0
        )
        items = json.loads(docs.files["s.annotations.json"])["items"]
        for a in items:
            assert sum(_shoelace(s) for s in _subpaths(a["target"]["selector"]["value"])) == a["damage"]["pixels"]
        assert sum(a["damage"]["pixels"] for a in items) == int((labels == CRACKS).sum())


def test_inputs_that_do_not_fit_are_refused():
    labels, confidence, _, _ = _scene()
    scan = ScanRef.local("s.png", W, H)
    with pytest.raises(ValueError, match="differ in size"):
        iiif_documents("s", labels, confidence[:-1], ARTEFACT, scan, "file:///m/")
    stray = labels.copy()
    stray[0, 0] = 40
    with pytest.raises(ValueError, match=r"labels \[40\]"):
        iiif_documents("s", stray, confidence, ARTEFACT, scan, "file:///m/")
    with pytest.raises(ValueError, match="80 x 61 px but the labels 80 x 60 px"):
        iiif_documents("s", labels, confidence, ARTEFACT, ScanRef.local("s.png", W, H + 1), "file:///m/")
    with pytest.raises(ValueError, match="e.g. https://example.org/maps/"):
        check_base_url("example.org/maps")


def test_ids_lie_under_the_base_url_or_the_output_folder(tmp_path):
    assert ids_base(tmp_path / "maps") == (tmp_path / "maps").resolve().as_uri() + "/"
    assert ids_base(tmp_path, "https://maps.example.org/run7") == "https://maps.example.org/run7/"
    labels, confidence, _, _ = _scene()
    scan = ScanRef.local("s.png", W, H)
    summary = write_iiif(tmp_path, "s", labels, confidence, ARTEFACT, scan, base_url="http://localhost:8000/")
    manifest = json.loads((tmp_path / summary["manifest"]).read_text())
    assert manifest["id"] == "http://localhost:8000/s.manifest.json"
    assert manifest["items"][0]["annotations"][0]["id"] == "http://localhost:8000/s.annotations.json"


def test_a_large_map_with_thousands_of_regions_takes_seconds(tmp_path):
    """6000 x 4000 px, five damage classes, ~5000 regions: no per-pixel Python loop (that would take minutes).
    The process's CPU time, not the wall clock: on a busy machine the wall time of the same 2 CPU-seconds
    reached 161 s."""
    rng = np.random.default_rng(2)
    labels = np.zeros((4000, 6000), np.uint8)
    for y, x, h, w, c in zip(*(rng.integers(0, n, 6000) for n in (3980, 5980, 20, 20)), rng.integers(1, 6, 6000)):
        labels[y : y + h + 1, x : x + w + 1] = c
    confidence = rng.random(labels.shape, dtype=np.float32)
    start = time.process_time()
    summary = write_iiif(tmp_path, "big", labels, confidence, ARTEFACT, ScanRef.local("big.png", 6000, 4000))
    seconds = time.process_time() - start
    assert summary["regions"] > 3000
    assert seconds < 30, f"{seconds:.1f} CPU-s"
    page = json.loads((tmp_path / "big.annotations.json").read_text())
    assert len(page["items"]) == summary["regions"]
    AnnotationPage.model_validate(page | {"items": page["items"][:50]})  # all 5000: pydantic alone takes 5 s


def test_the_annotations_hold_a_band_of_rows_not_the_whole_map():
    """The regions are found a band of rows at a time (`class_regions`) and traced in their boxes: NumPy's
    allocations while the documents of a 24 MP map are built stay within the working set of one band (about
    40 bytes a pixel of `LABEL_PIXELS`) and of the largest box; one class's whole mask and 16-bit component
    map, what the annotations held before, would take 72 MB."""
    import tracemalloc

    from poc59.inference.iiif import LABEL_PIXELS

    rng = np.random.default_rng(4)
    height, width, box = 4000, 6000, 30
    labels = np.zeros((height, width), np.uint8)
    for y, x, c in zip(rng.integers(0, height - 40, 300), rng.integers(0, width - 40, 300), rng.integers(1, 4, 300)):
        labels[y : y + box, x : x + box] = c
    confidence = np.full(labels.shape, 200, np.uint8)
    tracemalloc.start()
    try:
        docs = iiif_documents("m", labels, confidence, ARTEFACT, ScanRef.local("m.png", width, height), "file:///m/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert docs.summary["regions"] > 100
    whole = 3 * height * width
    bound = 40 * LABEL_PIXELS + 12 * (2 * box) ** 2  # a box may hold two overlapping squares
    assert bound < whole and peak < bound, f"{peak / 2**20:.1f} MB"


def _assert_same_regions(labels, c, inside, confidence, band_rows):
    """`class_regions` in bands against one OpenCV labelling of the whole mask: stats and order, seeds inside
    their region, confidence sums."""
    import cv2

    from poc59.inference.iiif import class_regions

    mask = labels == c if inside is None else (labels == c) & inside
    _, components, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    got = class_regions(labels, c, inside, confidence, band_rows)
    np.testing.assert_array_equal(got.stats, stats[1:])
    np.testing.assert_array_equal(components[got.seeds[:, 0], got.seeds[:, 1]], np.arange(1, len(stats)))
    sums = np.bincount(components.reshape(-1), weights=confidence.reshape(-1), minlength=len(stats))[1:]
    np.testing.assert_allclose(got.confidence_sums, sums, rtol=1e-12)
    return got


@pytest.mark.parametrize("band_rows", [1, 2, 3, 7])
def test_regions_found_in_bands_are_those_of_one_whole_labelling(band_rows):
    """Random maps of three classes at several densities, with and without an object mask, cut into bands that
    cut most regions many times: the same regions, boxes, areas and order as OpenCV's labelling of the whole
    mask (its order is that of the first 2 x 2 block each region touches, not of its first pixel)."""
    from poc59.inference.iiif import class_regions

    rng = np.random.default_rng(band_rows)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        labels = (rng.integers(1, 4, (height, width)) * (rng.random((height, width)) < rng.random())).astype(np.uint8)
        inside = rng.random((height, width)) < 0.9 if trial % 2 else None
        confidence = rng.random((height, width)).astype(np.float32)
        for c in (1, 2, 3):
            whole = _assert_same_regions(labels, c, inside, confidence, band_rows).stats
            big = whole[:, 4] >= 3  # specks under 3 px: counted (those within a band dropped at once), not kept
            kept = class_regions(labels, c, inside, confidence, band_rows, min_area=3)
            np.testing.assert_array_equal(kept.stats, whole[big])
            assert (kept.specks, kept.speck_pixels) == (int((~big).sum()), int(whole[~big, 4].sum()))


def test_regions_joined_only_through_diagonal_touches_across_band_edges():
    """A staircase of single pixels, each touching the next only by a corner, across the edge between every
    two bands; and two regions whose first pixels' reading order differs from their first blocks' order."""
    from poc59.inference.iiif import class_regions

    stairs = np.zeros((9, 12), np.uint8)
    for i in range(9):
        stairs[i, 10 - i] = 1
    for band_rows in (1, 2, 3):
        got = _assert_same_regions(stairs, 1, None, np.ones(stairs.shape), band_rows)
        assert got.stats.tolist() == [[2, 0, 9, 9, 9]]
    order = np.zeros((4, 20), np.uint8)
    order[0, 10] = order[1, 0] = 1  # reading order: (0, 10) first; OpenCV's 2 x 2 blocks: (1, 0) first
    assert class_regions(order, 1, band_rows=1).seeds.tolist() == [[1, 0], [0, 10]]
    _assert_same_regions(order, 1, None, np.ones(order.shape), 1)


def test_dense_damage_found_in_bands_is_that_of_one_whole_labelling():
    """Seeded noise at 60 % over 2000 x 2000 px (one region spanning the map and some 2,200 small ones; more
    provisional labels than 16 bits hold: a 300 MP master's map once overflowed OpenCV's 16-bit labelling), in
    bands of the default height and of 5 rows; OpenCV labels a mask this size in parallel stripes, in the same
    order."""
    labels = (np.random.default_rng(0).random((2000, 2000)) < 0.6).astype(np.uint8) * CRACKS
    confidence = np.random.default_rng(1).integers(0, 256, labels.shape).astype(np.uint8)
    for band_rows in (None, 5):
        got = _assert_same_regions(labels, CRACKS, None, confidence, band_rows)
        assert len(got.stats) > 2000 and got.stats[0].tolist()[:4] == [0, 0, 2000, 2000]


def test_outlines_followed_along_pixel_edges_are_opencvs_on_the_fine_grid():
    """`crack_contours` (large boxes) against OpenCV's contours on the fine grid (`fine_contours`, small
    boxes): the same points from the same start in the same direction, ring by ring in the same order, for
    every region of random maps (holes, holes touching the outline or each other diagonally, regions touching
    themselves diagonally, one-pixel regions and holes; each region cut to its box touches its edges)."""
    import cv2

    from poc59.inference.iiif import crack_contours, fine_contours

    rng = np.random.default_rng(7)
    compared = holes = 0
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((height, width)) < rng.random()
        n, components = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
        for k in range(1, n):
            ys, xs = np.nonzero(components == k)
            region = (components == k)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            ours, reference = crack_contours(region), fine_contours(region)
            assert [h for _, h in ours] == [h for _, h in reference]
            for (a, _), (b, _) in zip(ours, reference):
                np.testing.assert_array_equal(a, b)
            compared += 1
            holes += len(ours) - 1
    assert compared > 1000 and holes > 100


def test_documents_are_the_same_whichever_way_the_outlines_are_traced(monkeypatch):
    """Every region traced by following its pixel edges (as a box over `_FINE_PIXELS` is) gives byte for byte
    the documents of OpenCV's fine grid."""
    from poc59.inference import iiif

    labels, confidence, inside, _ = _scene()
    noisy = np.where(np.random.default_rng(8).random((H, W)) < 0.55, DUST, labels).astype(np.uint8)
    noisy[~inside] = ARTEFACT.ignore_index
    scan = ScanRef.local("s.png", W, H)
    fine = [iiif_documents("s", m, confidence, ARTEFACT, scan, "file:///m/", inside) for m in (labels, noisy)]
    monkeypatch.setattr(iiif, "_FINE_PIXELS", 0)
    followed = [iiif_documents("s", m, confidence, ARTEFACT, scan, "file:///m/", inside) for m in (labels, noisy)]
    for a, b in zip(fine, followed):
        assert a.files == b.files and a.summary == b.summary
    assert fine[1].summary["classes"]["Dust"]["regions"] >= 1


def test_maps_kept_on_disk_give_the_same_documents_as_arrays(tmp_path):
    """predict keeps a scan's maps on disk (`SpilledMap`) and writes the damage layer as the bands come: the same
    annotations, manifest and summary as from the arrays, and the layer it streams is the same picture."""
    labels, _, inside, _ = _scene()
    confidence = (np.random.default_rng(6).random((H, W)) * 255).astype(np.uint8)
    kept = [SpilledMap(tmp_path, W, H) for _ in range(2)]
    for y in range(0, H, 7):  # bands of a height that divides nothing
        kept[0].add(labels[y : y + 7])
        kept[1].add(confidence[y : y + 7])
    scan = ScanRef.local("s.png", W, H)
    from_arrays = iiif_documents("s", labels, confidence, ARTEFACT, scan, "file:///m/", inside)
    from_disk = iiif_documents("s", *kept, ARTEFACT, scan, "file:///m/", inside, layer=False)
    layer = output_names("s")[0]
    assert from_disk.files == {k: v for k, v in from_arrays.files.items() if k != layer}
    assert from_disk.summary == from_arrays.summary and from_disk.summary["regions"] >= 3
    streamed = PngFile(tmp_path / layer, W, *damage_layer_palette(ARTEFACT))
    for y in range(0, H, 11):
        streamed.add(labels[y : y + 11])
    with Image.open(streamed.close()) as ours, Image.open(io.BytesIO(from_arrays.files[layer])) as whole:
        assert np.array_equal(np.asarray(ours.convert("RGBA")), np.asarray(whole.convert("RGBA")))
    assert np.array_equal(np.asarray(Image.open(tmp_path / layer)), labels)


def _many_squares(height: int, width: int, pitch: int) -> np.ndarray:
    """5 x 5 px squares of Dust and Cracks every `pitch` px: many regions, each well over MIN_AREA."""
    labels = np.zeros((height, width), np.uint8)
    for k, y in enumerate(range(0, height - 5, pitch)):
        labels[y : y + 5].reshape(5, -1, pitch)[:, :, :5] = (DUST, CRACKS)[k % 2]
    return labels


@pytest.mark.slow  # 13,400 regions traced under tracemalloc: 9.2 s in the whole suite (2026-12-07, quiet)
def test_the_page_is_written_a_region_at_a_time_not_held_whole(tmp_path):
    """`write_iiif` streams the AnnotationPage into its file as each region is traced: with 13,400 regions the
    memory NumPy and Python hold at the peak stays under the page's own size (7 MB against 12 MB; the page
    built whole in memory, as before, peaked at 50 MB: its annotations as Python objects, then its text)."""
    import tracemalloc

    labels = _many_squares(1000, 3000, 15)
    confidence = np.full(labels.shape, 128, np.uint8)
    scan = ScanRef.local("m.png", 3000, 1000)
    tracemalloc.start()
    try:
        summary = write_iiif(tmp_path, "m", labels, confidence, ARTEFACT, scan, layer=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    page_bytes = (tmp_path / "m.annotations.json").stat().st_size
    assert summary["regions"] == 67 * 200
    assert peak < page_bytes, f"peak {peak / 2**20:.1f} MB, page {page_bytes / 2**20:.1f} MB"
    page = json.loads((tmp_path / "m.annotations.json").read_text())
    assert len(page["items"]) == summary["regions"] and page["label"] == {
        "en": [f"m: {summary['regions']} damage regions"]
    }
    assert [a["id"] for a in page["items"][:2]] == [f"{page['id']}#region-1", f"{page['id']}#region-2"]
    AnnotationPage.model_validate(page | {"items": page["items"][:50]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.annotations.json", "m.manifest.json"]


def test_a_failure_while_tracing_leaves_no_page_and_no_manifest(tmp_path, monkeypatch):
    """A scan whose annotations fail part-way (here the 100th region's outline) leaves neither the partly
    written page nor a manifest; a page or manifest from an earlier run stays as it was."""
    from poc59.inference import iiif

    labels = _many_squares(300, 300, 15)
    confidence = np.full(labels.shape, 128, np.uint8)
    scan = ScanRef.local("m.png", 300, 300)
    (tmp_path / "m.annotations.json").write_text("earlier\n")
    traced = iiif._edge_rings
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 100:
            raise MemoryError("the 100th region")
        return traced(*args, **kwargs)

    monkeypatch.setattr(iiif, "_edge_rings", failing)
    with pytest.raises(MemoryError):
        write_iiif(tmp_path, "m", labels, confidence, ARTEFACT, scan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.annotations.json", "m_damage.png"]
    assert (tmp_path / "m.annotations.json").read_text() == "earlier\n"


def _even_odd_fill(subpaths: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The pixels whose centres the subpaths enclose by the even-odd rule (a ray cast along each pixel row)."""
    yc, xc = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    crossings = np.zeros((height, width), np.int64)
    for ring in subpaths:
        for (x1, y1), (x2, y2) in zip(ring, np.roll(ring, -1, axis=0)):
            if y1 == y2:
                continue
            rows = (np.minimum(y1, y2) <= yc[:, 0]) & (yc[:, 0] < np.maximum(y1, y2))
            at = x1 + (yc[rows] - y1) * (x2 - x1) / (y2 - y1)
            crossings[rows] += xc < at
    return crossings % 2 == 1


def test_a_region_too_large_to_outline_whole_is_annotated_in_parts(monkeypatch):
    """A region whose box is over the whole-outline limit (here 2,000 px, squares of 32 px; 64 MP by default) gets one annotation
    per square of its box it touches: each part outlines exactly the region's pixels in that square (tolerance
    0, filled even-odd), with the part's own figures, and carries the whole region's; the other regions stay
    whole."""
    from scipy import ndimage

    from poc59.inference import iiif

    monkeypatch.setattr(iiif, "PART_SIDE", 32)
    monkeypatch.setattr(iiif, "_FINE_PIXELS", 0)  # past it, the box limit decides
    monkeypatch.setattr(iiif, "_WHOLE_BOX", 2000)
    rng = np.random.default_rng(11)
    h, w = 90, 120
    labels = np.zeros((h, w), np.uint8)
    labels[3:87, 5:115] = DUST
    labels[rng.random((h, w)) < 0.2] = 0  # holes, necks and islands
    confidence = rng.random((h, w)).astype(np.float32)
    docs = iiif_documents("s", labels, confidence, ARTEFACT, ScanRef.local("s.png", w, h), "file:///m/", None, 1, 0.0)
    page = json.loads(docs.files["s.annotations.json"])
    components, n = ndimage.label(labels == DUST, structure=np.ones((3, 3), int))
    big = components == 1 + np.argmax(np.bincount(components.reshape(-1))[1:])
    ys, xs = np.nonzero(big)
    top, left = ys.min(), xs.min()
    parts = [a for a in page["items"] if "part" in a["damage"]]
    squares = [(ty, tx) for ty in range(top, ys.max() + 1, 32) for tx in range(left, xs.max() + 1, 32)]
    assert docs.summary["regions"] == n == len(page["items"]) - len(parts) + 1
    assert docs.summary["parted"] == 1 and docs.summary["parts"] == len(parts) == len(squares) == 12
    whole = {
        "pixels": int(big.sum()),
        "bbox": [int(left), int(top), int(xs.max() - left + 1), int(ys.max() - top + 1)],
        "mean_confidence": pytest.approx(float(confidence[big].mean(dtype=np.float64)), rel=1e-12),
    }
    number = [a["id"] for a in page["items"]].index(parts[0]["id"])  # the regions before it are whole
    for k, (a, (ty, tx)) in enumerate(zip(parts, squares), 1):
        expected = np.zeros_like(big)
        expected[ty : ty + 32, tx : tx + 32] = big[ty : ty + 32, tx : tx + 32]
        py, px = np.nonzero(expected)
        damage = a["damage"]
        assert a["id"] == f"{page['id']}#region-{number + 1}-part-{k}"
        assert damage["pixels"] == int(expected.sum())
        assert damage["bbox"] == [
            int(px.min()),
            int(py.min()),
            int(px.max() - px.min() + 1),
            int(py.max() - py.min() + 1),
        ]
        assert damage["mean_confidence"] == pytest.approx(float(confidence[expected].mean(dtype=np.float64)), rel=1e-12)
        assert np.array_equal(_even_odd_fill(_subpaths(a["target"]["selector"]["value"]), h, w), expected)
        assert damage["part"]["index"] == k and damage["part"]["of"] == 12
        assert {key: damage["part"]["region"][key] for key in whole} == whole
        assert f"; part {k} of 12 of one region of {whole['pixels']} px" in a["body"][1]["value"]
    assert sum(a["damage"]["pixels"] for a in parts) == whole["pixels"]
    for a in page["items"]:
        if "part" not in a["damage"]:  # whole regions: exactly their pixels
            x, y, bw, bh = a["damage"]["bbox"]
            (region,) = [
                r for r in range(1, n + 1) if (components[y : y + bh, x : x + bw] == r).sum() == a["damage"]["pixels"]
            ][:1]
            assert np.array_equal(
                _even_odd_fill(_subpaths(a["target"]["selector"]["value"]), h, w), components == region
            )
    assert page["label"] == {
        "en": [f"s: {n} damage regions in {len(page['items'])} annotations (1 of them in 12 parts)"]
    }


def test_a_region_is_outlined_whole_up_to_the_limit_on_its_edges(monkeypatch):
    """Past `_FINE_PIXELS`, a region is outlined whole while its outline has at most `_WHOLE_EDGES` pixel edges
    (counted exactly: the test's own perimeter), in parts from one edge more."""
    from scipy import ndimage

    from poc59.inference import iiif

    rng = np.random.default_rng(12)
    components, _ = ndimage.label(rng.random((40, 50)) < 0.7, structure=np.ones((3, 3), int))
    region = components == 1 + np.argmax(np.bincount(components.reshape(-1))[1:])
    labels = np.where(region, DUST, 0).astype(np.uint8)
    monkeypatch.setattr(iiif, "_FINE_PIXELS", 0)
    monkeypatch.setattr(iiif, "PART_SIDE", 16)
    got = []
    for limit in (_perimeter(region), _perimeter(region) - 1):
        monkeypatch.setattr(iiif, "_WHOLE_EDGES", limit)
        docs = iiif_documents("s", labels, np.ones((40, 50)), ARTEFACT, ScanRef.local("s.png", 50, 40), "file:///m/")
        got.append((docs.summary["regions"], docs.summary["parted"]))
    assert got == [(1, 0), (1, 1)]


def test_a_class_covering_the_map_joins_each_pair_of_pieces_once():
    """A class that covers the map touches across every pixel of every band edge: the pieces joined there are
    kept once per pair, not once per touching pixel (3 per pixel of the width per edge: a 100 MB peak here, 1 GB for a
    300 MP scan's background-like class), and the regions are still those of one whole labelling."""
    import tracemalloc

    from poc59.inference.iiif import class_regions

    rng = np.random.default_rng(13)
    labels = np.where(rng.random((500, 2000)) < 0.02, 0, DUST).astype(np.uint8)  # one region, scattered holes
    confidence = np.ones(labels.shape, np.float32)
    tracemalloc.start()
    try:
        found = class_regions(labels, DUST, None, None, band_rows=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB"
    assert len(found.stats) == 1 and found.stats[0, 4] == int((labels == DUST).sum())
    _assert_same_regions(labels, DUST, None, confidence, 2)
