"""What predict hands over per scan: a palette label map, an overlay with a legend, damage statistics.

Files people open without poc59: the label map is a palette PNG (mode "P": the
pixel values are the class ids, the palette the model's colours, 255 = outside
the object in the ignore colour), the overlay a PNG of the scan with damage in
its class colour and a legend of the classes present, and the statistics one
CSV and one JSON for the whole batch (which also records every file the batch wrote, so a later
`overwrite=true` replaces exactly that batch). Colours and names come from the model's
class table (`poc59.analysis.colour`). Every file is written atomically.

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
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from poc59.analysis.colour import legend, lookup_table
from poc59.core.atomic import write_bytes, write_json
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
    "REPORT_INDEX",
    "band_confidence",
    "damage_statistics",
    "label_map_png",
    "report_outputs",
    "scan_preview",
    "stacked_png",
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


def stacked_png(parts: Sequence[Image.Image], band_rows: int = 256) -> bytes:
    """One RGB PNG of `parts` (RGB images of one width) stacked top to bottom, encoded a band of rows at a time:
    no stacked copy of the pixels is ever made (a scan's overlay and its legend panel are encoded as they are).
    The Up row filter and zlib level 1 (scans are large: fast, still lossless)."""
    width = parts[0].width
    if any(p.width != width or p.mode != "RGB" for p in parts):
        raise ValueError(f"stacked parts must be RGB images {width} px wide, got {[(p.mode, p.width) for p in parts]}")
    deflate = zlib.compressobj(1)
    compressed = []
    above = np.zeros(3 * width, np.uint8)
    for part in parts:
        for y0 in range(0, part.height, band_rows):
            rows = np.asarray(part.crop((0, y0, width, min(part.height, y0 + band_rows)))).reshape(-1, 3 * width)
            compressed.append(deflate.compress(_up_filtered(rows, above).tobytes()))
            above = rows[-1]
    compressed.append(deflate.flush())
    data = b"".join(compressed)
    height = sum(p.height for p in parts)
    idat = [_chunk(b"IDAT", data[i : i + 2**24]) for i in range(0, len(data), 2**24)]
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB, not interlaced
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(idat) + _chunk(b"IEND", b"")


class OverlayPicture:
    """The scan with damage in its class colour, filled band by band, and a legend panel below it.

    Held as one Pillow RGB image of the scan's size (4 bytes a pixel) that bands are pasted into; the legend
    panel is drawn once the classes present are known and encoded after the scan's rows (`stacked_png`), so
    no second full-size copy exists. The legend lists the damage classes the scan holds: Clean (id 0) and
    pixels outside the object are drawn as the scan itself, so they get no swatch.
    """

    def __init__(self, width: int, height: int, classes: ClassTable) -> None:
        self.width, self.height, self.classes = width, height, classes
        self.font_size = max(12, min(64, width // 60))  # legible on a phone photo and on a 10,000 px scan
        self.font = _font(self.font_size)
        self.image = Image.new("RGB", (width, height), (255, 255, 255))

    def paste(self, y0: int, rows: np.ndarray) -> None:
        """Rows y0.. of the overlay (uint8 [h, W, 3], e.g. `poc59.analysis.colour.overlay` of a band)."""
        self.image.paste(Image.fromarray(rows), (0, y0))

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

    def png(self, present: set[int]) -> bytes:
        """The overlay PNG: the scan, then the legend of the classes in `present` (the label values it holds)."""
        return stacked_png([self.image, self.legend_panel(present)])


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
