"""Evaluate every finished run of a sweep (or of any folder of run folders) in one command.

    python -m poc59.evaluate sweep=outputs/sweeps/<date_time> [split=val] [the options of evaluate]

A run is finished when it has summary.json and its best checkpoint (best.ckpt); the others are listed as
skipped (python -m poc59.sweep_status tells why). A run whose evaluation fails is listed with its
error and the others go on. Each run's metrics.json lands in <run>/evaluation/<split>/; the list
of runs and their status in <sweep>/evaluation-<split>.json.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from poc59.artifacts.trained import best_checkpoint
from poc59.core.atomic import write_json
from poc59.core.logs import print_titled, results_console
from poc59.evaluation.run import EvaluateError, evaluate_run

log = logging.getLogger("poc59.evaluate")

STATUSES = ("evaluated", "skipped", "failed")


def run_folders(sweep: Path) -> list[Path]:
    """Subfolders that are (or were meant to be) runs, in natural order (2 before 10)."""
    markers = ("config.yaml", ".hydra", "summary.json", "checkpoints")
    found = [d for d in sweep.iterdir() if d.is_dir() and any((d / m).exists() for m in markers)]
    return sorted(found, key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", d.name)])


def evaluate_all(sweep: str | Path, split: str | None = "val", out: Any = None, **options: Any) -> dict:
    """Evaluate each finished run of `sweep` with evaluate_run(**options); never stops at one failure.

    Returns {"sweep", "split", "counts", "runs": [{"run_dir", "status", "miou", "metrics", "reason"}]}.
    """

    folder = Path(sweep).expanduser().resolve()
    if not folder.is_dir():
        raise EvaluateError(
            f"sweep folder {folder} not found: sweep= names a folder of runs, e.g. outputs/sweeps/<date_time>"
        )
    if out is not None:
        raise EvaluateError(
            "out= names one run's output folder; with sweep= each run writes to <run>/evaluation/<split>"
        )
    runs = run_folders(folder)
    if not runs:
        raise EvaluateError(
            f"{folder} holds no run folders (none with config.yaml, .hydra/, summary.json or checkpoints/)"
        )
    split = split or "val"
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run_dir": str(run), "status": "skipped", "miou": None, "metrics": None, "reason": None}
        best = best_checkpoint(run).relative_to(run)
        missing = [str(m) for m in (Path("summary.json"), best) if not (run / m).is_file()]
        if missing:
            row["reason"] = (
                f"unfinished or failed: no {' and no '.join(missing)} (python -m poc59.sweep_status sweep={folder})"
            )
            log.warning("Skipping %s: %s", run, row["reason"])
        else:
            try:
                metrics = evaluate_run(run_dir=run, split=split, **options)
            except Exception as err:  # one broken run must not stop the others; its error is reported
                log.exception("Evaluating %s failed", run)
                row.update(status="failed", reason=f"{type(err).__name__}: {err}")
            else:
                row.update(
                    status="evaluated", miou=metrics["miou"], metrics=str(Path(metrics["folder"]) / "metrics.json")
                )
        rows.append(row)
    report = {
        "sweep": str(folder),
        "split": split,
        "counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        "runs": rows,
    }
    native = "-native" if options.get("mode") == "native" else ""
    write_json(folder / f"evaluation-{split}{native}.json", report)
    print_summary(report, results_console())
    return report


def print_summary(report: dict, console: Console) -> None:
    counts = report["counts"]
    table = Table(
        title=f"Evaluate-all {report['sweep']} ({report['split']} split): "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES),
        title_justify="left",
    )
    table.add_column("run", overflow="fold")
    table.add_column("status")
    table.add_column("mIoU %", justify="right")
    table.add_column("metrics.json / reason", overflow="fold")
    style = {"evaluated": "green", "skipped": "yellow", "failed": "bold red"}
    for r in report["runs"]:
        miou = "n/a" if r["miou"] is None else f"{100 * r['miou']:.2f}"
        table.add_row(
            Path(r["run_dir"]).name,
            Text(r["status"], style=style[r["status"]]),
            miou if r["status"] == "evaluated" else "",
            r["metrics"] or r["reason"] or "",
        )
    print_titled(console, table)
    console.print(
        Text(
            "mIoU: poc59's convention (mean over classes present in target or prediction); "
            "per-class tables are in each metrics.json",
            style="dim",
        )
    )
