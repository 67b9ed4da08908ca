"""What predict hands over per scan: a palette label map, an overlay with a legend, damage statistics.

Files people open without poc59: the label map is a palette PNG (mode "P": the
pixel values are the class ids, the palette the model's colours, 255 = outside
the object in the ignore colour), the overlay a PNG of the scan with damage in
its class colour and a legend of the classes present, and the statistics one
CSV and one JSON for the whole batch (which also records every file the batch wrote, so a later
`overwrite=true` replaces exactly that batch). Colours and names come from the model's
class table (`poc59.analysis.colour`). Every file is written atomically.

predict streams: the label map and the overlay are encoded band by band as the rows of the map are finished
(`PngFile`, `OverlayPicture`: only the band being encoded is held, never the picture), and the label and
confidence maps that the IIIF annotations and the report need are kept on disk (`SpilledMap`), not in memory.

With `pyramid=true`, also the class map and the confidence map as tiled, pyramidal TIFFs that viewers
streaming pyramids open a region and a scale at a time (`MapPyramids`, written band by band through
`poc59.inference.pyramid`): <stem>_classes.tif holds the class ids with the class table's colours as its
palette (reduced by nearest neighbour), <stem>_confidence.tif the predicted class's softmax probability as
uint8, round(255 p) (reduced by the mean; 0 outside the object). uint8, not float16: every viewer displays
8-bit gray, few a float16 TIFF, and 1/255 is finer than any threshold one reads off a map.

With `report=true`, also a condition report per scan, <stem>.report.html (`poc59.inference.report`; with
`report_pdf=true` its PDF, <stem>.report.pdf, printed by headless Chromium), and index.html for the batch:
`write_scan_report` reads the scan again into a preview (reduced band by band, so the scan is never held
whole for it) and reduces the label and confidence maps to the same size; the report's table holds the
statistics counted at full resolution.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import struct
import tempfile
import zlib
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from poc59.analysis.colour import legend, lookup_table
from poc59.core.atomic import replacing, write_bytes, write_json
from poc59.core.classes import ClassTable
from poc59.inference.pyramid import PyramidWriter, StreamedFile, working_bytes
from poc59.inference.report import (
    PdfError,
    card_facts,
    preview_factor,
    print_pdf,
    reduce_confidence,
    reduce_labels,
    reduce_rgb,
    write_condition_report,
    write_report_index,
)
from poc59.inference.scans import Scan, open_scan

__all__ = [
    "STATISTICS_CONVENTION",
    "MapPyramids",
    "OverlayPicture",
    "PngFile",
    "PngStream",
    "REPORT_INDEX",
    "band_confidence",
    "damage_statistics",
    "label_map_png",
    "report_outputs",
    "SpilledMap",
    "scan_preview",
    "write_batch_index",
    "write_scan_report",
    "write_statistics",
]

log = logging.getLogger("poc59.predict")

REPORT_SUFFIX, REPORT_PDF_SUFFIX, REPORT_INDEX = ".report.html", ".report.pdf", "index.html"

STATISTICS_CONVENTION = (
    "pixels: predicted pixels per class at the scan's own resolution; percent: 100 x pixels / reference pixels, "
    "where the reference is the whole image, or the object (non-zero pixels of the object mask) when one is given; "
    "pixels outside the object are not counted. The classes' percents sum to 100."
)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # scans are large: fast compression, still lossless
    return buf.getvalue()


def label_map_png(labels: np.ndarray, classes: ClassTable) -> bytes:
    """Palette PNG bytes of a label map uint8 [H, W]: values = class ids, palette = the model's colours."""
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), "L")
    img.putpalette(lookup_table(classes).reshape(-1).tolist())  # turns "L" into "P"
    return _png(img)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _up_filtered(rows: np.ndarray, above: np.ndarray) -> np.ndarray:
    """PNG scanlines [h, 1 + 3W] of RGB rows [h, 3W] uint8 under the Up filter (each byte minus the byte above
    it, modulo 256); `above` is the row before the first (zeros at the top of the image). On photographs and
    overlays Up compresses as well as Pillow's adaptive choice (within 1 %), in less than half its time."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2  # filter type Up
    np.subtract(rows[0], above, out=out[0, 1:])  # uint8 arithmetic wraps modulo 256, as PNG defines
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


class PngStream:
    """A PNG encoded as its rows arrive, onto `f` (a seekable binary file): nothing but the band being encoded
    and zlib's state is held, whatever the picture's height. RGB rows go under the Up filter (on photographs
    and overlays as small as Pillow's adaptive choice, within 1 %, in less than half its time); palette rows
    (`palette` uint8 [256, 3]: the values are indices into it, `transparency` one alpha byte per index) go
    unfiltered, as Pillow writes palette images. zlib level 1: scans are large, so fast, still lossless.

    The height is whatever the rows add up to: the header is written first with none and rewritten by
    `finish`, so a picture whose height is known only at its end (a legend below a scan) streams too."""

    def __init__(
        self,
        f: BinaryIO,
        width: int,
        palette: np.ndarray | None = None,
        transparency: bytes | None = None,
        level: int = 1,
    ) -> None:
        if width < 1:
            raise ValueError(f"a PNG needs at least one column, got width {width}")
        self.f, self.width, self.height = f, width, 0
        self.channels = 3 if palette is None else 1
        self._start = f.tell()
        self._deflate = zlib.compressobj(level)
        self._above = np.zeros(self.channels * width, np.uint8)
        f.write(b"\x89PNG\r\n\x1a\n" + self._header())
        if palette is not None:
            f.write(_chunk(b"PLTE", np.ascontiguousarray(palette, np.uint8).tobytes()))
        if transparency is not None:
            f.write(_chunk(b"tRNS", bytes(transparency)))

    def _header(self) -> bytes:
        colour = 2 if self.channels == 3 else 3  # 8-bit RGB, or 8-bit palette; not interlaced
        return _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, colour, 0, 0, 0))

    def add(self, rows: np.ndarray) -> None:
        """The next rows below those given before: uint8 [h, W, 3] (RGB) or [h, W] (palette indices)."""
        rows = np.asarray(rows)
        shape = (self.width, 3) if self.channels == 3 else (self.width,)
        if rows.dtype != np.uint8 or rows.shape[1:] != shape:
            raise ValueError(f"rows must be uint8 [h, {', '.join(map(str, shape))}], got {rows.dtype} {rows.shape}")
        if not len(rows):
            return
        flat = np.ascontiguousarray(rows).reshape(len(rows), -1)
        if self.channels == 3:
            lines = _up_filtered(flat, self._above)
            self._above = flat[-1].copy()
        else:
            lines = np.empty((len(rows), self.width + 1), np.uint8)
            lines[:, 0] = 0  # filter type None
            lines[:, 1:] = flat
        self._idat(self._deflate.compress(lines.data))
        self.height += len(rows)

    def _idat(self, data: bytes) -> None:
        for i in range(0, len(data), 2**24):  # chunks well below PNG's 2^31 - 1 bytes
            self.f.write(_chunk(b"IDAT", data[i : i + 2**24]))

    def finish(self) -> int:
        """End the stream (the rest of zlib's output, IEND) and write the header with the height; the file is
        left at its end. Returns the height."""
        if not self.height:
            raise ValueError("a PNG needs at least one row")
        self._idat(self._deflate.flush())
        self.f.write(_chunk(b"IEND", b""))
        end = self.f.tell()
        self.f.seek(self._start + 8)
        self.f.write(self._header())
        self.f.seek(end)
        return self.height


class PngFile(StreamedFile):
    """A `PngStream` into a file at `path`, written under a temporary name beside it and renamed to `path` by
    `close` once complete and on disk (`poc59.core.atomic.replacing`); `abort` leaves nothing under `path`."""

    def __init__(
        self, path: str | Path, width: int, palette: np.ndarray | None = None, transparency: bytes | None = None
    ) -> None:
        self.path = Path(path)
        self._file: ExitStack | None = ExitStack()
        try:
            self.png = PngStream(self._file.enter_context(replacing(self.path)), width, palette, transparency)
        except BaseException:
            self.abort()
            raise

    def add(self, rows: np.ndarray) -> None:
        """The next rows (`PngStream.add`)."""
        if self._file is None:
            raise ValueError(f"{self.path}: the writer is closed")
        self.png.add(rows)

    def close(self) -> Path:
        """Complete the PNG: it appears under `path`."""
        if self._file is None:
            raise ValueError(f"{self.path}: the writer is closed")
        try:
            self.png.finish()
        except BaseException:
            self.abort()
            raise
        file, self._file = self._file, None
        file.close()  # flushed, synced and renamed
        return self.path

    def abort(self) -> None:
        """Give up: the temporary file is removed, nothing is written under `path` (closed: no effect)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.__exit__(_Aborted, _Aborted(), None)  # `replacing` removes its file on an error


class _Aborted(Exception):
    """Handed to `replacing` to give up a streamed file."""


class OverlayPicture(StreamedFile):
    """The overlay PNG at `path`: the scan with damage in its class colour, written band by band as the rows
    arrive (`paste`, top to bottom; `PngFile`), then a legend panel below it (`close`, once the classes present
    are known). Only the band being encoded is held, never the picture. The legend lists the damage classes
    the scan holds: Clean (id 0) and pixels outside the object are drawn as the scan itself, so they get no
    swatch. Until `close` returns nothing is under `path`; `abort` gives the picture up.
    """

    def __init__(self, path: str | Path, width: int, height: int, classes: ClassTable) -> None:
        self.width, self.height, self.classes = width, height, classes
        self.font_size = max(12, min(64, width // 60))  # legible on a phone photo and on a 10,000 px scan
        self.font = _font(self.font_size)
        self.file = PngFile(path, width)
        self.rows = 0

    def paste(self, y0: int, rows: np.ndarray) -> None:
        """Rows y0.. of the overlay (uint8 [h, W, 3], e.g. `poc59.analysis.colour.overlay` of a band); y0 must
        be where the rows given before end."""
        if y0 != self.rows:
            raise ValueError(f"overlay rows are written top to bottom: rows from {y0} given after {self.rows} rows")
        self.file.add(rows)
        self.rows += len(rows)

    def legend_panel(self, present: set[int]) -> Image.Image:
        """The legend below the scan: a swatch and name per damage class in `present` (label values), in id
        order, or "only <class 0>" when there is none."""
        entries = legend(self.classes, set(present) - {0, self.classes.ignore_index})
        box = self.font_size
        pad = box // 2
        texts = [name for name, _ in entries] or [f"only {self.classes.names[0]}"]
        cell = box + 3 * pad + max(int(self.font.getlength(t)) for t in texts)
        cols = max(1, (self.width - pad) // cell)
        panel = Image.new("RGB", (self.width, math.ceil(len(texts) / cols) * (box + pad) + pad), (255, 255, 255))
        draw = ImageDraw.Draw(panel)
        if not entries:
            draw.text((pad, pad), texts[0], fill=(0, 0, 0), font=self.font)
        for k, (name, rgb) in enumerate(entries):
            x, y = pad + (k % cols) * cell, pad + (k // cols) * (box + pad)
            draw.rectangle([x, y, x + box - 1, y + box - 1], fill=tuple(rgb), outline=(0, 0, 0))
            draw.text((x + box + pad, y), name, fill=(0, 0, 0), font=self.font)
        return panel

    def close(self, present: set[int] | None = None) -> Path:
        """Write the legend of the classes in `present` (the label values the scan holds) below the scan and
        complete the PNG under its name. ValueError unless every row of the scan was given."""
        if self.rows != self.height:
            self.abort()
            raise ValueError(f"{self.file.path}: {self.rows} of the overlay's {self.height} rows given")
        self.file.add(np.asarray(self.legend_panel(set(present or ()))))
        return self.file.close()

    def abort(self) -> None:
        """Give up the picture: nothing is left under its name."""
        self.file.abort()


class SpilledMap:
    """A uint8 map [height, width] written band by band, top to bottom (`add`), into an anonymous file in
    `folder` (no name: it vanishes when closed or with the process), and read back a window at a time
    (`rows`): the full-size map is never in memory. What predict keeps of a scan's label and confidence maps
    for the IIIF annotations (`poc59.inference.iiif.write_documents` reads it as it reads an array)."""

    READ_BYTES = 4 * 2**20  # read back in chunks of whole rows of about this size

    def __init__(self, folder: str | Path, width: int, height: int) -> None:
        self.width, self.height, self.written = width, height, 0
        self.dtype = np.dtype(np.uint8)
        self._file: BinaryIO | None = tempfile.TemporaryFile(dir=folder)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _open(self) -> BinaryIO:
        if self._file is None:
            raise ValueError("the spilled map is closed")
        return self._file

    def add(self, rows: np.ndarray) -> None:
        """The next rows, uint8 [h, width]."""
        rows = np.asarray(rows)
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be uint8 [h, {self.width}], got {rows.dtype} {rows.shape}")
        if self.written + len(rows) > self.height:
            raise ValueError(f"rows past the map's height {self.height}")
        f = self._open()
        f.seek(self.written * self.width)
        f.write(np.ascontiguousarray(rows).data)
        self.written += len(rows)

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """The window [y0:y1, x0:x1] of the rows written (uint8, a new array of the window's size)."""
        x1 = self.width if x1 is None else x1
        y1 = min(y1, self.written)
        if not (0 <= y0 <= y1 and 0 <= x0 <= x1 <= self.width):
            raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] outside the {self.written} x {self.width} px written")
        f = self._open()
        out = np.empty((y1 - y0, x1 - x0), np.uint8)
        whole_rows = x0 == 0 and x1 == self.width
        step = len(out) if whole_rows else max(1, self.READ_BYTES // self.width)
        chunk = None if whole_rows else np.empty((min(step, len(out)), self.width), np.uint8)
        for y in range(y0, y1, step):
            n = min(step, y1 - y)
            f.seek(y * self.width)
            target = out[y - y0 : y - y0 + n] if whole_rows else chunk[:n]
            if f.readinto(memoryview(target).cast("B")) != target.nbytes:
                raise OSError(f"the spilled map ended early at row {y}")
            if not whole_rows:
                out[y - y0 : y - y0 + n] = chunk[:n, x0:x1]
        return out

    def close(self) -> None:
        """Free the file (no effect when closed)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def band_confidence(logits: torch.Tensor) -> np.ndarray:
    """The softmax probability of the predicted (argmax) class of logits [C, h, W], as uint8 [h, W]:
    round(255 p). One class at a time (as `poc59.inference.image.band_labels`), so no second [C, h, W] tensor."""
    logits = logits.float()
    top = logits.max(dim=0).values
    total = torch.zeros_like(top)
    for c in range(logits.shape[0]):
        total += torch.exp(logits[c] - top)  # >= 1: the top class contributes exp(0)
    return torch.round(255.0 / total).to(torch.uint8).cpu().numpy()


class MapPyramids(StreamedFile):
    """One scan's <stem>_classes.tif and <stem>_confidence.tif in `folder` (see the module docstring), written
    from bands of rows top to bottom (`add`), then `close`. Until `close` returns, neither file exists under
    its name; `abort` (or leaving a `with` block with an error) gives both up."""

    SUFFIXES = ("_classes.tif", "_confidence.tif")

    def __init__(self, folder: Path, stem: str, width: int, height: int, classes: ClassTable) -> None:
        self.names = [f"{stem}{suffix}" for suffix in self.SUFFIXES]
        # class ids: runs of one value that Deflate's level 6 packs 2x smaller than level 1, as fast; confidence:
        # smooth but noisy values that level 6 packs only ~5 % smaller, 3-4x slower, and differencing helps
        self.classes = PyramidWriter(folder / self.names[0], width, height, "nearest", lookup_table(classes))
        try:
            self.confidence = PyramidWriter(folder / self.names[1], width, height, "mean", level=1, predictor=True)
        except BaseException:
            self.classes.abort()
            raise

    @staticmethod
    def working_bytes(width: int) -> int:
        """The memory both maps' writers hold while a scan `width` px wide streams through them."""
        return 2 * working_bytes(width)

    def add(self, labels: np.ndarray, confidence: np.ndarray) -> None:
        """The next rows: class ids and confidence, both uint8 [h, W]."""
        self.classes.add(labels)
        self.confidence.add(confidence)

    def close(self) -> list[str]:
        """Write both files; returns their names."""
        try:
            self.classes.close()
            self.confidence.close()
        finally:
            self.abort()
        return self.names

    def abort(self) -> None:
        """Give up what is not yet written (a closed map: no effect)."""
        self.classes.abort()
        self.confidence.abort()


def damage_statistics(
    image: str, counts: np.ndarray, classes: ClassTable, size: tuple[int, int], object_pixels: int | None = None
) -> dict[str, Any]:
    """One scan's area per class by name. `counts` [256]: pixels per label value (255 = outside the object)."""
    width, height = size
    reference = int(object_pixels) if object_pixels is not None else width * height
    per_class = {}
    for c, name in enumerate(classes.names):
        pixels = int(counts[c])
        per_class[name] = {"pixels": pixels, "percent": 100.0 * pixels / reference if reference else None}
    return {
        "image": image,
        "width": width,
        "height": height,
        "reference": "object mask" if object_pixels is not None else "image",
        "reference_pixels": reference,
        "classes": per_class,
    }


def write_statistics(
    folder: Path, rows: list[dict[str, Any]], classes: ClassTable, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """statistics.csv (one row per scan, `<class> pixels` / `<class> %` columns) and statistics.json (rows + meta)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(
        ["image", "width", "height", "reference", "reference_pixels"]
        + [f"{name} {unit}" for name in classes.names for unit in ("pixels", "%")]
    )
    for r in rows:
        values = [r["classes"][name] for name in classes.names]
        out.writerow(
            [r["image"], r["width"], r["height"], r["reference"], r["reference_pixels"]]
            + [x for v in values for x in (v["pixels"], "" if v["percent"] is None else f"{v['percent']:.6f}")]
        )
    csv_path = write_bytes(folder / "statistics.csv", buf.getvalue().encode())
    json_path = write_json(folder / "statistics.json", {**meta, "convention": STATISTICS_CONVENTION, "images": rows})
    return csv_path, json_path


def report_outputs(stems: list[str], pdf: bool) -> list[str]:
    """The files `report=true` writes for a batch of scans named `stems`: each one's report (and PDF), the index."""
    suffixes = (REPORT_SUFFIX, REPORT_PDF_SUFFIX) if pdf else (REPORT_SUFFIX,)
    return [f"{stem}{suffix}" for stem in stems for suffix in suffixes] + [REPORT_INDEX]


def scan_preview(scan: Scan, k: int) -> np.ndarray:
    """The scan reduced k times (`poc59.inference.report.reduce_rgb`), read top to bottom in bands of whole
    blocks: a streamed scan is never held whole for it."""
    band = k * max(1, 256 // k)
    return np.concatenate([reduce_rgb(scan.rows(y0, y0 + band), k) for y0 in range(0, scan.height, band)])


def _shown_settings(model: Any, s: Any) -> dict[str, str]:
    """The prediction's settings as a report shows them ({label: value})."""
    members = (model.card.provenance.get("ensemble") or {}).get("members")
    shown = {"model file": str(model.source) + (f" and {len(members) - 1} more (an ensemble)" if members else "")}
    if model.geometry["policy"] == "crop":
        shown["tile overlap"] = f"{s.overlap:g} (share of a tile shared with its neighbour)"
    shown["flip averaging (tta)"] = "yes: averaged with the mirrored scan's prediction" if s.tta else "no"
    shown["object mask"] = s.object_mask or "none: the whole image is the object"
    shown["device"] = f"{s.device}, precision {s.precision}"
    return shown


def write_scan_report(
    out: Path,
    image: Any,
    labels: np.ndarray,
    confidence: np.ndarray,
    row: dict[str, Any],
    model: Any,
    s: Any,
) -> dict[str, str | None]:
    """One scan's condition report in `out` (and its PDF with `s.report_pdf`): `image` the scan (a Path or a
    IIIF image, read again into a preview), `labels` and `confidence` its full-size maps (uint8), `row` its
    statistics, `model` the TrainedModel, `s` predict's Settings. Returns {"report", "report_pdf"}: the files
    written (report_pdf None when not asked, or when Chromium failed: logged as an error naming it)."""
    remote = not isinstance(image, Path)
    scan = image.open(s.allow_large_images) if remote else open_scan(image, s.allow_large_images, 64 * 2**20)
    try:
        k = preview_factor(scan.width, scan.height)
        picture = scan_preview(scan, k)
    finally:
        scan.close()
    card = card_facts(model.extra.get("card") or model.card.to_dict(), model.source, model.run_dir)
    names = report_outputs([image.stem], s.report_pdf)[:-1]
    html_path = write_condition_report(
        out / names[0],
        stem=image.stem,
        scan_rgb=picture,
        labels=reduce_labels(labels, k, model.classes),
        confidence=reduce_confidence(confidence, k),
        stats=row,
        card=card,
        settings=_shown_settings(model, s),
        classes=model.classes,
        predicted_at=datetime.now(timezone.utc),
        pdf_name=names[1] if s.report_pdf else None,
    )
    pdf = None
    if s.report_pdf:
        try:
            pdf = print_pdf(html_path, out / names[1]).name
        except PdfError as err:
            log.error("%s: the report's PDF was not printed: %s", image, err)
    return {"report": names[0], "report_pdf": pdf}


def write_batch_index(out: Path, rows: list[dict[str, Any]], failed: list[dict[str, Any]]) -> str:
    """index.html in `out`: each predicted scan's report (and PDF), and the scans not predicted. Its name."""
    entries = [{"report": r["report"], "pdf": r.get("report_pdf"), "stats": r} for r in rows if r.get("report")]
    return write_report_index(out, entries, failed).name
