"""<run>/tracking.json: which tracked run (MLflow run id, W&B run id) a poc59 run folder is.

Written by rank 0 once the run may start (a refused start writes nothing); read by a resumed run, so it
continues the same tracked run instead of opening a second one, and by evaluate and compare, which add
their figures to it. Also the names and values every tracker is given, in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from poc59.core.atomic import write_json
from poc59.core.config import flatten

RECORD = "tracking.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in a metric or parameter name


def read(run_dir: str | Path) -> dict[str, dict]:
    """{tracker: its record} of a run folder; {} when the run was never tracked."""
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def remember(run_dir: str | Path, tracker: str, entry: dict) -> None:
    """Keep `entry` as this run's record for `tracker` (atomically; other trackers' records kept)."""
    records = read(run_dir)
    if records.get(tracker) != entry:
        write_json(Path(run_dir) / RECORD, {**records, tracker: entry})


def metric_name(name: str) -> str:
    """`name` as a tracker accepts it: characters outside letters, digits and `_-. /` become `_` (class
    names such as "Burn marks" pass unchanged; two names never merge by losing characters)."""
    return _UNSAFE.sub("_", name)


def params(config: dict, limit: int = 6000) -> dict[str, str]:
    """The composed config flattened to {"data.image_size": "384", ...}, each value as text, cut at `limit`
    characters (MLflow's longest parameter value)."""
    return {
        metric_name(k): (json.dumps(v) if isinstance(v, list | dict) else str(v))[:limit]
        for k, v in flatten(config).items()
    }


def tags(config: dict, run_dir: Path, split: dict | None, commit: str | None) -> dict[str, str]:
    """What a run is, for searching runs in a tracker: encoder, family, decoder, run folder, git commit and
    the split's fingerprint (runs scored on the same images share it)."""
    enc = config.get("encoder") or {}
    found = {
        "poc59.encoder": enc.get("name"),
        "poc59.family": enc.get("family"),
        "poc59.decoder": (config.get("decoder") or {}).get("name") or enc.get("decoder"),
        "poc59.run_dir": str(run_dir),
        "poc59.git_commit": commit,
        "poc59.split_fingerprint": (split or {}).get("fingerprint"),
    }
    return {k: str(v) for k, v in found.items() if v is not None}


def files_of(run_dir: Path) -> list[Path]:
    """The run's records a tracker keeps at the end: summary, class weights, split, and the model card."""
    names = ("summary.json", "class_weights.json", "split.json", "model_card.json", "training_curves.png")
    return [run_dir / n for n in names if (run_dir / n).is_file()]


class RunTracker:
    """What the poc59 trackers share, before their Lightning logger in the class order: the module's
    hyperparameters (the model card) are not logged (the config goes in as params at `begin`, the card
    as a file at `complete`), and metric names are made acceptable (`metric_name`)."""

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({metric_name(k): v for k, v in metrics.items()}, step)  # type: ignore[misc]
