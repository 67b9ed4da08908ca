"""`python -m poc59.predict`: damage maps for full-resolution scans.

    python -m poc59.predict ckpt=outputs/runs/x/checkpoints/best.ckpt input=scans/ output=maps/
    python -m poc59.predict ckpt=model.onnx input='scans/*.tif' output=maps/ tta=true max_memory_mb=512

Arguments are key=value:
  ckpt=FILE              a checkpoint (.ckpt) or an exported model (.onnx, .pt), via poc59.artifacts.trained.load_model
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

import logging
import sys
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from poc59.artifacts.trained import ModelLoadError
from poc59.core.classes import ClassTable
from poc59.core.cli import parse_key_values
from poc59.core.device import DeviceError
from poc59.inference.run import Settings, UsageError, run

log = logging.getLogger("poc59.predict")


USAGE = "usage: python -m poc59.predict ckpt=FILE input=FILE|DIR|GLOB output=DIR [key=value ...] (see --help)"


_OPTIONAL = ("object_mask", "classes")  # empty = none


def parse_args(argv: list[str]) -> Settings:
    """Settings from key=value arguments (unknown keys and missing ckpt/input/output are errors)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(__doc__)  # the whole story, which USAGE points to
    kinds = {
        f.name: {"float": float, "int": int, "bool": bool}.get(str(f.type).split(" ")[0], str) for f in fields(Settings)
    }
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


def _print_summary(console: Console, rows: list[dict], classes: ClassTable) -> None:
    if not rows:
        return
    table = Table(title="Damage per image: % of the image (or of the object mask), largest damage classes first")
    table.add_column("image")
    table.add_column("reference")
    table.add_column(f"{classes.names[0]} %", justify="right")
    table.add_column("damage classes %")
    for r in rows:
        damage = sorted(
            ((v["percent"] or 0.0, n) for n, v in r["classes"].items() if n != classes.names[0]), reverse=True
        )
        shown = ", ".join(f"{n} {p:.2f}" for p, n in damage[:4] if p > 0) or "none"
        table.add_row(Path(r["image"]).name, r["reference"], f"{r['classes'][classes.names[0]]['percent']:.2f}", shown)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    try:
        settings = parse_args(list(sys.argv[1:] if argv is None else argv))
        console = Console(stderr=True)
        done = run(settings, console)
    except (UsageError, ModelLoadError, DeviceError) as err:
        log.error("%s", err)
        return 2
    rows, failed = done["rows"], done["failed"]
    _print_summary(console, rows, done["classes"])
    console.print(
        f"{len(rows)} of {len(done['images'])} image(s) predicted into {done['out']} "
        f"(statistics: {done['statistics'].name}, statistics.json)"
    )
    if failed:
        console.print(
            f"[red]{len(failed)} image(s) could not be predicted:[/red] " + "; ".join(f["image"] for f in failed)
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
