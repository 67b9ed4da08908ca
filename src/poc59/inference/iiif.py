"""A scan's damage as IIIF: a Presentation 3 manifest and one W3C Web Annotation per damage region.

For one predicted scan, `write_iiif` writes beside predict's maps:

- `<stem>_damage.png`: the damage layer, a palette PNG of the label map (values = class ids, palette = the
  class table's colours) in which Clean (id 0) and pixels outside the object (255) are transparent, so a
  viewer can lay it over the scan;
- `<stem>.annotations.json`: an AnnotationPage with one Annotation per connected damage region
  (8-connected pixels of one damage class, Clean excluded): motivation "commenting", a first TextualBody
  naming the class (purpose "classifying"), a second one giving its area in pixels, its share of the object
  and its mean confidence (purpose "describing"), and a target on the canvas with an SvgSelector whose path
  outlines the region, holes kept (fill-rule evenodd; the outline and its holes also wind in opposite
  directions, so a viewer filling by the default nonzero rule shows the holes too). The same figures,
  unrounded, are in the annotation's `damage` property (a poc59 extension that IIIF viewers ignore);
- `<stem>.manifest.json`: a manifest with one canvas of the scan's size, painted with the scan (its IIIF
  Image API service, or the image file) and, as a second painting annotation, the damage layer; the
  AnnotationPage is referenced from the canvas's `annotations` by its id, which is the URI of the file.

Why a second painting annotation (read in Mirador 4.2's source): Mirador draws every Image painted on the
canvas (the canvas's `items`) as a layer that its "Layers" panel shows, hides and fades, a plain PNG as
well as an Image API service; an Image in the canvas's `annotations` (a supplementing layer) is not drawn.
It reads a painting annotation's target as a string. It fetches an AnnotationPage referenced without items
from its id, lists each annotation's textual bodies in its annotation panel (with the default settings,
whatever the motivation; Mirador 3's defaults kept only commenting and tagging) and draws its SvgSelector,
filling by the nonzero rule.

Outlines. Each region is traced on its pixels' edges (not through their centres), so a 1 px wide crack keeps
its width and the unsimplified outline encloses exactly the region's pixels. It is then simplified by
Douglas-Peucker (`cv2.approxPolyDP`) with a tolerance of `TOLERANCE_PX` pixels: every dropped vertex lies
within that distance of the simplified outline, so the outline's area differs from the pixel count by at
most about the perimeter times the tolerance. An outline or hole that would simplify below 3 vertices is
kept unsimplified. Coordinates are canvas pixels (the scan's own).

Specks. A region of fewer than `MIN_AREA` pixels gets no annotation (it stays in the damage map and in
predict's statistics); such specks are counted per class in the returned summary.

IDs are URIs under a base: `base_url` (e.g. where the folder will be served, `https://example.org/maps/`)
or, without it, the output folder's own `file:` URI. The same labels give the same IDs.

Large regions. A region whose box is over `_WHOLE_BOX` pixels (64 MP), or over `_FINE_PIXELS` (2 MP) with
more than `_WHOLE_EDGES` pixel edges (4 M) on its outline and holes, is annotated in parts: one annotation
per `PART_SIDE` px square of its box (from the box's top-left corner) that it touches, outlining the region's
pixels in that square (which may be several pieces: one SVG path, a subpath per ring), with the part's own
figures and, under `damage.part`, its number, the number of parts and the whole region's figures; its text
adds "part k of n of one region of N px, ...". Its id is `#region-<r>-part-<k>`. Why: such a region (a class
spread over the scan, holding thousands of holes) would cost memory without bound to trace in one piece, and
one SVG path of millions of points is more than a viewer draws; squares are how map tiles cut large polygons.

Memory: the label and confidence maps may be arrays or kept on disk (`MapRows`, e.g. predict's
`poc59.inference.outputs.SpilledMap`): they are read a band of rows, or a region's bounding box, at a time.
A class's regions are found a band of rows at a time (`class_regions`: about 40 bytes a pixel of a band of
`LABEL_PIXELS` pixels at most, plus about 60 bytes per region piece a band holds), never as a whole-scan
mask or component map. Tracing one region takes its pixels (1 byte a pixel of its bounding box, and up to as
much again for OpenCV's flood fill while they are found) and its outline: a box of up to `_FINE_PIXELS`
pixels on OpenCV's fine grid (8 bytes a pixel of the box), a larger one by following its pixel edges
(`crack_contours`: about 2 bytes a pixel of the box for a moment, then about 80 bytes an edge: at most
`_WHOLE_BOX` and `_WHOLE_EDGES`), a part on the fine grid of its square (at most 8 MB). The AnnotationPage is
written an annotation at a time (`write_iiif`), so the documents are never whole in memory.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlsplit

import cv2
import numpy as np

from poc59.analysis.colour import lookup_table
from poc59.core.atomic import replacing
from poc59.core.classes import ClassTable
from poc59.inference.outputs import PngStream

__all__ = [
    "MIN_AREA",
    "TOLERANCE_PX",
    "ScanRef",
    "check_base_url",
    "MapRows",
    "damage_layer_palette",
    "ids_base",
    "ClassRegions",
    "class_regions",
    "output_names",
    "write_damage_layer",
    "write_documents",
    "write_iiif",
]

MIN_AREA = 16
"""Regions of fewer pixels than this (a 4 x 4 px speck) get no annotation; they are counted instead."""

TOLERANCE_PX = 1.0
"""Douglas-Peucker tolerance of the outlines, in pixels of the scan."""

LAYOUT = {"layer": "_damage.png", "annotations": ".annotations.json", "manifest": ".manifest.json"}
"""The files of one scan: `<stem><suffix>`."""


def output_names(stem: str) -> list[str]:
    """The names of the files `write_iiif` writes for the scan `stem`, in the order it writes them."""
    return [f"{stem}{suffix}" for suffix in LAYOUT.values()]


PRESENTATION_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
_IMAGE_API = {
    2: ("ImageService2", "http://iiif.io/api/image/2/level1.json", "full/full/0/default.jpg"),
    3: ("ImageService3", "level1", "full/max/0/default.jpg"),
}


@dataclass(frozen=True)
class ScanRef:
    """What the canvas shows: the scan's image URI and size, and its IIIF Image API service if it came from one.

    `ScanRef.local(path, w, h)` for a file (its `file:` URI, or `url=` where a copy of it is served: browsers
    show PNG, JPEG and WebP, not TIFF), `ScanRef.iiif(service, w, h)` for an Image API service (the base URI,
    without /info.json)."""

    image: str
    width: int
    height: int
    format: str | None = None
    service: dict[str, str] | None = field(default=None)

    @classmethod
    def local(cls, path: str | Path, width: int, height: int, url: str | None = None) -> ScanRef:
        path = Path(path)
        return cls(url or path.resolve().as_uri(), width, height, mimetypes.guess_type(path.name)[0])

    @classmethod
    def iiif(cls, service: str, width: int, height: int, version: int = 3) -> ScanRef:
        if version not in _IMAGE_API:
            raise ValueError(f"IIIF Image API version {version}: only 2 and 3 exist")
        kind, profile, full = _IMAGE_API[version]
        base = service.removesuffix("/info.json").rstrip("/")
        return cls(f"{base}/{full}", width, height, "image/jpeg", {"id": base, "type": kind, "profile": profile})


def check_base_url(url: str) -> str:
    """`url` as the base of the IDs (ending in "/"); ValueError unless it is an absolute http(s) or file URI."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
        raise ValueError(
            f"{url!r} is not an absolute http(s):// or file:// URI; give the address the output folder is "
            "served at, e.g. https://example.org/maps/"
        )
    return url if url.endswith("/") else url + "/"


def ids_base(out_dir: str | Path, base_url: str | None = None) -> str:
    """The base of a scan's IDs: `base_url` checked (`check_base_url`), or the `file:` URI of `out_dir`."""
    return check_base_url(base_url) if base_url else Path(out_dir).resolve().as_uri() + "/"


class MapRows(Protocol):
    """A map [H, W] read a window at a time: an array (`_ArrayRows`), or one kept on disk
    (`poc59.inference.outputs.SpilledMap`), so a scan's maps need not be in memory for its annotations."""

    shape: tuple[int, int]
    dtype: np.dtype

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray: ...


class _ArrayRows:
    """An array as `MapRows` (windows are views)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype = array, array.shape, array.dtype

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return self.array[y0:y1, x0:x1]


def _map_rows(m: np.ndarray | MapRows) -> MapRows:
    return _ArrayRows(m) if isinstance(m, np.ndarray) else m


def damage_layer_palette(classes: ClassTable) -> tuple[np.ndarray, bytes]:
    """The damage layer's palette (the class table's colours, uint8 [256, 3]) and its alpha per value: Clean
    (0) and the ignore id transparent."""
    alpha = bytearray([255] * 256)
    alpha[0] = alpha[classes.ignore_index] = 0
    return lookup_table(classes), bytes(alpha)


def write_damage_layer(f: BinaryIO, labels: np.ndarray | MapRows, classes: ClassTable) -> None:
    """Palette PNG of a label map uint8 [H, W] (`damage_layer_palette`) into `f`: the layer a viewer lays over
    the scan, encoded a band of rows at a time (`PngStream`)."""
    labels = _map_rows(labels)
    png = PngStream(f, labels.shape[1], *damage_layer_palette(classes))
    step = _band_rows(labels.shape[1])
    for y in range(0, labels.shape[0], step):
        png.add(labels.rows(y, y + step))
    png.finish()


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring [n, 2] (x, y); positive when clockwise on screen (y down)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1])


def _corners_restored(points: np.ndarray) -> np.ndarray:
    """A traced contour [n, 2] (fine cells, see `_edge_rings`) with the corners it cut put back.

    OpenCV follows boundaries 8-connected, so at a corner it steps diagonally from a cell on one pixel edge
    (one odd coordinate) to a cell on the other (the other odd coordinate), cutting the corner cell, whose
    coordinates are both odd. Pixel edges have no diagonal steps: every diagonal step gets its corner back.
    """
    following = np.concatenate([points[1:], points[:1]])
    step = following - points
    diagonal = (step[:, 0] != 0) & (step[:, 1] != 0)
    if not diagonal.any():
        return points.reshape(-1, 1, 2)
    corner = np.where(
        (points[:, 0] % 2 == 1)[:, None],
        np.stack([points[:, 0], following[:, 1]], 1),
        np.stack([following[:, 0], points[:, 1]], 1),
    )
    out = np.empty((len(points) + int(diagonal.sum()), 2), points.dtype)
    at = np.arange(len(points)) + np.concatenate([[0], np.cumsum(diagonal)[:-1]])
    out[at] = points
    out[at[diagonal] + 1] = corner[diagonal]
    return out.reshape(-1, 1, 2)


def fine_contours(region: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """`crack_contours` traced by OpenCV: the region drawn on a grid twice as fine plus one line (pixel
    (y, x) covers the fine cells 2y+1..2y+3 x 2x+1..2x+3, one cell of border, so neighbouring pixels share
    cells and a one-pixel hole leaves its centre cell empty), its contours through the centres of the fine
    cells, the corners cut put back. Fast for small boxes; 8 bytes a pixel of the box (the grid and
    OpenCV's copy of it)."""
    h, w = region.shape
    fine = np.zeros((2 * h + 3, 2 * w + 3), np.uint8)
    for dy in range(3):
        for dx in range(3):
            fine[1 + dy : 1 + dy + 2 * h : 2, 1 + dx : 1 + dx + 2 * w : 2] |= region
    contours, hierarchy = cv2.findContours(fine, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return [
        (_corners_restored(traced.reshape(-1, 2)), bool(parent >= 0))
        for traced, (_, _, _, parent) in zip(contours, hierarchy[0])
    ]


_FINE_PIXELS = 1 << 21  # boxes up to this many pixels are traced by OpenCV on the fine grid (<= 16 MB)


_TURN = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])  # (dy, dx) of a step east, south, west, north


def crack_contours(region: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """The outlines of a region (bool [h, w], one 8-connected component) along its pixels' edges: [(contour
    int32 [n, 1, 2] of fine cells (x, y), is a hole)], the outline first.

    Fine cells are those of a grid twice as fine plus one line: pixel corner (y, x) is fine cell (2y+1, 2x+1)
    and an edge's middle lies between two corners; each ring lists every corner and edge middle it passes.
    The rings are exactly what OpenCV's `findContours(RETR_CCOMP, CHAIN_APPROX_NONE)` traces on that fine
    grid with the region drawn over it (each pixel covering 3 x 3 fine cells), once the corners its diagonal
    steps cut are put back: the same points from the same start in the same direction, in the same order
    (the outline, then the holes, last found first), so the simplified outlines are OpenCV's. They are
    found from the region's boundary edges, not from a fine grid: memory goes with the perimeter (about 80
    bytes an edge) once the edges are found (two bytes a pixel of the box for a moment).

    Each boundary edge is walked with the region on its left (the outline counter-clockwise on screen,
    holes clockwise); at a corner where the region touches itself diagonally the walk turns right, so an
    8-connected region is one ring. OpenCV starts the outline at the top-left corner of the region's first
    pixel (reading order), going down, and a hole at the middle of the left edge of its first pixel, going
    up.
    """
    h, w = region.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = region
    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]
    hy, hx = np.nonzero(above != below)  # horizontal edges: corner row hy, from x = hx to hx + 1
    east = above[hy, hx]  # the region above: walked east
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]
    vy, vx = np.nonzero(left != right)  # vertical edges: corner column vx, from y = vy to vy + 1
    south = right[vy, vx]  # the region to the right: walked south
    del padded, above, below, left, right
    direction = np.concatenate([np.where(east, 0, 2), np.where(south, 1, 3)]).astype(np.int8)
    y = np.concatenate([hy, np.where(south, vy, vy + 1)]).astype(np.int32)  # where each edge starts
    x = np.concatenate([np.where(east, hx, hx + 1), vx]).astype(np.int32)
    del hy, hx, vy, vx, east, south
    to_y, to_x = y + _TURN[direction, 0], x + _TURN[direction, 1]
    n = len(direction)
    corner = y.astype(np.int64) * (w + 1) + x
    by_corner = np.argsort(corner, kind="stable").astype(np.int32)
    first = np.searchsorted(corner[by_corner], to_y.astype(np.int64) * (w + 1) + to_x).astype(np.int32)
    del corner
    following = by_corner[first]
    # two edges leave a corner where the region touches itself diagonally: the one turning right
    pinch = np.flatnonzero(first + 1 < n)
    pinch = pinch[(y[by_corner[first[pinch] + 1]] == to_y[pinch]) & (x[by_corner[first[pinch] + 1]] == to_x[pinch])]
    other = by_corner[first[pinch] + 1]
    following[pinch] = np.where(direction[other] == (direction[pinch] + 1) % 4, other, following[pinch])
    del by_corner, first, pinch, other
    # each ring named by its smallest edge, by pointer doubling
    steps = int(n).bit_length() + 1
    ring, jump = np.arange(n, dtype=np.int32), following.copy()
    for _ in range(steps):
        np.minimum(ring, ring[jump], out=ring)
        jump = jump[jump]
    # where each ring starts: the outline at the first pixel's left edge going down (the first such edge in
    # reading order), a hole at the left edge of its first pixel going up
    never = np.iinfo(np.int64).max
    down = np.where(direction == 1, y.astype(np.int64) * w + x, never)  # the region's pixel right of the edge
    up = np.where(direction == 3, to_y.astype(np.int64) * w + to_x, never)  # the hole's pixel right of it
    outline = ring[np.argmin(down)]
    key = np.where(ring == outline, down, up)
    del down, up
    least = np.full(n, never)
    np.minimum.at(least, ring, key)
    starts = np.flatnonzero(key == least[ring])
    # each edge's place in its ring: its distance to the ring's last edge (the one before its start)
    last = np.zeros(n, bool)
    before = np.empty(n, np.int32)
    before[following] = np.arange(n, dtype=np.int32)
    last[before[starts]] = True
    del before
    to_end = (~last).astype(np.int32)
    jump = np.where(last, np.arange(n, dtype=np.int32), following)
    for _ in range(steps):
        to_end += to_end[jump]
        jump = jump[jump]
    del jump, following
    place = np.bincount(ring, minlength=n)[ring] - 1 - to_end
    order = np.lexsort((place, ring))  # edges ring by ring, each from its start
    points = np.empty((2 * n, 2), np.int32)  # per edge: its first corner, then its middle
    points[0::2, 0], points[0::2, 1] = 2 * x[order] + 1, 2 * y[order] + 1
    points[1::2, 0], points[1::2, 1] = x[order] + to_x[order] + 1, y[order] + to_y[order] + 1
    bounds = np.searchsorted(ring[order], ring[starts])
    sizes = np.bincount(ring, minlength=n)[ring[starts]]
    holes = [i for i in np.argsort(-key[starts], kind="stable") if ring[starts[i]] != outline]
    rings = []
    for i in [int(np.flatnonzero(ring[starts] == outline)[0]), *holes]:
        pts = points[2 * bounds[i] : 2 * (bounds[i] + sizes[i])]
        hole = bool(ring[starts[i]] != outline)
        rings.append((np.roll(pts, -1, axis=0) if hole else pts, hole))  # a hole starts at its edge's middle
    return [(pts.reshape(-1, 1, 2), hole) for pts, hole in rings]


def _edge_rings(region: np.ndarray, tolerance: float, whole: bool = True) -> list[tuple[np.ndarray, bool]]:
    """Outlines of a region (bool [h, w], one 8-connected component) along its pixels' edges, simplified:
    [(ring [n, 2] float in the region's pixel coordinates, is a hole)]. The rings of `crack_contours` (by
    OpenCV on the fine grid for a box of up to `_FINE_PIXELS` pixels: the same points, faster), simplified by
    Douglas-Peucker; fine coordinate f is pixel coordinate (f - 1) / 2. `whole=False`: a part of a region
    (`_part_boxes`), which may fall apart into several pieces, each outlined: always on the fine grid."""
    rings = []
    trace = fine_contours if region.size <= _FINE_PIXELS or not whole else crack_contours
    for contour, hole in trace(region):
        simple = cv2.approxPolyDP(contour, 2.0 * tolerance, True)  # fine cells are half a pixel
        if len(simple) < 3:
            simple = contour
        ring = (simple.reshape(-1, 2).astype(np.float64) - 1.0) / 2.0
        if (_signed_area(ring) < 0) != hole:  # outlines clockwise, holes counter-clockwise
            ring = ring[::-1]
        rings.append((ring, hole))
    return rings


def _number(v: float) -> str:
    return f"{v:.1f}".removesuffix(".0")


def _svg(rings: list[tuple[np.ndarray, bool]], colour: str) -> str:
    """An SVG document of one path: a subpath per ring, even-odd filled in the class colour."""
    d = " ".join("M" + " L".join(f"{_number(x)} {_number(y)}" for x, y in ring) + " Z" for ring, _ in rings)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg"><path fill-rule="evenodd" '
        f'fill="{colour}" fill-opacity="0.3" stroke="{colour}" stroke-width="2" d="{d}"/></svg>'
    )


def _checked(
    labels: MapRows, confidence: MapRows, classes: ClassTable, object_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels per label value; the object mask as bool. ValueError for shapes or labels that do not fit."""
    if len(labels.shape) != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a uint8 label map [H, W], got {labels.dtype} {labels.shape}")
    if confidence.shape != labels.shape:
        raise ValueError(f"confidence {confidence.shape} and labels {labels.shape} differ in size")
    if object_mask is not None and object_mask.shape != labels.shape:
        raise ValueError(f"object_mask {object_mask.shape} and labels {labels.shape} differ in size")
    counts = np.zeros(256, np.int64)
    step = _band_rows(labels.shape[1])
    for y in range(0, labels.shape[0], step):  # bincount casts to int64: 8 bytes a pixel of what it is given
        counts += np.bincount(labels.rows(y, y + step).reshape(-1), minlength=256)
    stray = [int(v) for v in np.flatnonzero(counts) if v >= classes.num_classes and v != classes.ignore_index]
    if stray:
        raise ValueError(f"labels {stray[:10]} are neither a class id nor the ignore id {classes.ignore_index}")
    return counts, None if object_mask is None else object_mask.astype(bool, copy=False)


def write_documents(
    open_file: Callable[[str], AbstractContextManager[BinaryIO]],
    stem: str,
    labels: np.ndarray | MapRows,
    confidence: np.ndarray | MapRows,
    classes: ClassTable,
    scan: ScanRef,
    base: str,
    object_mask: np.ndarray | None = None,
    min_area: int = MIN_AREA,
    tolerance: float = TOLERANCE_PX,
    layer: bool = True,
) -> dict[str, Any]:
    """Write the damage layer, the AnnotationPage and the manifest of one scan (see the module docstring), each
    through `open_file(name)` (a context manager giving a binary file: `poc59.core.atomic.replacing` for files
    that appear whole or not at all), the manifest last; return the summary.

    `labels` uint8 [H, W] (class ids, 255 outside the object); `confidence` [H, W], the winning class's
    probability: floats in [0, 1], or uint8 where 0..255 means 0..1; `object_mask` [H, W], non-zero = object
    (the share of each region is of the object, else of the whole image; pixels outside it are in no region);
    `base` the IDs' base URI ending in "/" (`ids_base`). The maps may be arrays or kept on disk (`MapRows`):
    they are read a band or a region's window at a time. `layer=False` leaves the damage layer out of the
    files (a caller that wrote it as the labels streamed, `damage_layer_palette`).

    The AnnotationPage is written an annotation at a time as each region is traced, so its size in memory is
    one region's, however many regions the scan holds (its label, which counts them, comes after its items).
    """
    labels, confidence = _map_rows(labels), _map_rows(confidence)
    if min_area < 1 or tolerance < 0:
        raise ValueError(f"min_area must be at least 1 and tolerance at least 0, got {min_area} and {tolerance}")
    counts, inside = _checked(labels, confidence, classes, object_mask)
    if (scan.height, scan.width) != labels.shape:
        raise ValueError(
            f"the scan is {scan.width} x {scan.height} px but the labels {labels.shape[1]} x {labels.shape[0]} px"
        )
    scale = 1 / 255 if confidence.dtype == np.uint8 else 1.0
    reference = int(np.count_nonzero(inside)) if inside is not None else labels.shape[0] * labels.shape[1]
    names = dict(zip(LAYOUT, output_names(stem)))
    manifest_id, page_id, layer_id = (base + quote(names[k]) for k in ("manifest", "annotations", "layer"))
    canvas_id = f"{base}{quote(stem)}/canvas/1"
    if layer:
        with open_file(names["layer"]) as f:
            write_damage_layer(f, labels, classes)

    where = "object mask" if inside is not None else "image"
    per_class: dict[str, dict[str, int]] = {}
    regions = parted = parts = written = 0  # regions; those annotated in parts and their parts; annotations
    with open_file(names["annotations"]) as f:
        head = {"@context": PRESENTATION_CONTEXT, "id": page_id, "type": "AnnotationPage"}
        f.write(_json(head).rstrip()[:-1] + b', "items": [')  # compact: thousands of regions
        for c in range(1, classes.num_classes):  # Clean (0) is no damage
            if not counts[c]:
                continue
            found = class_regions(labels, c, inside, confidence, min_area=min_area)
            per_class[classes.names[c]] = {
                "regions": len(found.stats),
                "specks": found.specks,
                "speck_pixels": found.speck_pixels,
            }
            for k in range(len(found.stats)):
                x, y, w, h, area = (int(v) for v in found.stats[k])
                damage = {
                    "class_id": c,
                    "class": classes.names[c],
                    "pixels": area,
                    "percent": 100 * area / reference,
                    "reference": where,
                    "mean_confidence": float(found.confidence_sums[k]) / area * scale,
                    "bbox": [x, y, w, h],
                }
                region = _region_in_box(labels, c, inside, (x, y, w, h), found.seeds[k])
                regions += 1
                pieces = [(0, 0, h, w)] if _outlined_whole(region) else _part_boxes(region)
                whole = len(pieces) == 1  # a region in one square is a whole region
                if not whole:
                    parted, parts = parted + 1, parts + len(pieces)
                for i, (py, px, ph, pw) in enumerate(pieces, 1):
                    piece = region if whole else np.ascontiguousarray(region[py : py + ph, px : px + pw])
                    gx, gy = x + px, y + py
                    rings = [(ring + (gx, gy), hole) for ring, hole in _edge_rings(piece, tolerance, whole)]
                    if whole:
                        part, annotation_id = damage, f"{page_id}#region-{regions}"
                    else:
                        pixels = int(np.count_nonzero(piece))
                        window = confidence.rows(gy, gy + ph, gx, gx + pw)
                        part = {
                            **damage,
                            "pixels": pixels,
                            "percent": 100 * pixels / reference,
                            "mean_confidence": float(window[piece].mean(dtype=np.float64)) * scale,
                            "bbox": [gx, gy, pw, ph],
                            "part": {"index": i, "of": len(pieces), "region": damage},
                        }
                        annotation_id = f"{page_id}#region-{regions}-part-{i}"
                    part = {**part, "holes": sum(hole for _, hole in rings)}
                    annotation = _region_annotation(annotation_id, canvas_id, part, rings, classes)
                    f.write((b"" if written == 0 else b", ") + _json(annotation).rstrip())
                    written += 1
                del region, piece
        label = f"{stem}: {regions} damage regions"
        if parted:
            label += f" in {written} annotations ({parted} of them in {parts} parts)"
        f.write(b'], "label": ' + _json({"en": [label]}).rstrip() + b"}\n")
    specks = sum(v["specks"] for v in per_class.values())
    manifest = _manifest(stem, scan, manifest_id, canvas_id, page_id, layer_id, regions, parted, specks, min_area)
    with open_file(names["manifest"]) as f:  # last: a manifest on disk means its page and layer are there
        f.write(_json(manifest, indent=1))
    return {
        **{k: names[k] for k in LAYOUT},
        "regions": regions,
        "parted": parted,
        "parts": parts,
        "specks": specks,
        "min_area": min_area,
        "tolerance_px": tolerance,
        "classes": per_class,
    }


_COUNT_PIXELS = 1 << 18  # pixels counted at once (bincount's int64 copy of them: 2 MB)


def _band_rows(width: int) -> int:
    """Rows of a map `width` px wide read at once: about `_COUNT_PIXELS` pixels, at least one row."""
    return max(1, _COUNT_PIXELS // max(1, width))


LABEL_PIXELS = 1 << 20  # pixels labelled at once: OpenCV's int32 map and the per-pixel temporaries of a band


@dataclass
class ClassRegions:
    """The 8-connected regions of one class, in OpenCV's label order (`class_regions`): `stats` int64 [n, 5]
    as OpenCV's (left, top, width, height, area), `seeds` int64 [n, 2] one pixel (y, x) of each region,
    `confidence_sums` float64 [n] the sum of the confidence map over each region (when one was given); the
    regions under `min_area` pixels are left out, counted in `specks` and their pixels in `speck_pixels`."""

    stats: np.ndarray
    seeds: np.ndarray
    confidence_sums: np.ndarray | None
    specks: int = 0
    speck_pixels: int = 0


def _roots(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over the pairs (a[i], b[i]) of ids 0..len(parent)-1, vectorised: each id's root, the smallest
    id it is joined to."""
    while True:
        while True:  # path compression: every id points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            return parent
        np.minimum.at(parent, np.maximum(ra, rb)[apart], np.minimum(ra, rb)[apart])


def class_regions(
    labels: np.ndarray | MapRows,
    c: int,
    inside: np.ndarray | None = None,
    confidence: np.ndarray | MapRows | None = None,
    band_rows: int | None = None,
    min_area: int = 1,
) -> ClassRegions:
    """The 8-connected regions of the pixels of class `c` in `labels` (within `inside`, bool, where given), found
    a band of rows at a time: the same regions, figures and order as one `cv2.connectedComponentsWithStats` of
    the whole mask, without the whole mask or component map.

    Each band is labelled by OpenCV; the regions of consecutive bands that touch across their edge (a pixel of
    one band's last row and one of the next band's first row, dx in -1..1) are joined by a union-find over
    the bands' labels, and their areas, boxes and confidence sums added up. The order is OpenCV's: its
    block-based labelling numbers the regions in the raster order of the first 2 x 2 block (aligned on even
    rows and columns) each one touches, so the regions are sorted by that block, and a seed pixel is kept
    from it. `band_rows` (by default about `LABEL_PIXELS` pixels) sets the band's height.

    Regions of fewer than `min_area` pixels (specks) are only counted: one that lies within a band is dropped
    as soon as the band is labelled, so a map of dense specks keeps records only of the pieces that touch a
    band edge and of the regions kept."""
    labels = _map_rows(labels)
    confidence = None if confidence is None else _map_rows(confidence)
    height, width = labels.shape
    step = band_rows or max(1, LABEL_PIXELS // max(1, width))
    blocks_wide = (width + 1) // 2
    parts: list[list[np.ndarray]] = []  # per band: stats [n, 5] in the scan's rows, first key [n], sums [n]
    joins: list[np.ndarray] = []  # [2, k] provisional ids that touch across a band edge
    last: np.ndarray | None = None  # the provisional id of each pixel of the previous band's last row, -1 none
    count = specks = speck_pixels = 0
    for y0 in range(0, height, step):
        mask = labels.rows(y0, y0 + step) == c
        if inside is not None:
            mask &= inside[y0 : y0 + step]
        if not mask.any():
            last = None
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        del mask
        at = np.flatnonzero(comp)
        ids = comp.reshape(-1)[at]
        ys, xs = np.divmod(at, width)
        ys += y0
        # the 2 x 2 block of the scan (raster order) and the pixel in it: its minimum over a region is the
        # region's first block and a pixel of the region in it
        key = ((ys >> 1) * blocks_wide + (xs >> 1)) * 4 + (ys & 1) * 2 + (xs & 1)
        del ys, xs
        first = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first, ids, key)
        del key
        sums = np.zeros(n)
        if confidence is not None:
            sums = np.bincount(ids, weights=confidence.rows(y0, y0 + step).reshape(-1)[at], minlength=n)
        del at, ids
        # a piece touching neither band edge is a whole region: a speck is counted and dropped at once
        band_top, band_area = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_AREA]
        edge = (band_top == 0) | (band_top + stats[:, cv2.CC_STAT_HEIGHT] == len(comp))
        small = ~edge & (band_area < min_area)
        small[0] = False
        specks += int(np.count_nonzero(small))
        speck_pixels += int(band_area[small].sum())
        kept = ~small
        kept[0] = False
        ids_of = np.full(n, -1, np.int64)  # provisional id of each band label, -1 for none
        ids_of[kept] = count + np.arange(int(np.count_nonzero(kept)))
        band_stats = stats[kept].astype(np.int64)
        band_stats[:, cv2.CC_STAT_TOP] += y0
        parts.append([band_stats, first[kept], sums[kept]])
        top = ids_of[comp[0]]
        if last is not None:
            touching = []
            for dx in (-1, 0, 1):  # pixel x of this band's first row against x + dx of the last band's last row
                a = top[max(0, -dx) : width - max(0, dx)]
                b = last[max(0, dx) : width - max(0, -dx)]
                both = (a >= 0) & (b >= 0)
                touching.append((a[both] << 32) | b[both])
            # each pair of pieces once: a class covering the scan touches across every pixel of every band edge
            pairs = np.unique(np.concatenate(touching))
            joins.append(np.stack([pairs >> 32, pairs & 0xFFFFFFFF]))
        last = ids_of[comp[-1]]
        count += len(band_stats)
        del comp
    if not count:
        none = None if confidence is None else np.zeros(0)
        return ClassRegions(np.zeros((0, 5), np.int64), np.zeros((0, 2), np.int64), none, specks, speck_pixels)
    stats, first, sums = (np.concatenate(p) for p in zip(*parts))
    del parts
    pairs = np.concatenate(joins, axis=1) if joins else np.zeros((2, 0), np.int64)
    roots = _roots(np.arange(count), pairs[0], pairs[1])
    _, region = np.unique(roots, return_inverse=True)
    by_region = np.argsort(region, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(region[by_region]) != 0])

    def reduce(ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(values[by_region], starts)

    left, top_row = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x0, y0_ = reduce(np.minimum, left), reduce(np.minimum, top_row)
    x1 = reduce(np.maximum, left + stats[:, cv2.CC_STAT_WIDTH])
    y1 = reduce(np.maximum, top_row + stats[:, cv2.CC_STAT_HEIGHT])
    merged = np.stack([x0, y0_, x1 - x0, y1 - y0_, reduce(np.add, stats[:, cv2.CC_STAT_AREA])], 1)
    key, total = reduce(np.minimum, first), reduce(np.add, sums)
    small = merged[:, cv2.CC_STAT_AREA] < min_area
    specks += int(np.count_nonzero(small))
    speck_pixels += int(merged[small, cv2.CC_STAT_AREA].sum())
    merged, key, total = merged[~small], key[~small], total[~small]
    order = np.argsort(key)
    key = key[order]
    block_y, block_x = np.divmod(key >> 2, blocks_wide)
    seeds = np.stack([2 * block_y + ((key >> 1) & 1), 2 * block_x + (key & 1)], 1)
    return ClassRegions(merged[order], seeds, None if confidence is None else total[order], specks, speck_pixels)


def _region_in_box(
    labels: MapRows, c: int, inside: np.ndarray | None, box: tuple[int, int, int, int], seed: np.ndarray
) -> np.ndarray:
    """The region of class `c` holding `seed` (y, x) as bool [h, w] of its box (x, y, w, h): the box's pixels of
    the class, flood-filled 8-connected from the seed (a region is connected within its own box)."""
    x, y, w, h = box
    mask = np.empty((h, w), bool)
    step = max(1, LABEL_PIXELS // w)
    for top in range(0, h, step):  # read in bands: 1 byte a pixel of the box, not 2
        np.equal(labels.rows(y + top, y + min(h, top + step), x, x + w), c, out=mask[top : top + step])
    if inside is not None:
        mask &= inside[y : y + h, x : x + w]
    image = mask.view(np.uint8)  # 1 = the class; the region filled with 2, in place (no component map)
    cv2.floodFill(image, None, (int(seed[1]) - x, int(seed[0]) - y), 2, flags=8)
    np.equal(image, 2, out=mask)
    return mask


PART_SIDE = 1024
"""A region too large to outline whole (`_outlined_whole`) is annotated in parts: its pixels within each square of
a grid of this side (from its box's top-left corner), one annotation per square it touches."""

_WHOLE_BOX = 1 << 26  # the largest box outlined whole by following its edges: 2 bytes a pixel for a moment (128 MB)
_WHOLE_EDGES = 1 << 22  # the most pixel edges an outline followed whole may have: about 80 bytes each (320 MB)


def _outlined_whole(region: np.ndarray) -> bool:
    """Whether the region (bool [h, w], its box) is outlined in one annotation: a box of up to `_FINE_PIXELS`
    pixels, or of up to `_WHOLE_BOX` pixels whose outline has at most `_WHOLE_EDGES` pixel edges. Past that,
    tracing it whole would cost memory without bound (a region spread over the scan, holding thousands of
    holes), and one SVG path of millions of points is more than a viewer can draw."""
    if region.size <= _FINE_PIXELS:
        return True
    if region.size > _WHOLE_BOX:
        return False
    height, width = region.shape
    edges = int(np.count_nonzero(region[0])) + int(np.count_nonzero(region[-1]))
    step = max(1, _FINE_PIXELS // width)
    for y in range(0, height, step):  # counted a band at a time: 1 byte a pixel of a band for the comparisons
        band = region[max(0, y - 1) : y + step]
        edges += int(np.count_nonzero(band[1:] != band[:-1]))
        band = region[y : y + step]
        edges += int(np.count_nonzero(band[:, 1:] != band[:, :-1]) + np.count_nonzero(band[:, [0, -1]]))
        if edges > _WHOLE_EDGES:
            return False
    return True


def _part_boxes(region: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The boxes (top, left within the region's box, height, width) of the region's pixels within each
    `PART_SIDE` square of its box that it touches, in reading order of the squares."""
    boxes = []
    for ty in range(0, region.shape[0], PART_SIDE):
        for tx in range(0, region.shape[1], PART_SIDE):
            square = region[ty : ty + PART_SIDE, tx : tx + PART_SIDE]
            rows, cols = np.flatnonzero(square.any(1)), np.flatnonzero(square.any(0))
            if len(rows):
                y0, x0 = int(rows[0]), int(cols[0])
                boxes.append((ty + y0, tx + x0, int(rows[-1]) + 1 - y0, int(cols[-1]) + 1 - x0))
    return boxes


def _region_annotation(
    annotation_id: str,
    canvas_id: str,
    damage: dict[str, Any],
    rings: list[tuple[np.ndarray, bool]],
    classes: ClassTable,
) -> dict[str, Any]:
    """One region's Annotation: the class name and its figures as text, its outline as an SvgSelector."""
    of = "the object" if damage["reference"] == "object mask" else "the image"
    figures = (
        f"{damage['pixels']} px, {damage['percent']:.2f} % of {of}, mean confidence {damage['mean_confidence']:.2f}"
    )
    if "part" in damage:
        part, region = damage["part"], damage["part"]["region"]
        figures += (
            f"; part {part['index']} of {part['of']} of one region of {region['pixels']} px, "
            f"{region['percent']:.2f} % of {of}, mean confidence {region['mean_confidence']:.2f}"
        )
    return {
        "id": annotation_id,
        "type": "Annotation",
        "motivation": "commenting",
        "body": [_text(damage["class"], "classifying"), _text(figures, "describing")],
        "target": {
            "type": "SpecificResource",
            "source": canvas_id,
            "selector": {"type": "SvgSelector", "value": _svg(rings, classes.palette[damage["class_id"]])},
        },
        "damage": damage,
    }


def _text(value: str, purpose: str) -> dict[str, str]:
    return {"type": "TextualBody", "value": value, "format": "text/plain", "language": "en", "purpose": purpose}


def _json(obj: Any, indent: int | None = None) -> bytes:
    return (json.dumps(obj, indent=indent, allow_nan=False) + "\n").encode()


def _manifest(
    stem: str,
    scan: ScanRef,
    manifest_id: str,
    canvas_id: str,
    page_id: str,
    layer_id: str,
    regions: int,
    parted: int,
    specks: int,
    min_area: int,
) -> dict[str, Any]:
    size = {"width": scan.width, "height": scan.height}
    image = {"id": scan.image, "type": "Image", **({"format": scan.format} if scan.format else {}), **size}
    if scan.service:
        image["service"] = [scan.service]
    layer = {"id": layer_id, "type": "Image", "format": "image/png", **size, "label": {"en": ["Damage map"]}}
    painting = [("scan", image, "Scan"), ("damage", layer, "Damage map")]
    return {
        "@context": PRESENTATION_CONTEXT,
        "id": manifest_id,
        "type": "Manifest",
        "label": {"none": [stem]},
        "summary": {
            "en": [
                f"Damage predicted by poc59: {regions} regions annotated"
                + (f" ({parted} too large to outline whole, in parts of {PART_SIDE} px squares)" if parted else "")
                + f"; {specks} specks under {min_area} px left out of the annotations (they are in the damage map)."
            ]
        },
        "items": [
            {
                "id": canvas_id,
                "type": "Canvas",
                "label": {"none": [stem]},
                **size,
                "items": [
                    {
                        "id": f"{canvas_id}/painting",
                        "type": "AnnotationPage",
                        "items": [
                            {
                                "id": f"{canvas_id}/painting/{key}",
                                "type": "Annotation",
                                "motivation": "painting",
                                "label": {"en": [label]},
                                "body": body,
                                "target": canvas_id,  # a plain id: Mirador reads painting targets as strings
                            }
                            for key, body, label in painting
                        ],
                    }
                ],
                "annotations": [{"id": page_id, "type": "AnnotationPage"}],
            }
        ],
    }


def write_iiif(
    out_dir: str | Path,
    stem: str,
    labels: np.ndarray | MapRows,
    confidence: np.ndarray | MapRows,
    classes: ClassTable,
    scan: ScanRef,
    object_mask: np.ndarray | None = None,
    min_area: int = MIN_AREA,
    tolerance: float = TOLERANCE_PX,
    base_url: str | None = None,
    layer: bool = True,
) -> dict[str, Any]:
    """Write `<stem>_damage.png` (unless `layer=False`), `<stem>.annotations.json` and `<stem>.manifest.json`
    into `out_dir`, each streamed into a new file that replaces its name only when complete, the manifest last,
    and return the summary: the three file names, the regions annotated, the specks left out, per class. IDs
    under `base_url`, or the folder's file: URI without it. See `write_documents`."""
    base = ids_base(out_dir, base_url)
    out = Path(out_dir)
    return write_documents(
        lambda name: replacing(out / name),
        stem,
        labels,
        confidence,
        classes,
        scan,
        base,
        object_mask,
        min_area,
        tolerance,
        layer,
    )
