"""The condition report: one self-contained HTML page per object for the conservator who holds it.

`condition_report` draws, from one scan's prediction and the model card: the object's name and scan, the
damage overlay (the class table's palette), the classes found with their area (pixels, and share of the
object) and how far the model can be trusted on each, the confidence map, the model card in plain words
(model, training data, date, commit, validation mIoU, the classes it never learnt) and the date and
settings of the prediction. `write_condition_report` writes it (atomically), `write_report_index` the
batch's index page, `print_pdf` prints a page to PDF with headless Chromium (the Debian package
`chromium`). `python -m poc59.predict ... report=true` writes one per scan and the index; serve offers the
same page. Nothing here imports torch: the page needs numpy, Pillow and the standard library.

Self-contained: every image is a data: URI (JPEG, at most `PREVIEW_MAX_SIDE` px on its long side, so a
report stays well under a few MB), no external CSS, font, script or link but the report's own PDF beside
it; it opens from a USB stick. It prints to one or two A4 pages: `@page` sets A4 and the margins, the
model card and settings start the second page, figures and tables are never split.

Trust words, from the model card's per-class IoU on the validation split (`metrics.validation["val/IoU"]`,
the epoch that wrote these weights; IoU = correct pixels / pixels the model or the truth gave the class):

- "reliable": IoU >= `RELIABLE_FROM` (0.5): the predicted and the true areas overlap more than they differ
  (the usual threshold for a correct detection, PASCAL VOC's);
- "often wrong": `NEVER_LEARNT_BELOW` <= IoU < `RELIABLE_FROM`: found, but its outline or a good part of
  its area is wrong; check it by eye;
- "never learnt": IoU < `NEVER_LEARNT_BELOW` (0.05): the class was in the validation images and the model
  (almost) never found it there; its absence on an object means nothing;
- "not measured": no IoU (the class was neither in the validation images nor predicted there, or the card
  carries no per-class validation IoU, as an ensemble's does not): nothing is known of it.

The serve page uses the same words and thresholds (`trust_word`, `RELIABLE_FROM`, `NEVER_LEARNT_BELOW`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from poc59.analysis.colour import overlay as colour_overlay
from poc59.core.atomic import replacing, write_bytes
from poc59.core.classes import ClassTable

__all__ = [
    "NEVER_LEARNT",
    "NEVER_LEARNT_BELOW",
    "NOT_MEASURED",
    "OFTEN_WRONG",
    "PREVIEW_MAX_SIDE",
    "RELIABLE",
    "RELIABLE_FROM",
    "TRUST_MEANING",
    "PdfError",
    "card_facts",
    "chromium_path",
    "class_ious",
    "condition_report",
    "preview_factor",
    "print_pdf",
    "reduce_confidence",
    "reduce_labels",
    "reduce_rgb",
    "trust_word",
    "write_condition_report",
    "write_report_index",
]

log = logging.getLogger("poc59.report")

RELIABLE_FROM = 0.5
"""Validation IoU from which a class reads "reliable" (see the module docstring)."""
NEVER_LEARNT_BELOW = 0.05
"""Validation IoU below which a class reads "never learnt" (see the module docstring)."""
RELIABLE, OFTEN_WRONG, NEVER_LEARNT, NOT_MEASURED = "reliable", "often wrong", "never learnt", "not measured"
TRUST_MEANING = {
    RELIABLE: f"validation IoU {RELIABLE_FROM:g} or more: the model's areas of this class overlap the true ones "
    "more than they differ",
    OFTEN_WRONG: f"validation IoU from {NEVER_LEARNT_BELOW:g} to below {RELIABLE_FROM:g}: found, but its outline "
    "or a good part of its area is often wrong; check it by eye",
    NEVER_LEARNT: f"validation IoU below {NEVER_LEARNT_BELOW:g}: the class was in the validation images and the "
    "model (almost) never found it; its absence here means nothing",
    NOT_MEASURED: "no validation IoU: the class was not in the validation images (nor predicted there), or the "
    "model card carries no per-class figures",
}
"""Each trust word and what it means, as the report's key prints it."""

PREVIEW_MAX_SIDE = 1400
"""Pixels on the long side of the report's pictures: sharp on an A4 page at 180 dpi, a few hundred kB each."""
JPEG_QUALITY = 88
PDF_TIMEOUT_S = 120.0
IOU_KEY = "val/IoU"
MIOU_KEY = "val/mIoU"


class PdfError(RuntimeError):
    """A report that headless Chromium could not print (missing, failed, timed out); the message says why."""


def trust_word(iou: float | None) -> str:
    """The word "reliable", "often wrong", "never learnt" or "not measured" for a class's validation IoU (None or
    NaN: not measured), by `RELIABLE_FROM` and `NEVER_LEARNT_BELOW` (see the module docstring)."""
    if iou is None or (isinstance(iou, float) and math.isnan(iou)):
        return NOT_MEASURED
    if iou >= RELIABLE_FROM:
        return RELIABLE
    if iou >= NEVER_LEARNT_BELOW:
        return OFTEN_WRONG
    return NEVER_LEARNT


def class_ious(card: Mapping[str, Any]) -> dict[str, float | None]:
    """Each class's validation IoU from a model card's data (`ModelCard.to_dict()`, or an exported
    model.card.json): {class name: IoU, None where the card has none}."""
    names = (card.get("classes") or {}).get("names") or []
    validation = (card.get("metrics") or {}).get("validation") or {}
    per_class = validation.get(IOU_KEY) if isinstance(validation, Mapping) else None
    per_class = per_class if isinstance(per_class, Mapping) else {}
    out: dict[str, float | None] = {}
    for name in names:
        v = per_class.get(name)
        out[name] = float(v) if isinstance(v, int | float) and not math.isnan(v) else None
    return out


def preview_factor(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> int:
    """The whole-number reduction that brings `width` x `height` to at most `max_side` on its long side."""
    return max(1, math.ceil(max(width, height) / max_side))


def _blocks(a: np.ndarray, k: int) -> np.ndarray:
    """`a` [H, W, ...] as k x k blocks [ceil(H/k), k, ceil(W/k), k, ...], the last partial ones padded with
    their edge values (so a reduced edge block is the mean of its real pixels' values repeated)."""
    h, w = a.shape[:2]
    pad = [(0, -h % k), (0, -w % k)] + [(0, 0)] * (a.ndim - 2)
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    return a.reshape(a.shape[0] // k, k, a.shape[1] // k, k, *a.shape[2:])


def reduce_rgb(rgb: np.ndarray, k: int) -> np.ndarray:
    """An RGB (or gray) uint8 picture reduced k times (each k x k block's mean): [ceil(H/k), ceil(W/k), ...]."""
    if k == 1:
        return np.ascontiguousarray(rgb)
    return np.rint(_blocks(rgb, k).mean(axis=(1, 3))).astype(np.uint8)


def reduce_confidence(confidence: np.ndarray, k: int) -> np.ndarray:
    """A confidence map (float 0..1, or uint8 as round(255 p)) as uint8 round(255 p), reduced k times (mean)."""
    c = np.asarray(confidence)
    if c.dtype != np.uint8:
        c = np.rint(np.clip(np.nan_to_num(c.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return reduce_rgb(c, k)


def reduce_labels(labels: np.ndarray, k: int, classes: ClassTable) -> np.ndarray:
    """A label map reduced k times so that damage stays visible: a k x k block with any damage pixel (a class
    but the first) takes its most frequent damage class, else its most frequent label (the first class or
    the ignore label). A thin crack a few pixels wide still shows on a 10,000 px scan's preview."""
    if k == 1:
        return np.ascontiguousarray(labels, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    values = np.asarray([*range(classes.num_classes), classes.ignore_index], np.uint8)
    band = k * max(1, 2**22 // (k * k * max(1, labels.shape[1] // k)))  # ~4 M pixels a band: bounded working memory
    out = []
    for y0 in range(0, labels.shape[0], band):
        blocks = _blocks(labels[y0 : y0 + band], k)
        counts = np.stack([(blocks == v).sum(axis=(1, 3), dtype=np.int32) for v in values], axis=-1)
        damage = counts[..., 1 : classes.num_classes]
        reduced = values[np.argmax(counts, axis=-1)]
        has_damage = damage.max(axis=-1) > 0
        reduced[has_damage] = (1 + np.argmax(damage, axis=-1))[has_damage].astype(np.uint8)
        out.append(reduced)
    return np.concatenate(out)


def _data_uri(picture: np.ndarray) -> str:
    """A JPEG data: URI of an RGB or gray uint8 picture."""
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(p: float | None) -> str:
    """A share in %, two decimals; a class present below 0.005 % reads <0.01 (as predict's summary)."""
    if p is None:
        return "n/a"
    return f"{p:.2f}" if p >= 0.005 or p == 0 else "<0.01"


def _utc(stamp: float | datetime) -> str:
    when = stamp if isinstance(stamp, datetime) else datetime.fromtimestamp(stamp, timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _summary_of(card: Mapping[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    """The run's summary.json the card or `run_dir` points at, when it is still readable."""
    training = (card.get("metrics") or {}).get("training") or {}
    places = [
        run_dir / "summary.json" if run_dir else None,
        Path(training["file"]) if isinstance(training.get("file"), str) else None,
        *(
            Path(d) / "summary.json"
            for d in ((card.get("source") or {}).get("run_dir"), (card.get("provenance") or {}).get("run_dir"))
            if isinstance(d, str)
        ),
    ]
    for place in places:
        if place is None:
            continue
        try:
            summary = json.loads(place.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            return summary
    return None


def card_facts(card: Mapping[str, Any], source: str | Path | None = None, run_dir: str | Path | None = None) -> dict:
    """A copy of a model card's data with the two facts a report needs that training does not write into the
    card, when they can still be found: `provenance.data` (the training data: folder, images per split), from
    the run's summary.json (`run_dir`, or the run the card names), and `provenance.date` with
    `provenance.date_meaning`: an exported model's export date, else the checkpoint file's (`source`) time.
    What cannot be found stays absent; the report then says "not recorded"."""
    out = json.loads(json.dumps(card, default=str))  # a deep copy of plain data
    provenance = out.setdefault("provenance", {})
    if "data" not in provenance:
        summary = _summary_of(out, Path(run_dir) if run_dir else None)
        data = ((summary or {}).get("provenance") or {}).get("data")
        if isinstance(data, dict):
            provenance["data"] = data
    if "date" not in provenance:
        exported = (out.get("export") or {}).get("date")
        if isinstance(exported, str):
            provenance["date"], provenance["date_meaning"] = exported, "exported"
        elif source is not None and Path(source).suffix == ".ckpt" and Path(source).is_file():
            provenance["date"] = _utc(Path(source).stat().st_mtime)
            provenance["date_meaning"] = "checkpoint written"
    return out


def _geometry_words(card: Mapping[str, Any]) -> str:
    g = card.get("geometry") or {}
    size = g.get("image_size")
    policy = g.get("policy")
    if policy == "crop":
        shrunk = f", scans first shrunk to {g['max_side']} px on their long side" if g.get("max_side") else ""
        return f"looks at the scan in tiles of {size} x {size} px at its own resolution{shrunk}"
    if policy == "pad":
        return f"looks at the whole scan shrunk and padded to {size} x {size} px"
    if policy == "resize":
        return f"looks at the whole scan resized to {size} x {size} px"
    return f"geometry {policy}, {size} px"


def _data_words(data: Mapping[str, Any] | None) -> str:
    if not data:
        return "not recorded in the model card"
    parts = [
        f"{data[key]} {label}"
        for key, label in (
            ("train_images", "for training"),
            ("val_images", "for validation"),
            ("test_images", "for testing"),
        )
        if isinstance(data.get(key), int) and data[key] > 0
    ]
    total = f"{data['images']} images" if isinstance(data.get("images"), int) else "images"
    where = f" from {data['root']}" if data.get("root") else ""
    fold = (data.get("cv") or {}).get("fold") if isinstance(data.get("cv"), dict) else None
    folds = f", cross-validation fold {fold}" if fold is not None else ""
    return f"{total}{where}" + (f" ({', '.join(parts)}{folds})" if parts else "")


def _facts(card: Mapping[str, Any], ious: Mapping[str, float | None]) -> list[tuple[str, str]]:
    """The model card in plain words: (what, said) lines."""
    network = card.get("network") or {}
    provenance = card.get("provenance") or {}
    classes = (card.get("classes") or {}).get("names") or []
    family = f" ({card['family']})" if card.get("family") else ""
    model = f"{network.get('decoder') or 'network'} on the encoder {network.get('name', '?')}{family}"
    ensemble = provenance.get("ensemble")
    if isinstance(ensemble, dict):
        model = (
            f"an ensemble of {len(ensemble.get('members') or [])} models ({ensemble.get('combination', '')}): {model}"
        )
    lines = [
        ("Model", f"{model}; tells {len(classes)} classes apart; {_geometry_words(card)}"),
        ("Training data", _data_words(provenance.get("data"))),
    ]
    date = provenance.get("date")
    lines.append(
        ("Date", f"{date} ({provenance.get('date_meaning', 'recorded')})" if date else "not recorded in the model card")
    )
    commit = provenance.get("git_commit") or provenance.get("commit")
    lines.append(("Code version (git commit)", str(commit) if commit else "not recorded in the model card"))
    validation = (card.get("metrics") or {}).get("validation") or {}
    miou = validation.get(MIOU_KEY) if isinstance(validation, Mapping) else None
    if isinstance(miou, int | float) and not math.isnan(miou):
        epoch = validation.get("epoch")
        when = f" after training epoch {epoch}" if epoch is not None else ""
        lines.append(
            (
                "Validation mIoU",
                f"{miou:.2f}: the mean, over the classes, of correct pixels / pixels the model or the truth gave "
                f"the class, on images kept out of training{when} (0 = never right, 1 = perfect)",
            )
        )
    else:
        lines.append(("Validation mIoU", "not recorded in the model card"))
    never = [n for n in classes if trust_word(ious.get(n)) == NEVER_LEARNT]
    unmeasured = [n for n in classes if trust_word(ious.get(n)) == NOT_MEASURED]
    if len(unmeasured) == len(classes):
        lines.append(("Never learnt", "not known: the model card carries no per-class validation IoU"))
    else:
        lines.append(("Never learnt", ", ".join(never) if never else "none: every measured class was found"))
    if unmeasured:
        lines.append(("Not measured", ", ".join(unmeasured)))
    return lines


_CSS = """
@page { size: A4 portrait; margin: 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 9.5pt; color: #111;
       margin: 0; line-height: 1.3; }
@media screen { body { max-width: 200mm; margin: 6mm auto; padding: 0 6mm; } }
h1 { font-size: 15pt; margin: 0 0 1mm; }
h2 { font-size: 11pt; margin: 3mm 0 1.5mm; break-after: avoid; page-break-after: avoid; }
p { margin: 0 0 1.5mm; }
.meta { color: #333; }
.figures { display: flex; gap: 4mm; break-inside: avoid; page-break-inside: avoid; }
figure { margin: 0; flex: 1 1 0; min-width: 0; break-inside: avoid; page-break-inside: avoid; }
figure img { display: block; width: 100%; height: auto; max-height: 100mm; object-fit: contain;
             border: 0.3mm solid #999; background: #fff; }
figcaption { font-size: 8.5pt; color: #333; margin-top: 1mm; }
table { border-collapse: collapse; width: 100%; break-inside: avoid; page-break-inside: avoid; }
th, td { border-bottom: 0.2mm solid #bbb; padding: 0.8mm 1.5mm; text-align: left; vertical-align: top; }
th { background: #eee; font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.swatch { display: inline-block; width: 3.5mm; height: 3.5mm; border: 0.2mm solid #000; vertical-align: -0.5mm;
          -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.trust-never-learnt { color: #a00; font-weight: bold; }
.trust-often-wrong { color: #a60; }
.trust-reliable { color: #060; }
.note { font-size: 8.5pt; color: #333; }
.second { break-before: page; page-break-before: always; }
.scale { height: 3mm; width: 60mm; border: 0.2mm solid #999; background: linear-gradient(to right, #000, #fff);
         -webkit-print-color-adjust: exact; print-color-adjust: exact; display: inline-block; vertical-align: middle; }
.confidence img { max-height: 95mm; width: auto; max-width: 100%; }
dl { display: grid; grid-template-columns: 42mm 1fr; gap: 0.8mm 3mm; margin: 0; }
dt { font-weight: bold; }
dd { margin: 0; }
"""


def _trust_cell(word: str) -> str:
    return f'<td class="trust-{word.replace(" ", "-")}">{_e(word)}</td>'


def condition_report(
    *,
    stem: str,
    scan_rgb: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    stats: Mapping[str, Any],
    card: Mapping[str, Any],
    settings: Mapping[str, Any],
    classes: ClassTable,
    predicted_at: datetime | None = None,
    pdf_name: str | None = None,
) -> str:
    """The condition report of one object as a self-contained HTML page (see the module docstring).

    `scan_rgb` uint8 [H, W, 3], `labels` uint8 [H, W] class ids (the ignore id outside the object) and
    `confidence` [H, W] (float 0..1, or uint8 round(255 p)) are the same size: the scan's, or a reduced
    preview of it (`reduce_rgb`, `reduce_labels`, `reduce_confidence`); larger ones are reduced here to
    `PREVIEW_MAX_SIDE`. `stats` is the scan's statistics row as predict writes it (`damage_statistics`:
    areas at the scan's full resolution; the table shows these), `card` the model card's data (through
    `card_facts` for the training data and date), `settings` the prediction's settings as {label: value},
    `predicted_at` when it ran (default now), `pdf_name` a PDF of this page beside it, linked when given.
    """
    scan_rgb, labels = np.asarray(scan_rgb), np.asarray(labels)
    if scan_rgb.shape[:2] != labels.shape or np.asarray(confidence).shape != labels.shape:
        raise ValueError(
            f"scan {scan_rgb.shape[:2]}, labels {labels.shape} and confidence {np.asarray(confidence).shape} "
            "must be the same size"
        )
    k = preview_factor(labels.shape[1], labels.shape[0])
    shown = reduce_labels(labels, k, classes)
    picture = reduce_rgb(scan_rgb, k)
    confidence_map = reduce_confidence(confidence, k)
    ious = class_ious(card)
    predicted_at = predicted_at or datetime.now(timezone.utc)

    per_class = stats.get("classes") or {}
    reference = "object" if stats.get("reference") == "object mask" else "image"
    found = [(c, n) for c, n in enumerate(classes.names) if (per_class.get(n) or {}).get("pixels", 0) > 0]
    absent = [n for n in classes.names if (per_class.get(n) or {}).get("pixels", 0) == 0]
    rows = []
    for c, name in found:
        v = per_class[name]
        iou = ious.get(name)
        rows.append(
            f'<tr data-class="{_e(name)}"><td><span class="swatch" style="background:{_e(classes.palette[c])}">'
            f'</span> {_e(name)}</td><td class="num">{v["pixels"]:,}</td><td class="num">{_percent(v["percent"])}</td>'
            f'<td class="num">{"–" if iou is None else f"{iou:.2f}"}</td>{_trust_cell(trust_word(iou))}</tr>'
        )
    blind = [n for n in absent if trust_word(ious.get(n)) == NEVER_LEARNT]
    absent_text = (
        f"Not found on this object: {_e(', '.join(absent))}." if absent else "Every class was found on this object."
    )
    if blind:
        absent_text += (
            f" The model never learnt {_e(', '.join(blind))}: that it found none says nothing about the object."
        )
    if reference == "object":
        reference_text = (
            f"the object: the {stats.get('reference_pixels', 0):,} pixels inside the object mask (pixels outside it "
            "are not counted)"
        )
    else:
        reference_text = f"the whole image, {stats.get('reference_pixels', 0):,} pixels (no object mask was given)"
    width, height = stats.get("width", labels.shape[1]), stats.get("height", labels.shape[0])
    source = stats.get("source") or stats.get("image") or stem
    facts = "".join(f"<dt>{_e(what)}</dt><dd>{_e(said)}</dd>" for what, said in _facts(card, ious))
    setting_rows = "".join(f"<dt>{_e(k_)}</dt><dd>{_e(v_)}</dd>" for k_, v_ in settings.items())
    trust_key = "".join(f"<dt>{_e(word)}</dt><dd>{_e(meaning)}</dd>" for word, meaning in TRUST_MEANING.items())
    pdf_link = f' · <a href="{_e(pdf_name)}">this report as PDF</a>' if pdf_name else ""
    low = int((confidence_map < 128).sum())
    preview_note = (
        f"Pictures reduced {k} times ({picture.shape[1]} x {picture.shape[0]} px); a block with any damage shows "
        "its most common damage class. The areas in the table are counted at the scan's full resolution."
        if k > 1
        else "Pictures at the scan's resolution."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="poc59 condition report">
<title>Condition report: {_e(stem)}</title>
<style>{_CSS}</style></head>
<body>
<h1>Condition report: {_e(stem)}</h1>
<p class="meta">Scan: {_e(source)} ({width:,} x {height:,} px). Predicted {_e(_utc(predicted_at))}
by a damage-segmentation model (see page 2){pdf_link}.</p>
<div class="figures">
<figure><img alt="the scan of {_e(stem)}" src="{_data_uri(picture)}"><figcaption>The scan.</figcaption></figure>
<figure><img alt="damage overlay of {_e(stem)}" src="{_data_uri(colour_overlay(picture, shown, classes))}">
<figcaption>Damage found, in each class's colour (the table's swatches); {_e(classes.names[0])} and pixels
outside the object show the scan itself.</figcaption></figure>
</div>
<p class="note">{_e(preview_note)}</p>
<h2>Damage found</h2>
<table class="classes">
<thead><tr><th>class</th><th>area (pixels)</th><th>share of the {reference} (%)</th>
<th>validation IoU (0-1)</th><th>how far to trust it</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody></table>
<p class="note">Area: pixels the model gave the class, at the scan's full resolution. Share: 100 x area / pixels of
{_e(reference_text)}; the shares add up to 100. Validation IoU: correct pixels / pixels the model or the truth
gave the class, on images kept out of training (1 = perfect); "how far to trust it" words it (key on page 2).</p>
<p>{absent_text}</p>
<div class="second">
<h2>Confidence</h2>
<figure class="confidence"><img alt="confidence map of {_e(stem)}" src="{_data_uri(confidence_map)}">
<figcaption><span>unsure (0)</span> <span class="scale"></span> <span>sure (1)</span>: per pixel, the probability
the model gave the class it chose. Dark areas are where it hesitated: check them by eye. {_percent(100.0 * low / confidence_map.size)}
% of the picture is below 0.5.</figcaption></figure>
<h2>The model, in plain words</h2>
<dl class="card">{facts}</dl>
<h2>How to read "how far to trust it"</h2>
<dl class="trust">{trust_key}</dl>
<h2>The prediction</h2>
<dl class="settings"><dt>Date</dt><dd>{_e(_utc(predicted_at))}</dd>{setting_rows}</dl>
</div>
</body></html>
"""


def write_condition_report(path: str | Path, **report: Any) -> Path:
    """`condition_report(**report)` written to `path` atomically (UTF-8); returns the path."""
    return write_bytes(path, condition_report(**report).encode("utf-8"))


def write_report_index(
    out_dir: str | Path, entries: Sequence[Mapping[str, Any]], failed: Iterable[Mapping[str, str]] = ()
) -> Path:
    """The batch's index.html in `out_dir` (atomic): a line per object linking its report (and PDF) with its
    size and its damage. Each entry: `report` (the page's file name in `out_dir`), `pdf` (its PDF's, or None),
    `stats` (the scan's statistics row). `failed`: the scans not predicted ({"image", "reason"}), named too."""
    lines = []
    first_class = None
    for entry in entries:
        stats = entry["stats"]
        per_class = stats.get("classes") or {}
        first_class = first_class or next(iter(per_class), None)
        damage = [(v.get("percent") or 0.0, n) for n, v in per_class.items() if n != first_class and v.get("pixels")]
        total = sum(p for p, _ in damage)
        largest = ", ".join(f"{_e(n)} {_percent(p)}" for p, n in sorted(damage, reverse=True)[:3]) or "none"
        name = Path(entry["report"]).name
        stem = name.removesuffix(".report.html")
        pdf = f' (<a href="{_e(entry["pdf"])}">PDF</a>)' if entry.get("pdf") else ""
        lines.append(
            f'<tr><td><a href="{_e(name)}">{_e(stem)}</a>{pdf}</td><td>{_e(stats.get("source") or stats.get("image"))}'
            f'</td><td class="num">{stats.get("width", 0):,} x {stats.get("height", 0):,}</td>'
            f'<td class="num">{_percent(total)}</td><td>{largest}</td></tr>'
        )
    failures = "".join(f"<li>{_e(f['image'])}: {_e(f['reason'])}</li>" for f in failed)
    failed_html = f"<h2>Not predicted</h2><ul>{failures}</ul>" if failures else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Condition reports</title><style>{_CSS}</style></head>
<body><h1>Condition reports</h1>
<p class="meta">{len(entries)} object(s), written {_e(_utc(datetime.now(timezone.utc)))}. Open an object's report for its
pictures, its damage per class and how far the model can be trusted on each.</p>
<table class="index"><thead><tr><th>object</th><th>scan</th><th>size (px)</th>
<th>damage (% of the object)</th><th>largest damage classes (%)</th></tr></thead>
<tbody>{"".join(lines)}</tbody></table>
<p class="note">Damage: the share of the object (or of the whole image, without an object mask) that the model gave
any class but {_e(first_class or "the first")}; the largest three classes follow.</p>
{failed_html}
</body></html>
"""
    return write_bytes(Path(out_dir) / "index.html", page.encode("utf-8"))


def chromium_path() -> str | None:
    """Headless Chromium's executable on PATH (Debian's `chromium`, or `chromium-browser`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_pdf(html_path: str | Path, pdf_path: str | Path, timeout_s: float = PDF_TIMEOUT_S) -> Path:
    """Print a page to an A4 PDF (its own `@page` size and margins, no header or footer) with headless
    Chromium, atomically; returns `pdf_path`. PdfError when Chromium is missing, fails, or runs past
    `timeout_s` (its processes are then stopped)."""
    chromium = chromium_path()
    if chromium is None:
        raise PdfError(
            "printing a report to PDF needs Chromium, not found on PATH: install it (Debian/Ubuntu: "
            "apt-get install chromium), or open the HTML report in a browser and print it to PDF"
        )
    html_path = Path(html_path).resolve()
    with tempfile.TemporaryDirectory(prefix="poc59-chromium-") as profile, replacing(pdf_path) as f:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",  # running as root in containers; the page is our own file
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={profile}",  # a private profile: printing beside a running browser or another print
            f"--print-to-pdf={f.name}",
            html_path.as_uri(),
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=os.environ
        )
        try:
            _, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the renderer and helpers go too
            process.communicate()
            raise PdfError(f"Chromium did not print {html_path} within {timeout_s:g} s") from None
        with open(f.name, "rb") as written:
            head = written.read(5)
        if process.returncode != 0 or head != b"%PDF-":
            tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise PdfError(f"Chromium could not print {html_path} (exit {process.returncode}): {' / '.join(tail)}")
    log.info("%s printed to %s", html_path.name, pdf_path)
    return Path(pdf_path)
