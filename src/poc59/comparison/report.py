"""The comparison as files (Markdown, CSV, JSON) and as a Rich table: one table, every number labelled."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from poc59.core.atomic import write_bytes, write_json
from poc59.core.logs import print_titled
from poc59.metrics.registry import Metric, class_metrics, split_metrics

__all__ = ["print_table", "table_rows", "write_reports"]

COLUMNS = (
    "rank",
    "configuration",
    "family",
    "decoder",
    "parameters",
    "best val mIoU, %",
    "interval, %",
    "seeds",
    "train images/s",
    "peak memory",
    "wall time",
    "status",
)


CSV_COLUMNS = (  # comparison.csv's first columns; the per-class and registered metrics' columns follow
    "rank",
    "best",
    "configuration",
    "encoder",
    "family",
    "decoder",
    "parameters",
    "n_seeds",
    "seeds",
    "val_mIoU_mean",
    "val_mIoU_std",
    "val_mIoU_min",
    "val_mIoU_max",
    "interval_lo",
    "interval_hi",
    "interval_kind",
    "folds",
    "pooled_mIoU",
    "train_images_per_s",
    "peak_memory_bytes",
    "wall_time_s",
    "status",
    "detail",
    "runs",
)


def _pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}"


def _interval(iv: list[float] | None) -> str:
    return "" if not iv else f"{_pct(iv[0])} .. {_pct(iv[1])}"


def _miou(c: dict) -> str:
    m, cv = c["val_mIoU"], c.get("cv")
    if cv:
        folds = f"folds {_pct(m['mean'])} ± {_pct(m['std'])} (mean ± std)"
        if cv["pooled_miou"] is None:
            return f"not pooled; {folds}"
        return f"{_pct(cv['pooled_miou'])} pooled over {cv['folds']} folds; {folds}"
    if m["mean"] is None:
        return "none"
    return f"{_pct(m['mean'])} ± {_pct(m['std'])} (mean ± std)" if m["std"] is not None else _pct(m["mean"])


def _num(v: float | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def _memory(b: int | None) -> str:
    return "" if b is None else f"{b / 2**30:.2f} GiB"


def _params(p: int | None) -> str:
    return "" if p is None else f"{p / 1e6:.2f} M"


def _ranked_by_other(result: dict) -> str | None:
    """The ranking metric when it is not val/mIoU (which the table shows anyway), else None."""
    monitor = result.get("monitor") or "val/mIoU"
    return None if monitor == "val/mIoU" else monitor


def columns(result: dict) -> list[str]:
    """The table's columns: COLUMNS, and the ranking metric with its interval after the mIoU when it is another."""
    other = _ranked_by_other(result)
    cols = list(COLUMNS)
    if other:
        at = cols.index("interval, %") + 1
        cols[at:at] = [f"ranked by {other}, %", f"{other} interval, %"]
    return cols


def table_rows(result: dict) -> list[list[str]]:
    """The comparison table as text cells (`columns`): configurations by rank, then runs that did not finish."""
    rows = []
    other = _ranked_by_other(result)
    for c in result["configurations"]:
        rank = "" if c["rank"] is None else str(c["rank"]) + (" best" if c["best"] else "")
        rows.append(
            [
                rank,
                c["label"],
                c["family"] or "",
                c["decoder"] or "",
                _params(c["parameters"]),
                _miou(c),
                _interval(c["interval"]),
                *([_pct(c["score"]), _interval(c["score_interval"])] if other else []),
                str(c["n"]),
                _num(c["train_images_per_s"], ".1f"),
                _memory(c["peak_memory_bytes"]),
                _num(c["wall_time_s"] and c["wall_time_s"] / 60, ".1f") + (" min" if c["wall_time_s"] else ""),
                "finished",
            ]
        )
    width = len(columns(result))
    for r in result["runs"]:
        if r["status"] != "finished":
            rows.append(["", f"run {r['name']}", *[""] * (width - 3), r["status"]])  # why: in the runs list
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    configs, conv = result["configurations"], result["conventions"]
    rows = table_rows(result)
    for row in rows:
        if row[0].endswith("best"):
            row[1] = f"**{row[1]}**"
    parts = ["# Encoder comparison", ""]
    if result["sweep"]:
        parts += [f"Sweep: `{result['sweep']}`", ""]
    if result["best"]:
        parts += [f"Best: **{result['best']}**. {result['lead']['verdict']}.", ""]
    if result.get("search"):
        parts += [search_line(result["search"]), ""]
    parts += [_md_table(columns(result), rows), ""]
    repeats = [c for c in configs if c["n"] >= 2 and not c.get("cv")]
    if repeats:
        parts += ["## Seed repeats", "", f"Runs that differ only by the seed; std: {conv['std']}.", ""]
        parts.append(
            _md_table(
                ["configuration", "n", "mean, %", "std, %", "min .. max, %", "per seed, %"],
                [
                    [
                        c["label"],
                        str(c["n"]),
                        _pct(c["val_mIoU"]["mean"]),
                        _pct(c["val_mIoU"]["std"]),
                        f"{_pct(c['val_mIoU']['min'])} .. {_pct(c['val_mIoU']['max'])}",
                        ", ".join(f"seed {s}: {_pct(v)}" for s, v in zip(c["seeds"], c["val_mIoU"]["values"])),
                    ]
                    for c in repeats
                ],
            )
        )
        parts.append("")
    parts += _cross_validation_md(configs, conv)
    names = result["classes"]["names"]
    parts += ["## Per-class IoU", "", f"IoU per class, % ({conv['per_class_iou']}).", ""]
    parts.append(
        _md_table(
            ["class"] + [c["label"] for c in configs],
            [
                [n]
                + [("absent" if c["per_class_iou"].get(n) is None else _pct(c["per_class_iou"][n], 1)) for c in configs]
                for n in names
            ],
        )
    )
    parts += ["", f"![Per-class IoU by configuration]({Path(result['chart']).name})", ""]
    parts += _registered_md(configs, names)
    parts += ["## Runs", ""]
    parts.append(
        _md_table(
            ["run", "configuration", "seed", "status", "best val mIoU, %", "interval, %", "detail"],
            [
                [
                    r["name"],
                    r["encoder"] or "",
                    "" if r["seed"] is None else str(r["seed"]),
                    r["status"],
                    _pct(r["val_miou"]),
                    _interval(r["interval"]),
                    r["detail"],
                ]
                for r in result["runs"]
            ],
        )
    )
    if result["sweep"]:
        parts += ["", f"Runs are the sweep's job folders, `{result['sweep']}/<run>`."]
    parts += ["", "## What the numbers mean", ""] + [f"- **{k}**: {v}" for k, v in conv.items()]
    return "\n".join(parts) + "\n"


def _registered_md(configs: list[dict], names: list[str]) -> list[str]:
    """Every registered metric (`poc59.metrics`) by configuration: the split metrics in one table, each
    per-class metric but IoU (above) in its own; best epoch's values, mean over seeds, or pooled over folds."""
    split = [m for m in split_metrics() if any(m.key in c.get("metrics", {}) for c in configs)]
    parts = []
    if split:
        parts += ["## Every metric", "", "%, at each run's best epoch (mean over seeds; pooled over folds).", ""]
        parts.append(
            _md_table(
                ["configuration"] + [m.label for m in split],
                [[c["label"]] + [_pct(c.get("metrics", {}).get(m.key)) for m in split] for c in configs],
            )
        )
        parts += [""] + [f"- **{m.label}**: {m.meaning}" for m in split] + [""]
    for m in class_metrics():
        if m.key == "iou" or not any(m.key in c.get("per_class_metrics", {}) for c in configs):
            continue  # IoU has its own section above
        values = [c.get("per_class_metrics", {}).get(m.key) or {} for c in configs]
        parts += [f"## Per-class {m.label}", "", f"{m.label} per class, % ({m.meaning}).", ""]
        parts.append(
            _md_table(
                ["class"] + [c["label"] for c in configs],
                [[n] + [("n/a" if v.get(n) is None else _pct(v[n], 1)) for v in values] for n in names],
            )
        )
        parts.append("")
    return parts


def _cross_validation_md(configs: list[dict], conv: dict) -> list[str]:
    """The folds of each cross-validated configuration, its pooled score, and per held-out group."""
    cvs = [c for c in configs if c.get("cv")]
    if not cvs:
        return []
    parts = [
        "## Cross-validation",
        "",
        f"Pooled: {conv['pooled_miou']}. Over folds: mean and {conv['fold_std']} of each fold's best val mIoU.",
        "",
    ]
    rows = []
    for c in cvs:
        cv = c["cv"]
        per_fold = ", ".join(
            f"{f['fold']}{'=' + str(f['value']) if f['value'] is not None else ''}: {_pct(f['val_mIoU'])}"
            for f in cv["per_fold"]
        )
        rows.append(
            [
                c["label"],
                str(cv["folds"]) + (f" (by {cv['by']})" if cv["by"] else ""),
                per_fold,
                f"{_pct(cv['fold_mean'])} ± {_pct(cv['fold_std'])}",
                _pct(cv["pooled_miou"]) or "not pooled",
                _interval(cv["pooled_interval"]),
                cv["pooled_note"] or f"{cv['pooled_images']} images",
            ]
        )
    header = ["configuration", "folds", "best val mIoU per fold, %", "mean ± std, %", "pooled mIoU, %"]
    parts += [_md_table([*header, "pooled interval, %", "note"], rows), ""]
    for c in cvs:
        for column, values in (c["cv"]["pooled_groups"] or {}).items():
            parts += [f"Pooled out-of-fold mIoU by {column}, {c['label']}:", ""]
            table = [[v, str(g["num_images"]), _pct(g["miou"])] for v, g in values.items()]
            parts += [_md_table([column, "images", "pooled mIoU, %"], table), ""]
    return parts


def csv_text(result: dict) -> str:
    """One row per configuration (fractions, not %), then one per run that did not finish; a blank cell is a
    value that does not exist (no interval, not pooled, not finished)."""
    names = result["classes"]["names"]
    per_class, split = _registered_columns(result)
    rows = []
    for c in result["configurations"]:
        m, iv, sv = c["val_mIoU"], c["interval"] or [None, None], c.get("score_interval") or [None, None]
        row = {
            "rank": c["rank"],
            "best": c["best"],
            "configuration": c["label"],
            "encoder": c["encoder"],
            "family": c["family"],
            "decoder": c["decoder"],
            "parameters": c["parameters"],
            "n_seeds": c["n"],
            "seeds": " ".join(map(str, c["seeds"])),
            "val_mIoU_mean": m["mean"],
            "val_mIoU_std": m["std"],
            "val_mIoU_min": m["min"],
            "val_mIoU_max": m["max"],
            "interval_lo": iv[0],
            "interval_hi": iv[1],
            "interval_kind": c["interval_kind"],
            "folds": c.get("folds"),
            "pooled_mIoU": c.get("pooled_miou"),
            "train_images_per_s": c["train_images_per_s"],
            "peak_memory_bytes": c["peak_memory_bytes"],
            "wall_time_s": c["wall_time_s"],
            "status": "finished",
            "runs": " ".join(c["runs"]),
            **{f"IoU/{n}": c["per_class_iou"].get(n) for n in names},
            **{
                f"{k.name}/{n}": (c.get("per_class_metrics", {}).get(k.key) or {}).get(n)
                for k in per_class
                for n in names
            },
            **{f"val_{k.name}": c.get("metrics", {}).get(k.key) for k in split},
            "ranked_by": c.get("ranked_by"),
            "score": c.get("score"),
            "score_lo": sv[0],
            "score_hi": sv[1],
        }
        rows.append(row)
    for r in result["runs"]:
        if r["status"] != "finished":
            rows.append({"best": False, "status": r["status"], "detail": r["detail"], "runs": r["dir"]})
    header = [*CSV_COLUMNS, *(f"IoU/{n}" for n in names)]
    header += [f"{k.name}/{n}" for k in per_class for n in names] + [f"val_{k.name}" for k in split]
    header += ["ranked_by", "score", "score_lo", "score_hi"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\r\n")
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _registered_columns(result: dict) -> tuple[list[Metric], list[Metric]]:
    """(per-class metrics but IoU, split metrics) that some configuration holds: the CSV's added columns."""
    configs = result["configurations"]
    per_class = [
        m for m in class_metrics() if m.key != "iou" and any(m.key in c.get("per_class_metrics", {}) for c in configs)
    ]
    return per_class, [m for m in split_metrics() if any(m.key in c.get("metrics", {}) for c in configs)]


def write_reports(result: dict, out: Path) -> dict[str, Path]:
    """comparison.md, comparison.csv, comparison.json in `out` (atomically)."""
    paths = {"markdown": out / "comparison.md", "csv": out / "comparison.csv", "json": out / "comparison.json"}
    write_bytes(paths["markdown"], markdown(result).encode())
    write_bytes(paths["csv"], csv_text(result).encode())
    write_json(paths["json"], result)
    return paths


def print_table(result: dict, console: Any) -> None:
    """The comparison table, the verdict on the lead and what the numbers mean, with Rich."""

    title = "Encoder comparison" + (f": {result['sweep']}" if result["sweep"] else "")
    table = Table(title=title, title_justify="left")
    for col in columns(result):
        table.add_column(
            col,
            overflow="fold",
            min_width=12 if col == "configuration" else None,
            justify="right" if col in ("parameters", "train images/s", "wall time") else "left",
        )
    for row in table_rows(result):
        style = "bold green" if row[0].endswith("best") else ("red" if not row[-1].startswith("finished") else None)
        table.add_row(*row, style=style)
    print_titled(console, table)
    for r in result["runs"]:
        if r["status"] != "finished":
            console.print(
                Text(f"run {r['name']} {r['status']}: {r['detail']} ({r['dir']})", style="red"), soft_wrap=True
            )
    if result["best"]:
        console.print(Text(f"Best: {result['best']}. {result['lead']['verdict']}", style="bold"))
    if result.get("search"):
        console.print(Text(search_line(result["search"]), style="bold"), soft_wrap=True)
    for k, v in result["conventions"].items():
        console.print(Text(f"  {k}: {v}", style="dim"), soft_wrap=True)
    console.print(f"Written: {Path(result['chart']).parent}/comparison.{{md,csv,json}}, {Path(result['chart']).name}")


def search_line(search: dict) -> str:
    """An Optuna search's outcome in one line (optimization_results.yaml of hydra/sweeper=optuna)."""
    if search.get("best_trial") is None:
        return f"Optuna study {search['name']}: no complete trial of {search['n_trials']}"
    params = ", ".join(f"{k}={v}" for k, v in search["best_params"].items())
    return (
        f"Optuna study {search['name']}: best trial {search['best_trial']} of {search['n_trials']} "
        f"({search['n_complete']} complete), {_pct(search['best_value'])} % ({search['objective']}), with {params}"
    )
