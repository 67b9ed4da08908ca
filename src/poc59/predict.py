"""`python -m poc59.predict`: damage maps for full-resolution scans.

    python -m poc59.predict ckpt=outputs/runs/x/checkpoints/best.ckpt input=scans/ output=maps/
    python -m poc59.predict ckpt=model.onnx input='scans/*.tif' output=maps/ tta=true max_memory_mb=512

Arguments are key=value:
  ckpt=FILE              a checkpoint (.ckpt) or an exported model (.onnx, .pt), via poc59.trained.load_model
  input=FILE|DIR|GLOB    images (a folder: its image files, not recursive)
  output=DIR             per image <stem>_labels.png and <stem>_overlay.png; statistics.csv/.json for the batch
  overlap=0.25           sliding-window overlap between tiles (crop models)
  batch_size=8           tiles per forward pass
  tta=false              average with the horizontally flipped image's prediction
  device=auto            auto | cpu | cuda | cuda:N
  precision=auto         auto | 32 | bf16 | fp16 (autocast on CUDA only; CPU runs float32)
  max_memory_mb=1024     working memory for one image (decoded pixels + logits); larger scans go in strips
  object_mask=FILE|DIR   optional masks (non-zero = object): statistics relative to the object;
                         a folder holds <stem>.<ext> per image, a file applies to every image
  classes=FILE           optional classes.json (list of names, or {names, palette}): must match the model
  overlay=true           write the colour overlay with its legend
  allow_large_images=false  lift Pillow's decompression-bomb limit (~89 MP) for these inputs
  overwrite=false        replace outputs already in output=

An unreadable image is reported (file and reason) and the others go on; the exit status is then 1.
Usage, model and class-table errors exit with 2 before any image is read.
"""

from __future__ import annotations

import glob
import json
import logging
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from poc59.analysis.colour import overlay as colour_overlay
from poc59.atomic import write_bytes
from poc59.classes import ClassTable
from poc59.cli_args import parse_key_values
from poc59.damage_outputs import OverlayPicture, damage_statistics, label_map_png, write_statistics
from poc59.inference import DeviceError, band_labels, logit_bands, resolve_device, resolve_precision
from poc59.scans import IMAGE_SUFFIXES, ScanError, open_scan, read_object_mask, scan_size
from poc59.trained import ModelLoadError, TrainedModel, load_model

log = logging.getLogger("poc59.predict")

USAGE = "usage: python -m poc59.predict ckpt=FILE input=FILE|DIR|GLOB output=DIR [key=value ...] (see --help)"


class UsageError(ValueError):
    pass


@dataclass
class Settings:
    ckpt: str = ""
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


_OPTIONAL = ("object_mask", "classes")  # empty = none


def parse_args(argv: list[str]) -> Settings:
    """Settings from key=value arguments (unknown keys and missing ckpt/input/output are errors)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(__doc__)  # the whole story, which USAGE points to
    kinds = {f.name: {"float": float, "int": int, "bool": bool}.get(str(f.type).split(" ")[0], str) for f in fields(Settings)}
    given = parse_key_values(argv, kinds, USAGE, UsageError)
    settings = Settings(**{k: (v or None) if k in _OPTIONAL else v for k, v in given.items()})
    missing = [k for k in ("ckpt", "input", "output") if not getattr(settings, k)]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=' for k in missing)}\n{USAGE}")
    if not 0 <= settings.overlap < 1:
        raise UsageError(f"overlap={settings.overlap}: must be in [0, 1) (0.25 = a quarter of a tile)")
    if settings.batch_size < 1 or settings.max_memory_mb <= 0:
        raise UsageError("batch_size and max_memory_mb must be positive")
    return settings


def find_inputs(spec: str) -> list[Path]:
    """A file, the image files of a folder (sorted), or the files matching a glob (sorted)."""
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
        raise UsageError(f"classes={path}: not a readable class list ({err}); expected [\"name0\", ...] or {{names, palette}}") from None


def check_classes(model: TrainedModel, wanted: ClassTable) -> None:
    """The model must predict exactly the requested classes, in order, with the requested colours."""
    have = model.classes
    if have.names != wanted.names:
        raise UsageError(
            f"the model {model.source} predicts {list(have.names)} but classes= asks for {list(wanted.names)}; "
            "use the model trained on these classes, or drop classes="
        )
    if have.palette != wanted.palette:
        diff = [f"{n}: model {a} vs requested {b}" for n, a, b in zip(have.names, have.palette, wanted.palette) if a != b]
        raise UsageError(f"the model's palette differs from classes=: {'; '.join(diff)}")


def _object_masks(spec: str | None, images: list[Path]) -> dict[Path, Path | None]:
    if spec is None:
        return {p: None for p in images}
    path = Path(spec).expanduser()
    if path.is_file():
        return {p: path for p in images}
    if not path.is_dir():
        raise UsageError(f"object_mask={spec}: no such file or folder")
    by_stem = {p.stem: p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    return {p: by_stem.get(p.stem) for p in images}


def stream_bytes(model: TrainedModel, width: int, s: Settings) -> int:
    """Working memory of a crop model's logits: one tile row blended (x2 while it moves on, x2 with TTA), one batch."""
    c, tile = model.classes.num_classes, model.image_size
    return 4 * c * width * tile * (2 + 2 * s.tta) + 4 * 2 * c * s.batch_size * tile * tile


def predict_image(model: TrainedModel, path: Path, mask_path: Path | None, out: Path, s: Settings,
                  device: torch.device, autocast: torch.dtype | None, progress: Progress | None = None) -> dict:
    """Predict one scan, write its label map (and overlay); return its statistics row."""
    start = time.perf_counter()
    decode_budget = None  # resize/pad: the model sees the whole image, so it is decoded whole
    if model.geometry["policy"] == "crop":
        width, _ = scan_size(path, s.allow_large_images)
        decode_budget = int(s.max_memory_mb * 2**20) - stream_bytes(model, width, s)
        if decode_budget <= 0:
            log.warning("%s: max_memory_mb=%g is below one tile row of logits; reading the smallest strips", path, s.max_memory_mb)
            decode_budget = 1
    scan = open_scan(path, s.allow_large_images, max_bytes=decode_budget)
    task = None
    try:
        inside = read_object_mask(mask_path, (scan.width, scan.height), s.allow_large_images) if mask_path else None
        labels = np.empty((scan.height, scan.width), np.uint8)
        picture = OverlayPicture(scan.width, scan.height, model.classes, inside is not None) if s.overlay else None
        counts = np.zeros(256, np.int64)
        task = progress.add_task(f"{path.name}", total=scan.height) if progress else None
        for y0, band in logit_bands(model, scan, s.overlap, s.batch_size, s.tta, device, autocast):
            y1 = y0 + band.shape[1]
            lab = band_labels(band)
            if inside is not None:
                lab[~inside[y0:y1]] = model.classes.ignore_index
            labels[y0:y1] = lab
            counts += np.bincount(lab.reshape(-1), minlength=256)
            if picture is not None:
                picture.paste(y0, colour_overlay(scan.rows(y0, y1), lab, model.classes))
            if task is not None:
                progress.update(task, completed=y1)
    finally:
        scan.close()
        if task is not None:
            progress.remove_task(task)
    write_bytes(out / f"{path.stem}_labels.png", label_map_png(labels, model.classes))
    if picture is not None:
        write_bytes(out / f"{path.stem}_overlay.png", picture.png())
    row = damage_statistics(str(path), counts, model.classes, (scan.width, scan.height),
                            int(inside.sum()) if inside is not None else None)
    row["labels"] = f"{path.stem}_labels.png"
    row["overlay"] = f"{path.stem}_overlay.png" if picture is not None else None
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _existing_outputs(out: Path, images: list[Path]) -> list[Path]:
    names = ["statistics.csv", "statistics.json"] + [f"{p.stem}_{k}.png" for p in images for k in ("labels", "overlay")]
    return [out / n for n in names if (out / n).exists()]


def run(s: Settings, console: Console | None = None) -> int:
    """Predict every input; 0 if all were predicted, 1 if some could not be read, 2 for usage/model errors."""
    console = console or Console(stderr=True)
    images = find_inputs(s.input)
    if not images:
        raise UsageError(f"input={s.input}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise UsageError(f"{stems[p.stem]} and {p} would write the same outputs ({p.stem}_labels.png); rename one")
        stems[p.stem] = p
    out = Path(s.output).expanduser()
    existing = _existing_outputs(out, images)
    if existing and not s.overwrite:
        raise UsageError(f"{existing[0]} exists ({len(existing)} outputs in {out}); pass overwrite=true or another output=")
    masks = _object_masks(s.object_mask, images)
    device = resolve_device(s.device)
    autocast = resolve_precision(s.precision, device)
    torch.set_flush_denormal(True)  # as training and evaluate do: the same arithmetic, several times faster on CPU
    model = load_model(s.ckpt, device)
    if s.classes:
        check_classes(model, requested_classes(s.classes))
    geometry = model.geometry
    how = (f"sliding window, tile {model.image_size} px, overlap {s.overlap:g}, batches of {s.batch_size}"
           if geometry["policy"] == "crop" else f"{geometry['policy']} to {model.image_size} px, logits upsampled bilinearly")
    log.info("%d image(s); model %s (%d classes), geometry %s: %s%s; %s", len(images), model.source,
             model.classes.num_classes, geometry["policy"], how, ", flip TTA" if s.tta else "", device)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        overall = progress.add_task("images", total=len(images))
        for path in images:
            out_of_memory = False
            try:
                if s.object_mask and masks[path] is None:
                    raise ScanError(f"{path}: no object mask named {path.stem}.<ext> in {s.object_mask}")
                rows.append(predict_image(model, path, masks[path], out, s, device, autocast, progress))
            except (ScanError, OSError, ValueError, MemoryError, torch.OutOfMemoryError) as err:
                reason = str(err)
                out_of_memory = isinstance(err, torch.OutOfMemoryError)  # this scan did not fit; the next may
                if out_of_memory:
                    reason = f"out of GPU memory ({reason.splitlines()[0]}); lower max_memory_mb= or batch_size=, or use device=cpu"
                log.error("%s: not predicted: %s", path, reason)
                failed.append({"image": str(path), "reason": reason})
            if out_of_memory and device.type == "cuda":
                torch.cuda.empty_cache()  # out of the except block: the failed scan's tensors are released now
            progress.advance(overall)
    meta = {
        "model": str(model.source),
        "classes": model.classes.to_dict(),
        "geometry": geometry,
        "settings": {k: v for k, v in vars(s).items() if k not in ("input", "output")} | {"input": s.input},
        "predicted": len(rows),
        "failed": failed,
    }
    csv_path, _ = write_statistics(out, rows, model.classes, meta)
    _print_summary(console, rows, model.classes)
    console.print(f"{len(rows)} of {len(images)} image(s) predicted into {out} (statistics: {csv_path.name}, statistics.json)")
    if failed:
        console.print(f"[red]{len(failed)} image(s) could not be predicted:[/red] " + "; ".join(f["image"] for f in failed))
        return 1
    return 0


def _print_summary(console: Console, rows: list[dict], classes: ClassTable) -> None:
    if not rows:
        return
    table = Table(title="Damage per image: % of the image (or of the object mask), largest damage classes first")
    table.add_column("image")
    table.add_column("reference")
    table.add_column(f"{classes.names[0]} %", justify="right")
    table.add_column("damage classes %")
    for r in rows:
        damage = sorted(((v["percent"] or 0.0, n) for n, v in r["classes"].items() if n != classes.names[0]), reverse=True)
        shown = ", ".join(f"{n} {p:.2f}" for p, n in damage[:4] if p > 0) or "none"
        table.add_row(Path(r["image"]).name, r["reference"], f"{r['classes'][classes.names[0]]['percent']:.2f}", shown)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    try:
        settings = parse_args(list(sys.argv[1:] if argv is None else argv))
        return run(settings)
    except (UsageError, ModelLoadError, DeviceError) as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
