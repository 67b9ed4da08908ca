"""Predict scans into a folder: `run(settings)` writes a label map, an overlay and damage statistics per
image (streamed in bands of rows, so a scan never sits in memory as float logits) and returns what it did.

An unreadable image, or one that runs out of memory, is reported and the rest go on. `python -m
poc59.predict` is its command (its docstring lists every setting).

The output folder says exactly what one batch produced: statistics.json records every file the batch
writes ("outputs"; written first with "finished": false, so an interrupted batch is recorded too), and
`overwrite=true` removes the files the earlier batch recorded before this one writes any, so a scan that
fails now keeps no earlier map. A file no record lists is never replaced or removed, and a file that the
statistics.json beside it lists is never read as a scan (an output folder inside the input folder, or the
same folder). A folder that cannot be written (read-only, full, not permitted) is refused before the model
loads, or stops the batch with none of its files left (`poc59.core.outputs`, every command's rule).
"""

from __future__ import annotations

import glob
import json
import logging
import shlex
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from poc59.analysis.colour import lookup_table
from poc59.analysis.colour import overlay as colour_overlay
from poc59.artifacts.load import load_models
from poc59.artifacts.trained import TrainedModel
from poc59.core.classes import ClassTable
from poc59.core.device import autocast_dtype, resolve_device
from poc59.core.outputs import UNWRITABLE, check_writable, refuse_existing, writing
from poc59.core.progress import Steps
from poc59.inference.iiif import MIN_AREA, ScanRef, damage_layer_palette, write_iiif
from poc59.inference.iiif import output_names as iiif_outputs
from poc59.inference.iiif_source import IiifClient, IiifError, IiifImage, iiif_inputs, is_iiif_input
from poc59.inference.image import band_labels, logit_bands, streaming_bytes
from poc59.inference.outputs import (
    STATISTICS_CONVENTION,
    MapPyramids,
    OverlayPicture,
    PngFile,
    SpilledMap,
    band_confidence,
    damage_statistics,
    report_outputs,
    write_batch_index,
    write_scan_report,
    write_statistics,
)
from poc59.inference.pyramid import StreamedFile
from poc59.inference.scans import (
    IMAGE_SUFFIXES,
    ScanError,
    open_scan,
    read_object_mask,
    scan_size,
)

log = logging.getLogger("poc59.predict")


class UsageError(ValueError):
    """The user's input or setting (exit 2): the message names it and the fix."""


class _OutputNotWritten(Exception):
    """A write into the output folder that the folder refused (`poc59.core.outputs.UNWRITABLE`): the batch
    stops, where an unreadable scan would only be skipped. `args[0]` is the OSError."""


STATISTICS = ("statistics.csv", "statistics.json")
OVERLAY_ROWS = 64  # the overlay is coloured this many rows at a time: its float temporaries stay ~25 bytes x 64 x W


@contextmanager
def _into_output() -> Iterator[None]:
    """Writes into the output folder: a refusal of the folder's is raised as _OutputNotWritten."""
    try:
        yield
    except OSError as err:
        if err.errno in UNWRITABLE:
            raise _OutputNotWritten(err) from err
        raise


def _outputs_of(image: Path | IiifImage, overlay: bool, pyramid: bool, iiif: bool) -> list[str]:
    """The files predict writes for one scan."""
    return (
        [f"{image.stem}_labels.png"]
        + ([f"{image.stem}_overlay.png"] if overlay else [])
        + ([f"{image.stem}{suffix}" for suffix in MapPyramids.SUFFIXES] if pyramid else [])
        + (iiif_outputs(image.stem) if iiif else [])
    )


def recorded_outputs(out: Path) -> set[str] | None:
    """The names of the files that the predict batch recorded in `out/statistics.json` wrote into `out` (its
    maps, overlays and statistics), or None when there is no predict record there. A record older than its
    "outputs" field names its maps in its rows. A name that is not a plain file name is not trusted."""
    path = out / "statistics.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("convention") != STATISTICS_CONVENTION:
        return None
    names = record.get("outputs")
    if not isinstance(names, list):
        rows = record.get("images") if isinstance(record.get("images"), list) else []
        names = [*STATISTICS, *(r.get(k) for r in rows if isinstance(r, dict) for k in ("labels", "overlay"))]
    return {n for n in names if isinstance(n, str) and n and Path(n).name == n and not n.startswith(".")}


@dataclass
class Settings:
    ckpt: str | list[str] = ""
    run_dirs: list[str] | None = None
    sweep: str | None = None
    input: str = ""
    output: str = ""
    overlap: float = 0.25
    batch_size: int = 8
    tta: bool = False
    device: str = "auto"
    precision: str = "auto"
    max_memory_mb: float = 1024.0
    object_mask: str | None = None
    classes: str | None = None
    overlay: bool = True
    allow_large_images: bool = False
    overwrite: bool = False
    pyramid: bool = False
    iiif: bool = True
    iiif_base_url: str | None = None
    iiif_min_area: int = MIN_AREA
    report: bool = False  # a condition report per scan and index.html (poc59.inference.outputs.write_scan_report)
    report_pdf: bool = False
    threads: int | str = "auto"  # PyTorch's CPU threads (poc59.core.threads), set by the command


def find_inputs(spec: str, client: IiifClient | None = None) -> list[Path] | list[IiifImage]:
    """A file, the image files of a folder (sorted), or the files matching a glob (sorted); or IIIF images
    (`poc59.inference.iiif_source`: an info.json URL, a file of them, a manifest), fetched through `client`."""
    if is_iiif_input(spec):
        try:
            return iiif_inputs(spec, client or IiifClient())
        except IiifError as err:
            raise UsageError(str(err)) from None
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if len(images) < len(files):
            log.info("%s: %d files without an image suffix ignored", path, len(files) - len(images))
        return images
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matches:
        raise UsageError(f"input={spec}: no such file or folder, and no file matches it as a pattern")
    return matches


def requested_classes(path: str | Path) -> ClassTable:
    """A classes.json: a list of names (ARTeFACT's colours if ARTeFACT's names, else generated), or {names, palette}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "palette" in data:
            return ClassTable.from_dict(data)
        names = data["names"] if isinstance(data, dict) else data
        return ClassTable.from_names(names)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f'classes={path}: not a readable class list ({err}); expected ["name0", ...] or {{names, palette}}'
        ) from None


def check_classes(model: TrainedModel, wanted: ClassTable) -> None:
    """The model must predict exactly the requested classes, in order, with the requested colours."""
    have = model.classes
    if have.names != wanted.names:
        raise UsageError(
            f"the model {model.source} predicts {list(have.names)} but classes= asks for {list(wanted.names)}; "
            "use the model trained on these classes, or drop classes="
        )
    if have.palette != wanted.palette:
        diff = [
            f"{n}: model {a} vs requested {b}" for n, a, b in zip(have.names, have.palette, wanted.palette) if a != b
        ]
        raise UsageError(f"the model's palette differs from classes=: {'; '.join(diff)}")


def _object_masks(spec: str | None, images: list[Path] | list[IiifImage]) -> dict[Path | IiifImage, Path | None]:
    if spec is None:
        return {p: None for p in images}
    path = Path(spec).expanduser()
    if path.is_file():
        return {p: path for p in images}
    if not path.is_dir():
        raise UsageError(f"object_mask={spec}: no such file or folder")
    by_stem = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    return {p: by_stem.get(p.stem) for p in images}


def predict_image(
    model: TrainedModel,
    path: Path | IiifImage,
    mask_path: Path | None,
    out: Path,
    s: Settings,
    device: torch.device,
    autocast: torch.dtype | None,
    progress: Progress | None = None,
) -> dict:
    """Predict one scan (a file, or a IIIF image: fetched at its native size, whole), write its label map
    (and overlay, and pyramids); return its statistics row."""
    start = time.perf_counter()
    remote = isinstance(path, IiifImage)
    width, height = path.size() if remote else scan_size(path, s.allow_large_images)
    # what the decoded pixels may take: the budget less the model's streamed logits (a crop model's tile rows)
    # and the pyramids' writers. A resize/pad model decodes only its target's pixels for itself (a reduced
    # level where the file stores one, `Scan.at_least`); the full resolution streams for the overlay and maps.
    decode_budget = int(s.max_memory_mb * 2**20)
    decode_budget -= streaming_bytes(model, width, height, s.overlap, s.batch_size, s.tta) or 0
    if s.pyramid:
        decode_budget -= MapPyramids.working_bytes(width)
    if decode_budget <= 0:
        log.warning(
            "%s: max_memory_mb=%g leaves no room for pixels beside the logits and the maps' writers; reading the smallest strips",
            path,
            s.max_memory_mb,
        )
        decode_budget = 1
    if remote:
        if width * height * 3 > decode_budget:
            log.warning(
                "%s: held whole (~%.0f MB, above max_memory_mb's %.0f MB for the pixels): a IIIF image is not read "
                "in strips",
                path,
                width * height * 3 / 2**20,
                decode_budget / 2**20,
            )
        scan = path.open(s.allow_large_images)
    else:
        scan = open_scan(path, s.allow_large_images, max_bytes=decode_budget)
    task = None
    # every output streams as the bands of the map are finished: the PNGs (`PngFile`, `OverlayPicture`) and
    # the pyramids are written under temporary names, and the label and confidence maps the IIIF annotations
    # and the report need are kept on disk (`SpilledMap`), so no full-size picture or map is ever in memory
    size = (scan.width, scan.height)
    with ExitStack() as kept:  # the label and confidence maps kept on disk for the IIIF documents and the report
        files: list[StreamedFile] = []  # closed once every band is in; given up if the scan fails part-way
        try:
            inside = read_object_mask(mask_path, (scan.width, scan.height), s.allow_large_images) if mask_path else None
            with _into_output():
                pyramids = MapPyramids(out, path.stem, scan.width, scan.height, model.classes) if s.pyramid else None
                files += [pyramids] if pyramids is not None else []
                label_png = PngFile(out / f"{path.stem}_labels.png", scan.width, lookup_table(model.classes))
                files.append(label_png)
                layer = picture = None
                if s.iiif:  # the damage layer, the first of the IIIF files: the label map with its own palette
                    layer = PngFile(out / iiif_outputs(path.stem)[0], scan.width, *damage_layer_palette(model.classes))
                    files.append(layer)
                if s.overlay:
                    picture = OverlayPicture(out / f"{path.stem}_overlay.png", scan.width, scan.height, model.classes)
                    files.append(picture)
                labels = confidences = None
                if s.iiif or s.report:  # freed however the scan ends
                    labels, confidences = (kept.enter_context(closing(SpilledMap(out, *size))) for _ in range(2))
            counts = np.zeros(256, np.int64)
            task = progress.add_task(f"{path.name}", total=scan.height) if progress else None
            band = None
            for y0, band in logit_bands(model, scan, s.overlap, s.batch_size, s.tta, device, autocast):
                y1 = y0 + band.shape[1]
                lab = band_labels(band)
                if inside is not None:
                    lab[~inside[y0:y1]] = model.classes.ignore_index
                counts += np.bincount(lab.reshape(-1), minlength=256)
                confidence = None
                if pyramids is not None or confidences is not None:
                    confidence = band_confidence(band)
                    if inside is not None:
                        confidence[~inside[y0:y1]] = 0
                with _into_output():
                    label_png.add(lab)
                    if layer is not None:
                        layer.add(lab)
                    if labels is not None:
                        labels.add(lab)
                        confidences.add(confidence)
                    if pyramids is not None:
                        pyramids.add(lab, confidence)
                for y in range(y0, y1, OVERLAY_ROWS) if picture is not None else ():
                    rows = scan.rows(y, min(y1, y + OVERLAY_ROWS))
                    rgb = colour_overlay(rows, lab[y - y0 : y - y0 + len(rows)], model.classes)
                    with _into_output():
                        picture.paste(y, rgb)
                if task is not None:
                    progress.update(task, completed=y1)
            del band  # a view into the tile row of logits: released before the annotations are made
            with _into_output():
                for file in files:
                    if file is picture:
                        picture.close(set(np.flatnonzero(counts).tolist()))
                    else:
                        file.close()
        finally:
            for file in files:
                file.abort()  # a scan that failed part-way: no file appears under its name (closed ones: no effect)
            scan.close()
            if task is not None:
                progress.remove_task(task)
        row = damage_statistics(
            str(path),
            counts,
            model.classes,
            (scan.width, scan.height),
            int(inside.sum()) if inside is not None else None,
        )
        if remote:
            row["source"] = path.url  # the info.json the pixels came from
        row["labels"] = f"{path.stem}_labels.png"
        row["overlay"] = f"{path.stem}_overlay.png" if picture is not None else None
        row["classes_tif"], row["confidence_tif"] = pyramids.names if pyramids is not None else (None, None)
        row["iiif"] = None
        if s.iiif:
            scan_ref = path.scan_ref() if remote else ScanRef.local(path, scan.width, scan.height)
            with _into_output():  # the manifest last: a manifest on disk has its page and layer
                row["iiif"] = write_iiif(
                    out,
                    path.stem,
                    labels,
                    confidences,
                    model.classes,
                    scan_ref,
                    inside,
                    s.iiif_min_area,
                    base_url=s.iiif_base_url,
                    layer=False,  # written as the bands came
                )
        if s.report:
            whole = [m.rows(0, scan.height) for m in (labels, confidences)]  # the report reduces them whole
            with _into_output():
                row.update(write_scan_report(out, path, *whole, row, model, s))
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _check_output_folder(out: Path, planned: list[str], earlier: set[str] | None, overwrite: bool) -> list[Path]:
    """The earlier batch's files to remove before this one writes; UsageError when the folder cannot take
    this batch: `output=` is a file, outputs exist without overwrite=true, or a file this batch would write
    is not one an earlier batch recorded (a user's file is never replaced)."""
    if out.exists() and not out.is_dir():
        folder = shlex.quote(f"output={out.parent / (out.stem + '_maps')}")
        raise UsageError(
            f"output={out} is a file, not a folder: predict writes a folder of maps and statistics. "
            f"Pass a folder (created if missing), e.g. {folder}"
        )
    ours = earlier or set()
    names = [*STATISTICS, *planned, *sorted(ours - {*STATISTICS, *planned})]
    # files no batch recorded first: overwrite=true would not let this batch replace them, so never advise it
    foreign = [out / n for n in names if n not in ours and (out / n).exists()]
    if foreign:
        raise UsageError(
            f"{foreign[0]} exists and no earlier predict batch recorded it in {out / 'statistics.json'} "
            f"({len(foreign)} such file(s)): overwrite=true replaces only files poc59 wrote. Move them away "
            "or pass another output="
        )
    return refuse_existing(out, names, overwrite, "output", UsageError)


def _written(row: dict) -> list[str | None]:
    """The files a statistics row names (None: not written)."""
    iiif = [row["iiif"][k] for k in ("layer", "annotations", "manifest")] if row["iiif"] else []
    reports = [row.get("report"), row.get("report_pdf")]  # absent: report=false
    return [row["labels"], row["overlay"], row["classes_tif"], row["confidence_tif"], *iiif, *reports]


def _start_record(out: Path, outputs: set[str], classes: ClassTable, meta: dict) -> None:
    """statistics.json (and .csv) naming every file this batch may write, before it writes any, so that an
    interrupted batch is recorded too."""
    out.mkdir(parents=True, exist_ok=True)
    write_statistics(out, [], classes, _record(meta, [], sorted(outputs), finished=False))


def _record(meta: dict, failed: list[dict], outputs: list[str], finished: bool) -> dict:
    """statistics.json's fields besides the rows: `meta`, the failed scans, whether the batch finished, and
    the files it wrote (or, unfinished, may have written)."""
    return meta | {"failed": failed, "finished": finished, "outputs": outputs}


def _predict_batch(
    model: TrainedModel,
    images: list[Path] | list[IiifImage],
    masks: dict[Path | IiifImage, Path | None],
    out: Path,
    s: Settings,
    device: torch.device,
    autocast: torch.dtype | None,
    console: Console | None,
) -> tuple[list[dict], list[dict]]:
    """Predict each scan into `out`: (statistics rows, failed scans with their reasons). A scan that cannot be
    read or runs out of memory is named and skipped; a write the folder refuses stops the batch (OSError)."""
    rows, failed = [], []
    with Steps(log, "predict", len(images), "images", every_s=0, console=console) as steps:
        for path in images:
            out_of_memory = False
            try:
                if s.object_mask and masks[path] is None:
                    raise ScanError(f"{path}: no object mask named {path.stem}.<ext> in {s.object_mask}")
                row = predict_image(model, path, masks[path], out, s, device, autocast, steps.bar)
                rows.append(row)
                done = f"{path.name}, {row['width']} x {row['height']} px, {row['seconds']:.1f} s"
            except _OutputNotWritten as refused:
                raise refused.args[0] from None  # the folder, not this scan
            except (ScanError, OSError, ValueError, MemoryError, torch.OutOfMemoryError) as err:
                reason = str(err)
                out_of_memory = isinstance(err, torch.OutOfMemoryError)  # this scan did not fit; the next may
                if out_of_memory:
                    reason = f"out of GPU memory ({reason.splitlines()[0]}); lower max_memory_mb= or batch_size=, or use device=cpu"
                log.error("%s: not predicted: %s", path, reason)
                failed.append({"image": str(path), "reason": reason})
                done = f"{path.name}: not predicted"
            if out_of_memory and device.type == "cuda":
                torch.cuda.empty_cache()  # out of the except block: the failed scan's tensors are released now
            steps.advance(done)
    return rows, failed


def run(s: Settings, console: Console | None = None) -> dict:
    """Predict every input (progress on `console`, default the log's; see poc59.core.progress); returns the
    rows, the failed images and where the statistics went. UsageError before any image is read."""
    out = Path(s.output).expanduser()
    earlier = recorded_outputs(out) if out.is_dir() else None
    client = IiifClient()  # this batch's: nothing fetched twice
    images = find_inputs(s.input, client)
    local = [p for p in images if isinstance(p, Path)]
    records = {folder: recorded_outputs(folder) or set() for folder in {p.parent for p in local}}
    skipped = [p for p in local if p.name in records[p.parent]]
    if skipped:
        images = [p for p in local if p.name not in records[p.parent]]
        log.warning(
            "%d input file(s) skipped: outputs of a predict batch (listed in the statistics.json beside them): %s",
            len(skipped),
            ", ".join(map(str, skipped)),
        )
    if not images and skipped:
        raise UsageError(
            f"input={s.input}: its only images are outputs of a predict batch (listed in the statistics.json "
            "beside them), never read as scans; pass the scans' folder as input="
        )
    if not images:
        raise UsageError(f"input={s.input}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path | IiifImage] = {}
    for p in images:
        if p.stem in stems:
            raise UsageError(f"{stems[p.stem]} and {p} would write the same outputs ({p.stem}_labels.png); rename one")
        stems[p.stem] = p
    planned = [n for p in images for n in _outputs_of(p, s.overlay, s.pyramid, s.iiif)]
    planned += report_outputs([p.stem for p in images], s.report_pdf) if s.report else []
    earlier_files = _check_output_folder(out, planned, earlier, s.overwrite)
    check_writable(out, "output", UsageError)
    masks = _object_masks(s.object_mask, images)
    device = resolve_device(s.device)
    autocast = autocast_dtype(s.precision, device)
    torch.set_flush_denormal(True)  # as training and evaluate do: the same arithmetic, several times faster on CPU
    model = load_models(s.ckpt or None, s.run_dirs, s.sweep, device)
    if s.classes:
        check_classes(model, requested_classes(s.classes))
    geometry = model.geometry
    how = (
        f"sliding window, tile {model.image_size} px, overlap {s.overlap:g}, batches of {s.batch_size}"
        if geometry["policy"] == "crop"
        else f"{geometry['policy']} to {model.image_size} px, logits upsampled bilinearly"
    )
    log.info(
        "%d image(s); model %s (%d classes), geometry %s: %s%s; %s",
        len(images),
        model.source,
        model.classes.num_classes,
        geometry["policy"],
        how,
        ", flip TTA" if s.tta else "",
        device,
    )
    meta = {
        "model": str(model.source),
        "ensemble": model.card.provenance.get("ensemble"),  # None for one model
        "classes": model.classes.to_dict(),
        "geometry": geometry,
        "settings": {k: v for k, v in vars(s).items() if k not in ("input", "output")} | {"input": s.input},
        "predicted": 0,
    }
    with writing(out, "output", UsageError):  # a folder refusing a write: exit 2, none of this batch's files left
        _start_record(out, {*STATISTICS, *planned, *(p.name for p in earlier_files)}, model.classes, meta)
        for old in earlier_files:
            if old.name not in STATISTICS:  # the record itself was just replaced
                old.unlink(missing_ok=True)
        if earlier_files:
            log.info("overwrite=true: the %d file(s) of the earlier batch in %s removed", len(earlier_files), out)
        rows, failed = _predict_batch(model, images, masks, out, s, device, autocast, console)
        written = [*STATISTICS, *(n for r in rows for n in _written(r) if n)]
        written += [write_batch_index(out, rows, failed)] if s.report else []
        csv_path, _ = write_statistics(
            out, rows, model.classes, _record(meta | {"predicted": len(rows)}, failed, written, finished=True)
        )
    return {
        "rows": rows,
        "failed": failed,
        "images": images,
        "out": out,
        "statistics": csv_path,
        "classes": model.classes,
    }
