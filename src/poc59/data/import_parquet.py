"""Turn ARTeFACT's published parquet shards into the folder layout poc59 trains from.

ARTeFACT is published on Hugging Face (`danielaivanova/damaged-media`) as one
`train` split in parquet shards: each row holds the encoded image, the label
map (`annotation`), its colour rendering (`annotation_rgb`) and metadata
(`material`, `content`, `type`, descriptions). Users train from a folder:

    OUT/images/<id>.png           RGB
    OUT/annotations/<id>.png      uint8 label map (mode "L"), values 0..15 and 255
    OUT/annotations_rgb/<id>.png  colour rendering (when the column is present)
    OUT/metadata.csv              id,material,content,image_path,annotation_path,
                                  annotation_rgb_path,width,height

This module makes that folder from the shards, checking on the way what the
training code relies on: label maps are single-channel class ids (a palette
image is read as its indices; an RGB "annotation" is the colour rendering and
is refused), every value is a class id or the ignore id, image and label map
have the same size, and ids are unique file names. `max_side=N` caps the long
side (image: Lanczos; masks: nearest, so class ids and 255 survive).

Shards are read a few rows at a time (images run to >12,000 px wide), each PNG
is written atomically, and **metadata.csv is written last: it is the marker of
a complete import**. A run that fails midway leaves files but no metadata.csv;
rerun with `overwrite=true`.

`python -m poc59.import_parquet src=SRC out=OUT [max_side=N] [overwrite=true]` is its command.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from poc59.core.atomic import write_bytes
from poc59.core.classes import ARTEFACT, ClassTable
from poc59.data.sources import DataError

log = logging.getLogger("poc59.import_parquet")  # the command's name in the log


METADATA_COLUMNS = (
    "id",
    "material",
    "content",
    "image_path",
    "annotation_path",
    "annotation_rgb_path",
    "width",
    "height",
)


REQUIRED_COLUMNS = ("id", "image", "annotation")


OPTIONAL_COLUMNS = ("annotation_rgb", "material", "content")


OWNED = ("images", "annotations", "annotations_rgb")  # what overwrite=true replaces (plus metadata.csv)


BATCH_SIZE = 4  # rows decoded at a time: a few full-size ARTeFACT images


MAX_PIXELS = 1 << 29  # Pillow's bomb guard (89 Mpx) is below ARTeFACT's largest scans


PROGRESS_SECONDS = 10.0


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_id(raw: Any) -> str:
    """`raw` as a file stem: ASCII letters, digits, '-', '_', '.' kept, others -> '_'.

    A leading '.' becomes '_' (hidden files are skipped by `discover_pairs`).
    """
    text = "" if raw is None else str(raw).strip()
    safe = _UNSAFE.sub("_", text)
    stripped = safe.lstrip(".")
    return "_" * (len(safe) - len(stripped)) + stripped


def find_shards(src: str | Path) -> list[Path]:
    """SRC itself if it is a file, else every `*.parquet` below it (hidden folders skipped), sorted."""
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise DataError(f"parquet source not found: {src.resolve()}; give a .parquet file or a folder of shards")
    shards = sorted(
        (
            p
            for p in src.rglob("*.parquet")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
        ),
        key=lambda p: p.relative_to(src).as_posix(),
    )
    if not shards:
        raise DataError(f"no *.parquet files under {src.resolve()}")
    return shards


@dataclass(frozen=True)
class _Row:
    id: str
    raw_id: str
    material: str
    content: str
    image: Image.Image
    labels: np.ndarray  # uint8, validated
    annotation_rgb: Image.Image | None


@contextlib.contextmanager
def _large_images_allowed() -> Iterator[None]:
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if old is None else max(old, MAX_PIXELS)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _bytes_of(value: Any, column: str, row_id: str) -> bytes:
    """Encoded bytes of an HF `Image` cell ({bytes, path}) or a plain binary cell."""
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None:
            raise DataError(
                f"row {row_id!r}: column {column!r} has no embedded bytes (path={value.get('path')!r}); "
                "use shards with the images embedded, as published on Hugging Face"
            )
        return bytes(data)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        raise DataError(f"row {row_id!r}: column {column!r} is empty")
    raise DataError(f"row {row_id!r}: column {column!r} holds {type(value).__name__}, expected image bytes")


def _decode(value: Any, column: str, row_id: str) -> Image.Image:
    data = _bytes_of(value, column, row_id)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"row {row_id!r}: column {column!r} is not a readable image ({err})") from err
    return img


def _labels(img: Image.Image, row_id: str, table: ClassTable) -> np.ndarray:
    """The label map as uint8, after checking mode and values."""
    if img.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise DataError(
            f"row {row_id!r}: annotation is a {img.mode} image; that is a colour rendering, not a label map. "
            "The `annotation` column must hold single-channel class ids (mode L, P or I)"
        )
    if img.mode not in ("L", "P") and not img.mode.startswith("I"):
        raise DataError(
            f"row {row_id!r}: annotation has mode {img.mode}; expected a single-channel integer map (L, P or I)"
        )
    arr = np.asarray(img)  # mode P gives the palette indices, not colours
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise DataError(
            f"row {row_id!r}: annotation decodes to {arr.dtype} of shape {arr.shape}; expected a 2-D integer map"
        )
    allowed = np.zeros(256, dtype=bool)
    allowed[: table.num_classes] = True
    allowed[table.ignore_index] = True
    if arr.dtype != np.uint8:
        outside = (arr < 0) | (arr > 255)
        if outside.any():
            bad = np.unique(arr[outside])
            raise DataError(_bad_values_message(row_id, bad, table))
        arr = arr.astype(np.uint8)
    present = np.bincount(arr.ravel(), minlength=256) > 0
    bad = np.flatnonzero(present & ~allowed)
    if bad.size:
        raise DataError(_bad_values_message(row_id, bad, table))
    return arr


def _bad_values_message(row_id: str, bad: np.ndarray, table: ClassTable) -> str:
    shown = ", ".join(str(int(v)) for v in bad[:10]) + (f" (+{bad.size - 10} more)" if bad.size > 10 else "")
    return (
        f"row {row_id!r}: label values {shown} are not class ids 0..{table.num_classes - 1} "
        f"or the ignore id {table.ignore_index}"
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _parse(record: dict[str, Any], table: ClassTable) -> _Row:
    raw_id = _text(record.get("id")).strip()
    if not raw_id:
        raise DataError(f"a row has an empty id (material={record.get('material')!r}); every row needs an id")
    row_id = safe_id(raw_id)
    image = _decode(record.get("image"), "image", raw_id)
    annotation = _decode(record.get("annotation"), "annotation", raw_id)
    if image.size != annotation.size:
        raise DataError(
            f"row {raw_id!r}: image is {image.size[0]}x{image.size[1]} but annotation is "
            f"{annotation.size[0]}x{annotation.size[1]}; they must match pixel for pixel"
        )
    labels = _labels(annotation, raw_id, table)
    if image.mode != "RGB":
        image = image.convert("RGB")
    rgb = None
    if record.get("annotation_rgb") is not None:
        rgb = _decode(record["annotation_rgb"], "annotation_rgb", raw_id)
        if rgb.mode != "RGB":
            rgb = rgb.convert("RGB")
        if rgb.size != image.size:
            log.warning(
                "row %r: annotation_rgb is %dx%d, image %dx%d; written as it is", raw_id, *rgb.size, *image.size
            )
    return _Row(row_id, raw_id, _text(record.get("material")), _text(record.get("content")), image, labels, rgb)


def _capped_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return (max_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_side)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_schema(shard: Path, names: list[str]) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{shard}: no column(s) {', '.join(missing)}; found {', '.join(names)}. "
            "Expected ARTeFACT's parquet form (id, image, annotation, annotation_rgb, material, content, ...)"
        )
    return [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]


def _open_shard(shard: Path):

    try:
        return pq.ParquetFile(shard)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{shard}: not a readable parquet file ({err})") from err


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"output folder {out.resolve()} is not empty; choose another out=, or add overwrite=true to replace "
                "its images/, annotations/, annotations_rgb/ and metadata.csv (other files are kept)"
            )
        # The completeness marker goes first, so an interrupted replacement never looks complete.
        (out / "metadata.csv").unlink(missing_ok=True)
        for name in OWNED:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            elif (out / name).exists():
                (out / name).unlink()
    for name in OWNED[:2]:
        (out / name).mkdir(parents=True, exist_ok=True)


def import_parquet(
    src: str | Path,
    out: str | Path,
    max_side: int | None = None,
    overwrite: bool = False,
) -> int:
    """Write the rows of the parquet shard(s) at `src` into the folder layout at `out`.

    Returns the number of rows written. Raises DataError for bad input (the
    message names the shard or row id). `overwrite` replaces OUT's images/,
    annotations/, annotations_rgb/ and metadata.csv; other files are kept.
    metadata.csv is written last and only on success: without it, OUT is incomplete.
    """

    if max_side is not None and max_side < 1:
        raise DataError(f"max_side must be a positive number of pixels, got {max_side}")
    table = ARTEFACT
    out = Path(out)
    shards = find_shards(src)
    columns_of: dict[Path, list[str]] = {}
    total_rows = 0
    for shard in shards:  # check every shard before touching OUT
        with _open_shard(shard) as pf:
            columns_of[shard] = _check_schema(shard, pf.schema_arrow.names)
            total_rows += pf.metadata.num_rows
    log.info(
        "%d shard(s), %d rows -> %s%s",
        len(shards),
        total_rows,
        out,
        f" (long side <= {max_side} px)" if max_side else "",
    )
    _prepare_out(out, overwrite)

    seen: dict[str, str] = {}  # casefolded file stem -> raw id (case-insensitive file systems)
    rows: list[list[str]] = []
    start = last_report = time.monotonic()
    try:
        with _large_images_allowed():
            for shard in shards:
                shard_start, shard_rows = time.monotonic(), 0
                log.info("reading %s", shard)
                with _open_shard(shard) as pf:
                    try:
                        batches = pf.iter_batches(batch_size=BATCH_SIZE, columns=columns_of[shard])
                        for batch in batches:
                            for record in batch.to_pylist():
                                try:
                                    rows.append(_write_row(_parse(record, table), out, max_side, seen))
                                except DataError as err:
                                    raise DataError(f"{shard}: {err}") from err
                                shard_rows += 1
                                if time.monotonic() - last_report >= PROGRESS_SECONDS:
                                    last_report = time.monotonic()
                                    log.info("%d/%d rows (%.0f s)", len(rows), total_rows, last_report - start)
                    except pa.ArrowException as err:
                        raise DataError(f"{shard}: cannot read row batch after {shard_rows} rows ({err})") from err
                log.info("%s: %d rows in %.1f s", shard.name, shard_rows, time.monotonic() - shard_start)
            if not rows:
                raise DataError(f"{src}: the parquet shard(s) hold no rows")
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(METADATA_COLUMNS)
            writer.writerows(rows)
            write_bytes(out / "metadata.csv", buf.getvalue().encode("utf-8"))
    except BaseException:
        log.error(
            "import stopped: %s is incomplete (no metadata.csv); fix the input and rerun with overwrite=true", out
        )
        raise
    log.info("imported %d rows into %s in %.1f s", len(rows), out, time.monotonic() - start)
    return len(rows)


def _write_row(row: _Row, out: Path, max_side: int | None, seen: dict[str, str]) -> list[str]:
    key = row.id.casefold()
    if key in seen:
        first = seen[key]
        if first == row.raw_id:
            raise DataError(f"duplicate id {row.raw_id!r}: ids must be unique")
        raise DataError(
            f"ids {first!r} and {row.raw_id!r} both map to the file name {row.id!r}.png; ids must be unique"
        )
    seen[key] = row.raw_id
    if row.id != row.raw_id:
        log.info("id %r written as %r", row.raw_id, row.id)
    size = _capped_size(row.image.size, max_side)
    image = row.image if size == row.image.size else row.image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    labels = Image.fromarray(row.labels)
    if size != labels.size:
        labels = labels.resize(size, Image.Resampling.NEAREST)
    image_path, annotation_path = f"images/{row.id}.png", f"annotations/{row.id}.png"
    write_bytes(out / image_path, _png(image))
    write_bytes(out / annotation_path, _png(labels))
    rgb_path = ""
    if row.annotation_rgb is not None:
        rgb = row.annotation_rgb
        rgb_size = _capped_size(rgb.size, max_side)
        if rgb_size != rgb.size:
            rgb = rgb.resize(rgb_size, Image.Resampling.NEAREST)
        rgb_path = f"annotations_rgb/{row.id}.png"
        write_bytes(out / rgb_path, _png(rgb))
    return [row.id, row.material, row.content, image_path, annotation_path, rgb_path, str(size[0]), str(size[1])]
