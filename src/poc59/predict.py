"""`python -m poc59.predict ckpt=... input=... output=...`: damage maps for full-resolution scans (`--help`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from poc59.core.classes import ClassTable
from poc59.core.cli import DONE, PARTIAL, PARTIAL_NOTE, Command, Key, Paths, run_command
from poc59.core.config import SettingError
from poc59.core.logs import print_titled, results_console

if TYPE_CHECKING:
    from poc59.inference.run import Settings

log = logging.getLogger("poc59.predict")


CLI = Command(
    prog="python -m poc59.predict",
    summary="Damage maps for full-resolution scans: per image a label map (palette PNG), an overlay with its "
    "legend, and damage statistics per class by name (statistics.csv / .json for the batch); with pyramid=true "
    "also the class and confidence maps as tiled, pyramidal TIFFs for viewers that stream large images.",
    examples=(
        "python -m poc59.predict ckpt=outputs/runs/x/checkpoints/best.ckpt input=scans/ output=maps/",
        "python -m poc59.predict ckpt=model.onnx input='scans/*.tif' output=maps/ tta=true max_memory_mb=512",
        "python -m poc59.predict sweep=outputs/sweeps/<cv> input=scans/ output=maps/   # the fold ensemble",
        "python -m poc59.predict ckpt=best.ckpt input=scans/ output=maps/ pyramid=true   # + <stem>_classes.tif ...",
        "python -m poc59.predict ckpt=model.onnx input=scans/ output=maps/ report=true   # + condition reports",
    ),
    keys=(
        Key("ckpt", Paths, "a checkpoint (.ckpt) or an exported model (.onnx, .pt); [a.ckpt,b.ckpt]: an ensemble"),
        Key("run_dirs", list, "an ensemble of these runs' best.ckpt (the folds of a cross-validation)"),
        Key("sweep", str, "an ensemble of the best.ckpt of every finished run of this sweep"),
        Key(
            "input",
            str,
            "an image, a folder (its image files, not recursive) or a glob; or IIIF: an Image API 2/3 info.json URL, "
            "a text file of such URLs (one a line, # comments), or a Presentation 2/3 manifest (URL or .json file)",
            required=True,
        ),
        Key("output", str, "the folder for <stem>_labels.png, <stem>_overlay.png and statistics", required=True),
        Key("overlap", float, "sliding-window overlap between tiles, in [0, 1) (crop models)"),
        Key("batch_size", int, "tiles per forward pass"),
        Key("tta", bool, "average with the horizontally flipped image's prediction"),
        Key("device", str, "auto | cpu | cuda | cuda:N"),
        Key("precision", str, "auto | 32 | bf16 | fp16 (autocast on CUDA only; a CPU runs float32)"),
        Key("max_memory_mb", float, "working memory for one image (pixels + logits); larger scans go in strips"),
        Key(
            "object_mask",
            str,
            "masks (non-zero = object) for statistics relative to the object: a file for "
            "every image, or a folder of <stem>.<ext>",
        ),
        Key("classes", str, "a classes.json that must match the model's class table"),
        Key("overlay", bool, "write the colour overlay with its legend"),
        Key(
            "pyramid",
            bool,
            "also write <stem>_classes.tif (class ids, the class colours as palette) and <stem>_confidence.tif "
            "(the predicted class's probability x 255): tiled, Deflate-compressed, pyramidal TIFFs that QGIS, "
            "vips, IIPImage and other viewers streaming pyramids open at any size",
        ),
        Key(
            "iiif",
            bool,
            "also write <stem>.manifest.json (IIIF Presentation 3: the scan with the damage map as a layer), "
            "<stem>.annotations.json (a W3C annotation per damage region: class, area, mean confidence, outline) "
            "and <stem>_damage.png (the damage map, Clean transparent)",
        ),
        Key(
            "iiif_base_url",
            str,
            "the http(s) address output= will be served at: the IIIF ids and links start with it "
            "(default: the folder's file: URI, for viewers on this machine)",
        ),
        Key("iiif_min_area", int, "damage regions of fewer pixels get no annotation (counted in statistics.json)"),
        Key(
            "report",
            bool,
            "also write <stem>.report.html per scan, a condition report for the object's conservator (the scan, "
            "the damage, each class's area and how far the model can be trusted on it, the confidence map, the "
            "model card in plain words; self-contained, prints to 1-2 A4 pages) and index.html for the batch",
        ),
        Key("report_pdf", bool, "with report=true, also print each report to <stem>.report.pdf (headless chromium)"),
        Key("allow_large_images", bool, "lift Pillow's decompression-bomb limit (~89 MP) for these inputs"),
        Key(
            "overwrite",
            bool,
            "replace the earlier batch in output= (the files its statistics.json lists; a file no batch "
            "recorded is never replaced)",
        ),
        Key("threads", Any, "CPU threads: auto (the CPUs this job may use, less those busy with other work) | N"),
    ),
    notes="An unreadable image, or one that runs out of memory, is reported (file and reason) and the others go "
    "on; the exit status is then 2. Usage, model and class-table errors exit with 2 before any image is read; "
    "an output folder that cannot be written (read-only, full) stops the batch with exit 2. statistics.json "
    "lists every file the batch wrote; files it lists are never read as scans. With report_pdf=true, "
    f"{PARTIAL_NOTE}: a report Chromium could not print (its HTML is written).",
    fills="poc59.inference.run:Settings",
)
USER_ERRORS = (
    "poc59.inference.run:UsageError",
    "poc59.artifacts.trained:ModelLoadError",
    "poc59.core.device:DeviceError",
    SettingError,
)


_OPTIONAL = ("object_mask", "classes", "iiif_base_url")  # empty = none


def parse_args(argv: list[str]) -> Settings:
    """Settings from key=value arguments (unknown keys and missing ckpt/input/output are UsageErrors)."""
    from poc59.inference.run import UsageError

    return settings_from(CLI.parse(argv, error=UsageError))


def settings_from(given: dict[str, Any]) -> Settings:
    """Settings from the parsed keys, checked."""
    from poc59.inference.run import Settings, UsageError

    settings = Settings(**{k: (v or None) if k in _OPTIONAL else v for k, v in given.items()})
    if not (settings.ckpt or settings.run_dirs or settings.sweep):
        raise UsageError("missing ckpt=: name the model (or an ensemble: ckpt=[a,b], run_dirs=[...], sweep=)")
    if not 0 <= settings.overlap < 1:
        raise UsageError(f"overlap={settings.overlap}: must be in [0, 1) (0.25 = a quarter of a tile)")
    if settings.batch_size < 1 or settings.max_memory_mb <= 0:
        raise UsageError("batch_size and max_memory_mb must be positive")
    if settings.iiif_min_area < 1:
        raise UsageError(f"iiif_min_area={settings.iiif_min_area}: must be at least 1 (pixels)")
    if settings.report_pdf:
        from poc59.inference.report import chromium_path

        if not settings.report:
            raise UsageError("report_pdf=true prints the condition reports that report=true writes: add report=true")
        if chromium_path() is None:
            raise UsageError(
                "report_pdf=true prints with headless Chromium, which is not installed (no chromium on PATH): "
                "install it (Debian/Ubuntu: apt-get install chromium), or drop report_pdf=true and print "
                "<stem>.report.html from a browser"
            )
    if settings.iiif_base_url:
        from poc59.inference.iiif import check_base_url

        try:
            settings.iiif_base_url = check_base_url(settings.iiif_base_url)
        except ValueError as err:
            raise UsageError(f"iiif_base_url={settings.iiif_base_url}: {err}") from None
    return settings


def _percent(p: float) -> str:
    """A share in %, two decimals; a class present below 0.005 % reads <0.01, not 0.00."""
    return f"{p:.2f}" if p >= 0.005 else "<0.01"


def _print_summary(console: Console, rows: list[dict], classes: ClassTable) -> None:
    if not rows:
        return
    table = Table(
        title="Damage per image: % of the image (or of the object mask), every damage class present, largest first"
    )
    table.add_column("image")
    table.add_column("reference")
    table.add_column(f"{classes.names[0]} %", justify="right")
    table.add_column("damage classes %")
    for r in rows:
        damage = sorted(
            ((v["percent"] or 0.0, n) for n, v in r["classes"].items() if n != classes.names[0]), reverse=True
        )
        shown = ", ".join(f"{n} {_percent(p)}" for p, n in damage if p > 0) or "none"
        table.add_row(
            r["image"] if r.get("source") else Path(r["image"]).name,
            r["reference"],
            f"{r['classes'][classes.names[0]]['percent']:.2f}",
            shown,
        )
    print_titled(console, table)


def _predict(options: dict[str, Any]) -> int:
    from poc59.core.threads import set_threads
    from poc59.inference.run import run

    settings = settings_from(options)
    set_threads(settings.threads)
    done = run(settings)
    rows, failed = done["rows"], done["failed"]
    console = results_console()  # stdout: the results; the log (stderr) has the progress and the errors
    _print_summary(console, rows, done["classes"])
    console.print(
        f"{len(rows)} of {len(done['images'])} image(s) predicted into {done['out']} "
        f"(statistics: {done['statistics'].name}, statistics.json)",
        soft_wrap=True,
    )
    unreported = [r["image"] for r in rows if settings.report and not r.get("report")]
    if unreported:  # report=true must never end in silence: a predicted scan without its report is a bug
        raise RuntimeError(f"report=true, but no condition report was written for {', '.join(unreported)}")
    unprinted = [r["report"] for r in rows if settings.report_pdf and not r.get("report_pdf")]
    if unprinted:
        log.error(
            "%d report(s) not printed to PDF (the reason is logged above): %s; open each in a browser and print "
            "it to PDF there",
            len(unprinted),
            ", ".join(unprinted),
        )
    if settings.report and rows:
        console.print(f"condition reports: {done['out'] / 'index.html'}", soft_wrap=True)
    if unprinted:
        console.print(f"not printed to PDF: {', '.join(unprinted)}", soft_wrap=True)
    if failed:
        log.error("%d image(s) could not be predicted: %s", len(failed), "; ".join(f["image"] for f in failed))
        return 2  # the input: each unreadable image is named (here and in statistics.json), the rest predicted
    return PARTIAL if unprinted else DONE  # the HTML reports are there; Chromium failed on some PDFs


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _predict, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())
