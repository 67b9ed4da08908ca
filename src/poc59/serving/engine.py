"""One loaded model answering one scan at a time: the maps, the statistics and the report a page shows.

`Engine.load(path)` takes what `python -m poc59.serve model=` names: an exported `.onnx` (ONNX Runtime,
the default on a CPU; `poc59.artifacts.exported`), a `.ckpt`, or a run folder (its best checkpoint, PyTorch
on the first GPU when there is one). A file that is missing or not a poc59 model raises ModelLoadError.

`Engine.predict(source, overlap, min_region)` runs the scan through predict's own steps
(`poc59.inference.scans.open_scan`, `poc59.inference.image.logit_bands`, `band_labels`, `band_confidence`,
`damage_statistics`, `label_map_png`), so at `min_region=0` the class map and the confidence values it
serves are predict's for the same scan and overlap, byte for byte in the class map. `min_region=N` turns
each connected damage region (8-connected, one class) of fewer than N pixels into the first class (Clean)
before the statistics, the maps and the overlay are made: speckle a conservator need not look at.

Per request it writes into its own folder of the server's work folder: `<stem>_classes.png` (the class map:
a palette PNG, predict's `<stem>_labels.png`), `<stem>_confidence.png` (8-bit gray, round(255 p) of the
predicted class's probability: predict's `<stem>_confidence.tif` values), `<stem>_statistics.json` (the
statistics row, the model and the settings, the trust wording per class) and `<stem>.report.html` (the
condition report, `poc59.inference.report`). The last `KEPT` results stay for the page's class toggles;
older ones, and their folders, are dropped.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from poc59.analysis.colour import overlay as colour_overlay
from poc59.artifacts.load import load_model, locate_checkpoint
from poc59.artifacts.trained import TrainedModel
from poc59.core.atomic import write_bytes, write_json
from poc59.core.classes import ClassTable
from poc59.core.device import autocast_dtype, resolve_device
from poc59.inference.iiif_source import IiifClient, IiifError, IiifImage, iiif_inputs, is_iiif_input
from poc59.inference.image import band_labels, logit_bands, streaming_bytes
from poc59.inference.outputs import STATISTICS_CONVENTION, band_confidence, damage_statistics, label_map_png
from poc59.inference.report import (
    card_facts,
    class_ious,
    preview_factor,
    reduce_confidence,
    reduce_labels,
    reduce_rgb,
    trust_word,
    write_condition_report,
)
from poc59.inference.run import Settings as PredictSettings
from poc59.inference.scans import ScanError, open_scan, scan_size
from poc59.serving.limits import Limits, RequestRefused, check_scan_size, working_bytes
from poc59.serving.startup import model_path

log = logging.getLogger(__name__)

__all__ = ["KEPT", "PREVIEW_SIDE", "Engine", "Served", "previews"]

KEPT = 8  # results kept for the page's toggles (each a preview of at most PREVIEW_SIDE px, about 13 MB)
PREVIEW_SIDE = 1600  # the longest side of the pictures shown in the page and embedded in the report
PREDICT = PredictSettings()  # predict's defaults for what the page does not set (batch size, TTA, precision)


def _stem(name: str) -> str:
    """A file-name stem of an uploaded name or a URL: letters, digits, '-', '_' and '.' only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "scan"
    return stem[:80]


def previews(
    rgb: np.ndarray, labels: np.ndarray, confidence: np.ndarray, classes: ClassTable
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The page's pictures of one scan, at most `PREVIEW_SIDE` on the long side: the scan, its class ids and its
    confidence reduced by one whole number k, as the condition report reduces them (`poc59.inference.report`):
    block means for the scan and the confidence, and for the classes a block's most frequent damage class
    wherever it holds any damage, so a crack one pixel wide on a large scan still shows on the page."""
    height, width = labels.shape
    k = preview_factor(width, height, PREVIEW_SIDE)
    return reduce_rgb(rgb, k), reduce_labels(labels, k, classes), reduce_confidence(confidence, k)


@dataclass
class Served:
    """One answered request: previews for the page (RGB scan, class ids, confidence, all at `PREVIEW_SIDE`
    at most), the statistics row, and the files written (`files`: classes, confidence, statistics, report)."""

    key: str
    name: str
    scan: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    statistics: dict[str, Any]
    files: dict[str, Path]
    seconds: float
    folder: Path = field(repr=False)

    def present(self, classes: ClassTable) -> list[str]:
        """The damage classes found (pixels > 0), in class-table order (the first class, Clean, left out)."""
        counts = self.statistics["classes"]
        return [n for n in classes.names[1:] if counts[n]["pixels"] > 0]


class Engine:
    """The model, its card and the last results (module docstring); thread-safe."""

    def __init__(self, model: TrainedModel, device: torch.device, limits: Limits, work_dir: Path) -> None:
        self.model, self.device, self.limits = model, device, limits
        self.work_dir = Path(work_dir)
        self.autocast = autocast_dtype(PREDICT.precision, device)  # as predict's precision=auto
        # with the training data and date the card itself lacks, as predict's reports have them
        self.card: dict[str, Any] = card_facts(
            model.extra.get("card") or model.card.to_dict(), model.source, model.run_dir
        )
        self.ious = class_ious(self.card)
        self._results: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, limits: Limits, work_dir: Path, device: str = "auto") -> Engine:
        """The model `path` names (module docstring); SettingError for a path that names none, ModelLoadError
        for a file that is not a poc59 model."""
        path = model_path(path)
        if path.is_dir():
            path, _ = locate_checkpoint(path, None)
        torch_device = resolve_device(device) if path.suffix != ".onnx" else torch.device("cpu")
        torch.set_flush_denormal(True)  # as predict: the same arithmetic, several times faster on CPU
        model = load_model(path, torch_device)
        log.info(
            "model %s (%d classes, %s, geometry %s %d px) on %s",
            model.source,
            model.classes.num_classes,
            model.extra.get("format", "checkpoint"),
            model.geometry["policy"],
            model.image_size,
            "ONNX Runtime" if path.suffix == ".onnx" else torch_device,
        )
        return cls(model, torch_device, limits, work_dir)

    @property
    def classes(self) -> ClassTable:
        return self.model.classes

    def source_of(self, upload: str | Path | None, url: str | None) -> Path | IiifImage:
        """The scan of a request: an uploaded file, or the one image of a IIIF info.json URL."""
        url = (url or "").strip()
        if upload and url:
            raise RequestRefused("give either a file or a IIIF address, not both")
        if url:
            if not url.startswith(("http://", "https://")) or not is_iiif_input(url):
                raise RequestRefused(f"{url}: not a IIIF address; paste the http(s) URL of an image's info.json")
            try:
                images = iiif_inputs(url, IiifClient())
            except IiifError as err:
                raise RequestRefused(str(err)) from None
            if len(images) != 1:
                raise RequestRefused(
                    f"{url} lists {len(images)} images; paste the info.json URL of one image (python -m "
                    "poc59.predict input=<manifest> predicts them all)"
                )
            return images[0]
        if not upload:
            raise RequestRefused("no scan: drop a scan file, or paste a IIIF info.json URL")
        path = Path(upload)
        size = path.stat().st_size
        if size > self.limits.upload_bytes:
            raise RequestRefused(
                f"{path.name}: {size / 2**20:,.1f} MB, more than this server takes ({self.limits.max_upload_mb:g} MB, "
                "its max_upload_mb)"
            )
        return path

    def predict(
        self, source: Path | IiifImage, overlap: float = 0.25, min_region: int = 0, name: str | None = None
    ) -> Served:
        """Predict one scan (module docstring). RequestRefused names what the page shows when the scan cannot
        be predicted (not an image, too large, corrupt, over the time or memory budget)."""
        if not 0 <= overlap < 1:
            raise RequestRefused(f"tile overlap {overlap}: must be at least 0 and below 1 (0.25 = a quarter tile)")
        if min_region < 0:
            raise RequestRefused(f"minimum region size {min_region}: must be 0 (off) or more pixels")
        name = name or (source.name if isinstance(source, Path) else source.url)
        start = time.monotonic()
        try:
            return self._predict(source, overlap, int(min_region), name, start)
        except (ScanError, OSError, ValueError, MemoryError) as err:
            if isinstance(err, RequestRefused):
                raise
            reason = str(err).replace(str(source), name) if isinstance(source, Path) else str(err)
            raise RequestRefused(f"{name}: cannot be predicted: {reason}") from err

    def _predict(self, source: Path | IiifImage, overlap: float, min_region: int, name: str, start: float) -> Served:
        model, classes = self.model, self.classes
        # the header only (no decoding): the server's own pixel limit replaces Pillow's bomb limit here
        width, height = source.size() if isinstance(source, IiifImage) else scan_size(source, True)
        streaming = streaming_bytes(model, width, height, overlap, PREDICT.batch_size, PREDICT.tta)
        check_scan_size(width, height, working_bytes(width, height, classes.num_classes, streaming), self.limits, name)
        scan = source.open(True) if isinstance(source, IiifImage) else open_scan(source, True)
        deadline = start + self.limits.timeout_s
        try:
            labels = np.empty((height, width), np.uint8)
            confidence = np.empty((height, width), np.uint8)
            for y0, band in logit_bands(
                model, scan, overlap, PREDICT.batch_size, PREDICT.tta, self.device, self.autocast
            ):
                y1 = y0 + band.shape[1]
                labels[y0:y1] = band_labels(band)
                confidence[y0:y1] = band_confidence(band)
                if time.monotonic() > deadline:
                    raise RequestRefused(
                        f"{name}: stopped after {self.limits.timeout_s:g} s (this server's timeout_s for one scan) "
                        f"at row {y1} of {height}. Send a smaller scan, or ask whoever runs the server to raise "
                        "timeout_s"
                    )
            rgb = scan.whole()
        finally:
            scan.close()
        if min_region > 1:
            _drop_small_regions(labels, min_region, classes.num_classes)
        counts = np.bincount(labels.reshape(-1), minlength=256)
        row = damage_statistics(name, counts, classes, (width, height))
        key = uuid.uuid4().hex
        folder = self.work_dir / key
        folder.mkdir(parents=True)
        stem = _stem(source.stem if isinstance(source, IiifImage) else name)
        shown = previews(rgb, labels, confidence, classes)
        settings = {"tile overlap": overlap, "minimum region size (pixels)": min_region, "model": str(model.source)}
        statistics = {
            "convention": STATISTICS_CONVENTION,
            "predicted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": str(model.source),
            "classes": classes.to_dict(),
            "settings": settings,
            "validation_iou": self.ious,
            "trust": {n: self._trust(n) for n in classes.names},
            "image": row,
        }
        files = {
            "classes": write_bytes(folder / f"{stem}_classes.png", label_map_png(labels, classes)),
            "confidence": write_bytes(folder / f"{stem}_confidence.png", _gray_png(confidence)),
            "statistics": write_json(folder / f"{stem}_statistics.json", statistics),
        }
        files["report"] = self._write_report(folder / f"{stem}.report.html", stem, shown, row, settings)
        served = Served(key, name, *shown, row, files, round(time.monotonic() - start, 3), folder)
        self._keep(served)
        log.info("%s: %d x %d px predicted in %.1f s", name, width, height, served.seconds)
        return served

    def _trust(self, name: str) -> str:
        return trust_word(self.ious.get(name))

    def _write_report(
        self, path: Path, stem: str, pictures: tuple[np.ndarray, ...], row: dict, settings: dict[str, Any]
    ) -> Path:
        scan, labels, confidence = pictures
        write_condition_report(
            path,
            stem=stem,
            scan_rgb=scan,
            labels=labels,
            confidence=confidence,
            stats=row,
            card=self.card,
            settings=settings,
            classes=self.classes,
        )
        return path

    def _keep(self, served: Served) -> None:
        with self._lock:
            self._results[served.key] = served
            while len(self._results) > KEPT:
                _, old = self._results.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)

    def result(self, key: str) -> Served:
        """A recent result by its key; RequestRefused once it has been dropped (`KEPT`)."""
        with self._lock:
            served = self._results.get(key)
        if served is None:
            raise RequestRefused("this result is no longer kept by the server: predict the scan again")
        return served

    def overlay(self, key: str, shown: list[str]) -> np.ndarray:
        """The result's preview with the damage of the classes in `shown` in their colours (the others drawn
        as the scan), as `poc59.analysis.colour.overlay` draws predict's overlay."""
        served = self.result(key)
        names = self.classes.names
        hidden = [i for i, n in enumerate(names) if i and n not in shown]
        labels = served.labels.copy() if hidden else served.labels
        if hidden:
            labels[np.isin(labels, hidden)] = 0
        return colour_overlay(served.scan, labels, self.classes)

    def table(self, served: Served) -> list[dict[str, Any]]:
        """The classes found, largest first: name, colour, pixels, % of the object, validation IoU, trust word."""
        counts = served.statistics["classes"]
        rows = [
            {
                "class": n,
                "colour": self.classes.palette[self.classes.names.index(n)],
                "pixels": counts[n]["pixels"],
                "percent": counts[n]["percent"],
                "iou": self.ious.get(n),
                "trust": self._trust(n),
            }
            for n in self.classes.names
            if counts[n]["pixels"] > 0
        ]
        return sorted(rows, key=lambda r: -r["pixels"])


def _drop_small_regions(labels: np.ndarray, min_region: int, num_classes: int) -> None:
    """In place: each 8-connected region of one damage class with fewer than `min_region` pixels becomes 0."""
    for c in range(1, num_classes):
        mask = (labels == c).astype(np.uint8)
        if not mask.any():
            continue
        count, regions, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_region)
        small = small[small > 0]  # 0 is the background of this class's mask
        if small.size:
            labels[np.isin(regions, small)] = 0


def _gray_png(values: np.ndarray) -> bytes:
    """8-bit gray PNG bytes of uint8 [H, W]."""
    buf = io.BytesIO()
    Image.fromarray(values, "L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
