"""Class weights from pixel frequencies of the training split.

Inverse square root of each class's pixel frequency (255 excluded), normalised
to mean 1 over the classes present. Classes absent from training get weight 0
and a warning. Nothing is clipped unless `cap` is set: the earlier system
clipped to 3.0, which flattened a >100x spread into 1.3x.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from poc59.core.atomic import write_json

log = logging.getLogger(__name__)

METHODS = ("inverse_sqrt", "none")


def record_hash(record: dict) -> str:
    """sha256 of a weights record's content (every entry but its "check"), as canonical JSON: written with
    the record, so that a cached record edited on disk is told from one poc59 wrote."""
    content = {k: v for k, v in record.items() if k != "check"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=False).encode()).hexdigest()


def pixel_counts(masks: torch.Tensor, num_classes: int, chunk: int = 64) -> list[int]:
    """Pixels per class over uint8 masks [N,H,W]; the ignore id (>= num_classes) is not counted."""
    counts = torch.zeros(256, dtype=torch.int64)
    for start in range(0, masks.shape[0], chunk):
        counts += torch.bincount(masks[start : start + chunk].reshape(-1), minlength=256)
    return counts[:num_classes].tolist()


def class_weights(
    counts: Sequence[int], names: Sequence[str], method: str = "inverse_sqrt", cap: float | None = None
) -> list[float]:
    """Weights per class from pixel counts (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"data.class_weights.method={method!r} is not one of {METHODS}")
    counts_t = torch.tensor(counts, dtype=torch.float64)
    present = counts_t > 0
    absent = [n for n, p in zip(names, present.tolist()) if not p]
    if absent:
        log.warning("Classes absent from the training split get weight 0: %s", ", ".join(absent))
    if method == "none":
        return present.double().tolist()
    freq = counts_t / counts_t.sum()
    w = torch.zeros_like(freq)
    w[present] = freq[present].rsqrt()
    w[present] /= w[present].mean()
    if cap is not None:
        w = w.clamp(max=float(cap))
    return w.tolist()


def load_or_compute(
    cache_file: Path | None,
    masks: torch.Tensor | None,
    names: Sequence[str],
    method: str,
    cap: float | None,
    fingerprint: str,
    *,
    counts: Sequence[int] | None = None,
) -> dict:
    """The weights record for this split: read from `cache_file` if its fingerprint matches, else computed and cached.

    With `cache_file=None` nothing is cached. The record holds counts, frequencies, method, cap, weights, the split
    fingerprint and `check`, the hash of all that (`record_hash`): a cached record whose content no longer matches
    it (edited on disk) is recomputed, with a warning naming the file. So a run's summary can say exactly which
    weights the loss used. `counts` (pixels per class, e.g. from
    the preload's label counts) stands in for counting `masks`.
    """
    if cache_file is not None and cache_file.exists():
        try:
            record = json.loads(cache_file.read_text())
            if record.get("fingerprint") == fingerprint and record.get("names") == list(names):
                if record.get("check") == record_hash(record):
                    log.info("Class weights loaded from %s", cache_file)
                    return record
                log.warning(
                    "Class-weight cache %s differs from the hash written with it (edited, or written before "
                    "weights were hashed); recomputing the weights from the training split",
                    cache_file,
                )
        except (json.JSONDecodeError, OSError, AttributeError, TypeError, ValueError):
            log.warning("Class-weight cache %s is unreadable; recomputing", cache_file)
    counts = list(counts) if counts is not None else pixel_counts(masks, len(names))
    total = sum(counts)
    record = {
        "method": method,
        "cap": cap,
        "over": "training split, ignore label excluded",
        "names": list(names),
        "counts": counts,
        "frequencies": [c / total if total else 0.0 for c in counts],
        "weights": class_weights(counts, names, method, cap),
        "fingerprint": fingerprint,
    }
    record["check"] = record_hash(record)
    if cache_file is not None:
        write_json(cache_file, record)
    return record
