"""The folds of one cross-validated configuration as one score: per fold, over folds, and pooled.

- **Per fold**: each run's best val mIoU (its fold's validation images, the run's own convention).
- **Over folds**: their mean and sample standard deviation (n - 1): how much the score moves with the
  images it is validated on.
- **Pooled out-of-fold** (the number a configuration is ranked by): the per-image confusion matrices of
  every fold's validation images (evaluate writes them, `per_image_confusion.npz`) concatenated, so each
  image outside the test split is scored once, by the fold model that did not train on it; mIoU and IoU
  per class of their sum, under the metric convention; a percentile bootstrap interval over those images;
  the same per metadata group (material, content). Every registered metric (`poc59.metrics`) is pooled
  so, from every per-image statistic the folds' evaluations wrote (`pooled`, `pooled_intervals`; mIoU and
  IoU also under their earlier keys). It needs every fold, one run each.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from poc59.analysis.bootstrap import bootstrap
from poc59.analysis.scores import scores
from poc59.data.sources import metadata_rows
from poc59.evaluation.run import GROUP_COLUMNS, group_report, read_per_image_statistics
from poc59.metrics import registry

POOLED_CONVENTION = (
    "pooled out-of-fold mIoU: every fold's validation images scored by the fold model that did not train on "
    "them (each image once), their confusion matrices summed, then mIoU of the sum"
)
FOLD_STD_CONVENTION = "sample standard deviation over folds (n - 1)"


def fold_record(summary: dict) -> dict | None:
    """The `cv` record a cross-validation run keeps in summary.json (None for a plain split)."""
    return (summary.get("provenance", {}).get("data", {}) or {}).get("cv")


def partition_key(summary: dict) -> str:
    """What runs must share to be ranked together: the fold partition, else the split."""
    cv = fold_record(summary)
    if cv:
        return f"cv:{cv['partition_fingerprint']}"
    return str(summary.get("provenance", {}).get("data", {}).get("split_fingerprint"))


def cross_validate(members: list[Any], names: list[str], bootstrap_options: dict[str, Any]) -> dict:
    """The cross-validation record of a configuration's runs (compare's `Run`s, one per fold)."""
    records = [fold_record(r.summary) for r in members]
    first = records[0]
    k = int(first["folds"])
    per_fold = sorted(
        (
            {
                "fold": rec["fold"],
                "value": rec.get("value"),
                "run": r.dir,
                "seed": r.seed,
                "val_mIoU": r.val_miou,
                "interval": r.interval,
            }
            for r, rec in zip(members, records)
        ),
        key=lambda f: (f["fold"], f["seed"] is None, f["seed"]),
    )
    values = [f["val_mIoU"] for f in per_fold if f["val_mIoU"] is not None]
    out: dict[str, Any] = {
        "folds": k,
        "by": first.get("by"),
        "values": first.get("values"),
        "partition_fingerprint": first["partition_fingerprint"],
        "per_fold": per_fold,
        "fold_mean": float(np.mean(values)) if values else None,
        "fold_std": float(np.std(values, ddof=1)) if len(values) >= 2 else None,
        "pooled_miou": None,
        "pooled_interval": None,
        "pooled_per_class_iou": {},
        "pooled_per_class_interval": {},
        "pooled_groups": {},
        "pooled_images": None,
        "pooled_note": None,
    }
    counts = defaultdict(int)
    for f in per_fold:
        counts[f["fold"]] += 1
    missing = [i for i in range(k) if counts[i] == 0]
    repeated = [i for i in range(k) if counts[i] > 1]
    no_matrices = [r.dir for r in members if _per_image_path(r) is None]
    if missing:
        out["pooled_note"] = f"not pooled: fold(s) {', '.join(map(str, missing))} did not finish"
    elif repeated:
        out["pooled_note"] = (
            f"not pooled: several runs of fold(s) {', '.join(map(str, repeated))} (seeds); compare one seed's "
            "folds (runs=[...])"
        )
    elif no_matrices:
        out["pooled_note"] = (
            "not pooled: no per-image confusion matrices for "
            + ", ".join(no_matrices)
            + " (python -m poc59.evaluate run_dir=..., or compare with evaluate=true)"
        )
    if out["pooled_note"]:
        return out
    ids, parts = [], []
    for r in members:
        i, stats = read_per_image_statistics(_per_image_path(r))
        ids += i
        parts.append(stats)
    keys = [k for k in parts[0] if all(k in p for p in parts)]  # a fold evaluated before a statistic existed lacks it
    per_image = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    pooled = scores({k: v.sum(0) for k, v in per_image.items()}, names)
    boot = bootstrap(per_image, **bootstrap_options)
    intervals = boot["intervals"]
    out["pooled_miou"] = pooled["miou"]
    out["pooled_interval"] = _interval(intervals["miou"])
    out["pooled_per_class_iou"] = {n: pooled["per_class"][n]["iou"] for n in names}
    out["pooled_per_class_interval"] = {n: _interval(iv) for n, iv in zip(names, intervals["iou"])}
    out["pooled"], out["pooled_intervals"] = {}, {}
    for m in registry.METRICS.values():
        if m.key not in intervals:
            continue
        if m.per_class:
            out["pooled"][m.key] = {n: pooled["per_class"][n][m.key] for n in names}
            out["pooled_intervals"][m.key] = {n: _interval(iv) for n, iv in zip(names, intervals[m.key])}
        else:
            out["pooled"][m.key], out["pooled_intervals"][m.key] = pooled[m.key], _interval(intervals[m.key])
    out["pooled_images"] = len(ids)
    out["pooled_groups"] = _groups(members[0], ids, per_image, names)
    out["pooled_interval_kind"] = (
        f"{100 * boot['level']:.0f} % bootstrap interval over the {len(ids)} out-of-fold images "
        f"({boot['resamples']} resamples)"
    )
    return out


def _per_image_path(run: Any) -> Path | None:
    m = run.metrics or {}
    if not m.get("per_image_confusion") or not m.get("folder"):
        return None
    path = Path(m["folder"]) / m["per_image_confusion"]
    return path if path.is_file() else None


def _interval(iv: np.ndarray) -> list[float] | None:
    return None if np.isnan(iv).any() else [float(iv[0]), float(iv[1])]


def _groups(run: Any, ids: list[str], per_image: dict[str, np.ndarray], names: list[str]) -> dict:
    """Pooled metrics (`evaluation.run.group_report`) per metadata.csv material / content of the run's data folder."""
    root = run.summary.get("provenance", {}).get("data", {}).get("root")
    columns, rows = metadata_rows(root) if root else ([], {})
    groups: dict[str, dict[str, list[int]]] = {}
    for column in (c for c in GROUP_COLUMNS if c in columns):
        by: dict[str, list[int]] = defaultdict(list)
        for k, i in enumerate(ids):
            value = (rows.get(i) or {}).get(column)
            if value:
                by[value].append(k)
        groups[column] = dict(sorted(by.items()))
    return group_report(per_image, groups, names)
