"""What predict hands over per scan: a palette label map, an overlay with a legend, damage statistics.

Files people open without poc59: the label map is a palette PNG (mode "P": the
pixel values are the class ids, the palette the model's colours, 255 = outside
the object in the ignore colour), the overlay a PNG of the scan with damage in
its class colour and a legend of the classes present, and the statistics one
CSV and one JSON for the whole batch. Colours and names come from the model's
class table (`poc59.analysis.colour`). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from poc59.analysis.colour import legend, lookup_table
from poc59.core.atomic import write_bytes, write_json
from poc59.core.classes import ClassTable

__all__ = ["STATISTICS_CONVENTION", "OverlayPicture", "damage_statistics", "label_map_png", "write_statistics"]

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


class OverlayPicture:
    """The scan with damage in its class colour, filled band by band, and a legend panel below it.

    Held as one Pillow RGB image (4 bytes a pixel) that bands are pasted into, so no second full-size copy
    exists while the PNG is encoded. The legend lists every class of the table (the same legend on every
    scan of a batch), plus "ignored" when the scan has pixels outside the object.
    """

    def __init__(self, width: int, height: int, classes: ClassTable, outside: bool = False) -> None:
        self.height, self.classes = height, classes
        self.entries = legend(classes, set(range(classes.num_classes)) | ({classes.ignore_index} if outside else set()))
        self.font_size = max(12, min(64, width // 60))  # legible on a phone photo and on a 10,000 px scan
        self.font = _font(self.font_size)
        pad = self.font_size // 2
        self.cell = self.font_size + 3 * pad + max(int(self.font.getlength(name)) for name, _ in self.entries)
        self.cols = max(1, (width - pad) // self.cell)
        panel = math.ceil(len(self.entries) / self.cols) * (self.font_size + pad) + pad
        self.image = Image.new("RGB", (width, height + panel), (255, 255, 255))

    def paste(self, y0: int, rows: np.ndarray) -> None:
        """Rows y0.. of the overlay (uint8 [h, W, 3], e.g. `poc59.analysis.colour.overlay` of a band)."""
        self.image.paste(Image.fromarray(rows), (0, y0))

    def png(self) -> bytes:
        box, pad = self.font_size, self.font_size // 2
        draw = ImageDraw.Draw(self.image)
        for k, (name, rgb) in enumerate(self.entries):
            x, y = pad + (k % self.cols) * self.cell, self.height + pad + (k // self.cols) * (box + pad)
            draw.rectangle([x, y, x + box - 1, y + box - 1], fill=tuple(rgb), outline=(0, 0, 0))
            draw.text((x + box + pad, y), name, fill=(0, 0, 0), font=self.font)
        return _png(self.image)


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
