"""The evaluation as a Rich table: per class by name, then the headline numbers, each labelled."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from poc59.core.logs import print_titled, results_console
from poc59.metrics.registry import class_metrics, split_metrics


def pct(value: float | None) -> str:
    """A 0-1 ratio as a percentage; n/a when undefined."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def with_interval(value: float | None, interval: list[float] | None) -> str:
    return pct(value) + (f" [{pct(interval[0])}, {pct(interval[1])}]" if value is not None and interval else "")


def print_report(metrics: dict, console: Console | None = None) -> None:
    """Print one evaluation (a metrics.json dict)."""
    console = console or results_console()
    level = f"{100 * metrics['bootstrap']['level']:g} %"
    table = Table(
        title=f"{metrics['checkpoint']}\n{metrics['split']} split of {metrics['data_root']}: {metrics['num_images']} images "
        + (
            f"at {metrics['image_size']} px ({metrics['geometry'].get('policy')})"
            if metrics.get("mode") != "native"
            else "at their stored resolution (mode=native, as predict runs)"
        )
        + "; values in %",
        title_justify="left",
    )
    table.add_column("id", justify="right")
    names = list(metrics["classes"]["names"])
    table.add_column("class", no_wrap=True, min_width=max(map(len, names)))  # names whole, even when narrow
    columns = class_metrics()
    rows = metrics["per_class"].values()
    for m in columns:
        with_ci = any(row.get(f"{m.key}_ci") for row in rows)
        table.add_column(f"{m.label} [{level} CI]" if with_ci else m.label, justify="right")
    table.add_column("target pixels", justify="right")
    table.add_column("images", justify="right")
    for c, (name, row) in enumerate(metrics["per_class"].items()):
        if not row["present"]:
            values = [Text("absent", style="dim italic")] * len(columns)
        else:
            values = [with_interval(row.get(m.key), row.get(f"{m.key}_ci")) for m in columns]
        table.add_row(str(c), name, *values, f"{row['support']:,}", str(row["images"]))
    print_titled(console, table)
    console.print(
        Text(
            "absent: neither in the target nor predicted anywhere in the split; "
            + "; ".join(f"{m.label}: {m.meaning}" for m in class_metrics())
            + "; images: images whose target holds the class (an IoU from 1 or 2 images is fragile)",
            style="dim",
        )
    )
    boot = metrics["bootstrap"]
    interval = f"[{level} bootstrap interval over images, {boot['resamples']} resamples, seed {boot['seed']}]"
    lines = [
        (
            m.label,
            with_interval(metrics[m.key], metrics.get(f"{m.key}_ci")) + " %",
            m.meaning + (f"; {interval}" if metrics.get(f"{m.key}_ci") else ""),
        )
        for m in split_metrics()
        if m.key in metrics  # a metrics.json written before a metric was registered lacks it
    ]
    speed = metrics["speed"]
    lines.append(
        (
            "inference",
            f"{speed['ms_per_image']:.2f} ms/image, {speed['images_per_s']:.1f} images/s"
            if speed["images_per_s"]
            else "n/a",
            f"{speed['device']}"
            + (f" ({speed['cpu_threads']} threads)" if speed["device"] == "cpu" else "")
            + f", batch {speed['batch_size']}, {speed['precision']}; {speed['convention']}",
        )
    )
    for label, value, meaning in lines:
        console.print(Text.assemble((f"{label}: ", "bold"), (value, "bold"), (f"  ({meaning})", "dim")))
    for column, groups in metrics["groups"].items():
        console.print(
            Text.assemble(
                (f"mIoU by {column}: ", "bold"),
                "; ".join(f"{value} {pct(g['miou'])} % ({g['num_images']} images)" for value, g in groups.items()),
            )
        )
    if metrics.get("folder"):  # the last line, a path a script reads (absent from a metrics.json written before)
        console.print(str(Path(metrics["folder"]) / "metrics.json"), soft_wrap=True, highlight=False)
