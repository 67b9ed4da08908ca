"""Score a trained model on a split of its run's data (or another folder): `evaluate_run`.

The images, split and geometry are the run's own (its config.yaml and split.json), fed by the
same BatchFeed as training validation, so the run's best val/mIoU is reproduced. Writes
metrics.json (atomically) into <run>/evaluation/<split>/. `python -m poc59.evaluate` is its command.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from poc59.analysis.bootstrap import bootstrap
from poc59.analysis.pictures import covering_sample
from poc59.analysis.scores import scores
from poc59.artifacts.ensemble import ensemble_name, load_ensemble, members_of
from poc59.artifacts.load import load_model, locate_checkpoint
from poc59.artifacts.trained import TrainedModel, best_checkpoint, checkpoint_identity, scored_this
from poc59.core.atomic import write_bytes, write_json
from poc59.core.config import cache_root
from poc59.core.device import resolve_device
from poc59.core.outputs import check_writable, writing
from poc59.data.datamodule import SegmentationDataModule
from poc59.data.sources import metadata_rows
from poc59.evaluation.passes import (
    NATIVE_SPEED_CONVENTION,
    SPEED_CONVENTION,
    precision_for,
    predicted_canvases,
    score_native,
    score_statistics,
)
from poc59.evaluation.pictures import (
    draw,  # matplotlib only when pictures are asked for
)
from poc59.metrics import registry
from poc59.metrics.confusion import LEGACY_CONVENTION, metric_convention
from poc59.tracking.tracked import add_to_tracked

log = logging.getLogger("poc59.evaluate")


SPLITS = ("val", "test", "all")


GROUP_COLUMNS = ("material", "content")


class EvaluateError(ValueError):
    """Bad arguments or a run that cannot be evaluated; the message names the fix."""


def locate(run_dir: str | Path | None, ckpt: str | Path | None) -> tuple[Path, Path | None]:
    """(checkpoint, run folder or None) from run_dir= and/or ckpt=."""
    if run_dir is None and ckpt is None:
        raise EvaluateError(
            "name what to evaluate: run_dir=<run folder> (uses its checkpoints/best.ckpt) or ckpt=<file>"
        )
    return locate_checkpoint(run_dir, ckpt, EvaluateError)


def data_config(
    model: TrainedModel, run: Path | None, data_root: str | Path | None, batch_size: int | None
) -> tuple[Any, bool]:
    """The DataModule config: the run's own (same images, split and geometry), or `data_root` at the checkpoint's geometry.

    Returns (config, own) where `own` says the data is the run's (its split.json applies).
    """
    if run is None and data_root is None:
        raise EvaluateError(
            f"{model.source} is not inside a run folder (no ../config.yaml), so its data is unknown: "
            "pass data.root=<dataset folder> (the geometry comes from the checkpoint), or run_dir=<run folder>"
        )
    if run is not None:
        cfg = OmegaConf.load(run / "config.yaml").data
        summary = run / "summary.json"
        if not Path(cfg.root).expanduser().is_absolute() and summary.is_file():  # relative to where training ran
            cfg.root = json.loads(summary.read_text())["provenance"]["data"]["root"]
    else:
        cfg = OmegaConf.create(
            {
                "_target_": f"{SegmentationDataModule.__module__}.{SegmentationDataModule.__name__}",
                "cache_dir": str(cache_root() / "data"),
                "batch_size": 8,
            }
        )
    own = run is not None and (data_root is None or Path(data_root).expanduser().resolve() == Path(cfg.root).resolve())
    if own:
        if not (run / "split.json").is_file():  # the run's record of its validation images: nothing replaces it
            raise EvaluateError(
                f"{run / 'split.json'} not found: the run's record of the images it trained and validated on. "
                "Restore it from a copy of the run, or score all the images of a folder as new ones: "
                f"python -m poc59.evaluate ckpt={run / 'checkpoints' / 'best.ckpt'} data.root=<another folder>"
            )
        cfg.split_file = str(run / "split.json")
    else:  # another folder: split afresh with the run's settings; _augK copies would only ever be training images
        cfg.root, cfg.split_file, cfg.synthetic = str(Path(data_root).expanduser().resolve()), None, None
        cfg.use_aug_copies = False
    cfg.image_size, cfg.policy, cfg.max_side = (model.geometry.get(k) for k in ("image_size", "policy", "max_side"))
    cfg.on_device, cfg.cv = False, None  # a run's fold is its split.json; another folder is scored whole
    if batch_size is not None:
        cfg.batch_size = int(batch_size)
    return cfg, own


MODES = ("training_resolution", "native")


MODE_CONVENTIONS = {
    "training_resolution": "images as training validation saw them (the run's geometry and image size): reproduces val/mIoU",
    "native": "each image at its stored resolution, predicted as python -m poc59.predict does (overlap {overlap}, "
    "flip TTA {tta}), scored against its full-resolution mask: not comparable with val/mIoU",
}


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise EvaluateError(f"unknown split {split!r}: choose split=val, split=test or split=all")


def split_indices(dm: SegmentationDataModule, split: str) -> list[int]:
    """Sample indices of `split`: val / test from the split, or all source images (copies only where no original exists)."""
    check_split(split)
    if split == "all":
        originals = {s.group for s in dm.samples if not s.is_copy}
        return [i for i, s in enumerate(dm.samples) if not s.is_copy or s.group not in originals]
    ids = dm.split[split]
    if not ids:
        raise EvaluateError(
            f"the {split} split of {dm.root} is empty"
            + (
                ": the run held out no test images (train with data.test_fraction=0.1 to have some), or use split=val"
                if split == "test"
                else ""
            )
        )
    index = {s.id: i for i, s in enumerate(dm.samples)}
    return [index[i] for i in ids]


def metadata_groups(dm: SegmentationDataModule, indices: list[int]) -> dict[str, dict[str, list[int]]]:
    """{column: {value: positions in `indices`}} for the metadata.csv columns material / content (by id, else group)."""
    present, rows = metadata_rows(dm.root)
    columns = [c for c in GROUP_COLUMNS if c in present] if rows else []
    groups: dict[str, dict[str, list[int]]] = {c: defaultdict(list) for c in columns}
    for k, i in enumerate(indices):
        sample = dm.samples[i]
        meta = rows.get(sample.id) or rows.get(sample.group) or {}
        for c in columns:
            if meta.get(c):
                groups[c][meta[c]].append(k)
    return {c: dict(sorted(v.items())) for c, v in groups.items()}


def _interval(iv: np.ndarray) -> list[float] | None:
    return None if np.isnan(iv).any() else [float(iv[0]), float(iv[1])]


def group_report(
    per_image: Mapping[str, torch.Tensor | np.ndarray], groups: dict[str, dict[str, list[int]]], names: list[str]
) -> dict:
    """Per metadata group: images, every registered metric of the sum of its images' statistics (`per_image`:
    {key: [N, *shape]}), the split metrics by key and each per-class one as ``per_class_<key>`` by class."""
    out: dict[str, dict] = {}
    for column, values in groups.items():
        out[column] = {}
        for value, rows in values.items():
            s = scores({k: v[rows].sum(0) for k, v in per_image.items()}, names)
            out[column][value] = {
                "num_images": len(rows),
                **{k: v for k, v in s.items() if k != "per_class"},
                **{
                    f"per_class_{m.key}": {n: s["per_class"][n][m.key] for n in names}
                    for m in registry.class_metrics()
                    if m.key in s["per_class"][names[0]]
                },
            }
    return out


def evaluate_run(
    run_dir: Path | None = None,
    ckpt: Path | list | None = None,
    split: str | None = None,
    *,
    run_dirs: list | None = None,
    data_root: str | Path | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    pictures: bool = True,
    worst_k: int = 8,
    mode: str = "training_resolution",
    overlap: float = 0.25,
    tta: bool = False,
    allow_changed_data: bool = False,
) -> dict:
    """Evaluate one checkpoint; writes <out>/metrics.json (and pictures) and returns the metrics dict.

    On the run's own data, files that differ from those the run was trained and validated on (its recorded
    files fingerprint: `data_changes`) are named and refused (EvaluateError) unless `allow_changed_data`,
    which scores them as they are now and records the differences in metrics.json (`data_changed`).

    `split=None` (the default) means val for the run's own data, all for another data.root. `out` defaults to
    <run>/evaluation/<split> (<run>/evaluation/<data folder>-<split> for another data.root; "-native" added
    for mode=native). `mode=native` scores predict's full-resolution output (`overlap`, `tta` as in predict)
    against full-resolution masks, a different number from the training-resolution val/mIoU.

    An ensemble (`ckpt=[...]` or `run_dirs=[...]`, poc59.artifacts.ensemble) is scored on the first member's
    run data; members validated on different images (the folds of a cross-validation) each trained on the
    others' validation images, so they are scored on the test split (the default then) or another folder,
    into <the members' common folder>/ensemble-<their run folders>-evaluation/<split>.
    """
    check_options(split, mode, resamples, level, batch_size)
    if out:
        check_writable(Path(out).expanduser().resolve(), "out", EvaluateError)
    torch.set_flush_denormal(True)  # as training did: the same arithmetic, and 3-10x faster on CPU
    t = open_target(run_dir, ckpt, split, data_root, batch_size, device, run_dirs, allow_changed_data)
    folder = Path(out).expanduser().resolve() if out else _default_out(t, mode)
    if not out:
        check_writable(folder, "out", EvaluateError)  # the run's own folder, before the scoring (it may take long)
    if mode == "native":
        per_image, seconds = score_native(
            t.model, t.dm, t.indices, t.dm.batch_size, t.device, overlap, tta, t.trained_precision
        )
    else:
        per_image, seconds = score_statistics(t.model, t.dm, t.indices, t.dm.batch_size, t.device, t.autocast)
    convention = MODE_CONVENTIONS[mode].format(overlap=overlap, tta=tta)
    metrics, image_miou, ranked = record(
        t, per_image, seconds, (resamples, seed, level), max(0, int(worst_k)), mode, convention
    )
    with writing(folder, "out", EvaluateError):
        write_results(t, metrics, per_image, folder, pictures, image_miou, ranked, worst_k, mode)
    if not t.members:  # a tracked run (<run>/tracking.json) gets these figures and pictures too
        add_to_tracked(
            t.run,
            tracked_figures(metrics, folder.name),
            [folder / "metrics.json", *(folder / rel for rel in metrics["pictures"].values())],
            f"evaluation/{folder.name}",
        )
    return metrics


def write_results(
    t: Target,
    metrics: dict,
    per_image: Mapping[str, torch.Tensor],
    folder: Path,
    pictures: bool,
    image_miou: list[float],
    ranked: list[tuple[float, int]],
    worst_k: int,
    mode: str,
) -> None:
    """The pictures, the per-image statistics and metrics.json into `folder` (metrics.json last: it exists only
    when everything before it was written)."""
    # an earlier evaluation's metrics.json goes first: a write failing midway leaves no record pointing at
    # pictures it no longer has (`writing` removes this attempt's files), and a complete folder has a new one
    (folder / "metrics.json").unlink(missing_ok=True)
    if pictures:
        # the grids show the stored images (cropped to their content); full-resolution maps of mode=native
        # come from predict. The sample covers as many classes as it can; the worst are the worst.
        present = t.dm.presence()[t.indices].numpy()
        sample = covering_sample(present, [t.dm.samples[i].id for i in t.indices], worst_k)
        grids = {"sample": sample, "worst": [p for _, p in ranked]} if mode != "native" else {}
        metrics["pictures"] = draw(
            metrics,
            t.model,
            t.dm,
            t.indices,
            image_miou,
            grids,
            folder,
            lambda chosen: predicted_canvases(t.model, t.dm, chosen, t.dm.batch_size, t.device, t.autocast),
        )
    metrics["folder"] = str(folder)
    metrics["per_image_confusion"] = write_per_image(folder, [t.dm.samples[i].id for i in t.indices], per_image).name
    write_json(folder / "metrics.json", metrics)
    log.info("Metrics: %s", folder / "metrics.json")


def scored_the_best(record: dict, run: Path, best_epoch: int | None) -> tuple[bool, Path]:
    """(whether an evaluation `record` (a metrics.json) scored the run's best checkpoint as it is now, that
    checkpoint): a resume that wrote a new best.ckpt makes the evaluations of the old one another file's.
    `best_epoch` (the summary's) identifies the file for records written before checkpoint identities were."""
    best = best_checkpoint(run)
    return scored_this(record, best, best_epoch), best


def tracked_figures(metrics: dict, name: str) -> dict[str, float]:
    """An evaluation's figures for a tracker, under eval/<name>/: every registered metric of the split and
    its bootstrap interval (`<key>_ci_low`, `<key>_ci_high`), and each per-class metric by class name
    (`<metric name>/<class>`; classes where it is undefined left out)."""
    figures: dict[str, Any] = {}
    for m in registry.split_metrics():
        if isinstance(metrics.get(m.key), int | float):
            figures[m.key] = metrics[m.key]
        if metrics.get(f"{m.key}_ci"):
            figures[f"{m.key}_ci_low"], figures[f"{m.key}_ci_high"] = metrics[f"{m.key}_ci"]
    for m in registry.class_metrics():
        figures.update({f"{m.name}/{n}": row.get(m.key) for n, row in metrics["per_class"].items()})
    return {f"eval/{name}/{k}": float(v) for k, v in figures.items() if v is not None and not math.isnan(float(v))}


PER_IMAGE_FILE = "per_image_confusion.npz"


def write_per_image(folder: Path, ids: list[str], per_image: Mapping[str, torch.Tensor] | torch.Tensor) -> Path:
    """Each image's statistics ({key: [N, *shape]} int64, `ids` in the same order; a bare tensor is the
    confusion matrices [N, C, C], rows target) beside metrics.json, under their registry keys (`confusion`,
    ...): what compare pools the folds of a cross-validation from, and bootstraps over."""
    if not isinstance(per_image, Mapping):
        per_image = {"confusion": per_image}
    arrays = {k: torch.as_tensor(v).to(torch.int64).cpu().numpy() for k, v in per_image.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.array(ids), **arrays)
    return write_bytes(folder / PER_IMAGE_FILE, buf.getvalue())


def read_per_image_statistics(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(ids, {statistic key: [N, *shape] int64}) as `write_per_image` wrote them: the registered statistics
    the file holds (a file written before a statistic was registered lacks it)."""
    with np.load(path, allow_pickle=False) as f:
        return [str(i) for i in f["ids"]], {k: f[k] for k in registry.STATISTICS if k in f.files}


def read_per_image(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, [N, C, C] int64 confusion matrices) as `write_per_image` wrote them."""
    ids, stats = read_per_image_statistics(path)
    return ids, stats["confusion"]


def check_options(split: str | None, mode: str, resamples: int, level: float, batch_size: int | None = None) -> None:
    """Refuse settings that cannot work before any model or image is read."""
    check_split(split)
    if batch_size is not None and int(batch_size) < 1:
        raise EvaluateError(
            f"batch_size={batch_size}: images per forward pass, a whole number >= 1 (e.g. batch_size=8); "
            "leave it out to use the run's"
        )
    if mode not in MODES:
        raise EvaluateError(f"mode={mode}: choose {' or '.join(MODES)} (native: full resolution, as predict runs)")
    if int(resamples) < 1 or not 0.0 < float(level) < 1.0:
        raise EvaluateError(
            f"bootstrap.resamples={resamples}, bootstrap.level={level}: resamples must be >= 1 "
            "and level between 0 and 1 (e.g. bootstrap.level=0.95)"
        )


@dataclass(frozen=True)
class Target:
    """What one evaluation scores: the checkpoint, its run, the model on its device, the data and the images."""

    ckpt: Path
    run: Path | None
    device: torch.device
    model: TrainedModel
    dm: SegmentationDataModule
    own: bool  # the run's own data (its split applies)
    split: str
    indices: list[int]
    trained_precision: str | None  # the run's trainer.precision
    precision: str
    autocast: Any
    members: list[Path] | None = None  # an ensemble's checkpoints (`ckpt` is the first)
    data_changed: dict | None = None  # the run's data files changed since training, scored as asked (data_changes)


def open_target(
    run_dir: Path | None,
    ckpt: Path | None,
    split: str | None,
    data_root: str | Path | None,
    batch_size: int | None,
    device: str,
    run_dirs: list | None = None,
    allow_changed_data: bool = False,
) -> Target:
    """Load the checkpoint (or ensemble) and the data it is scored on; refuse data with other classes than
    the model's, an ensemble of folds on the images its members validated on, and the run's own data changed
    since training (unless `allow_changed_data`)."""
    dev = resolve_device(device)
    members = members_of(ckpt, run_dirs)
    if members is None:
        ckpt_path, run = locate(run_dir, ckpt)
        model = load_model(ckpt_path, dev)
    else:
        model = load_ensemble(members, dev)
        ckpt_path, run = members[0], None
    run = run or model.run_dir
    cfg, own = data_config(model, run, data_root, batch_size)
    if members is not None and own:
        split = _ensemble_split(members, split)
    split = split or ("val" if own else "all")
    # The run's own split.json is set after the data module is built, as training sets a resumed run's: a split
    # that no longer fits the folder is then told as the run's (point data.root at its data), not as a
    # data.split_file setting, which evaluate has no key for.
    dm: SegmentationDataModule = instantiate(OmegaConf.merge(cfg, {"split_file": None}))
    dm.split_file = Path(cfg.split_file).resolve() if cfg.get("split_file") else None
    dm.prepare_data()
    dm.setup("validate")
    changed = data_changes(dm, run) if own and run is not None else None
    if changed is not None:
        check_changes(changed, dm, run, allow_changed_data)
    classes, names = model.classes, list(model.classes.names)
    if dm.classes.num_classes != classes.num_classes:
        raise EvaluateError(
            f"{dm.root} has {dm.classes.num_classes} classes ({', '.join(dm.classes.names)}) but the model predicts "
            f"{classes.num_classes} ({', '.join(names)}): evaluate on a folder with the model's classes (ROOT/classes.json)"
        )
    if dm.classes.names != classes.names:
        log.warning("%s names its classes %s; reporting the model's names %s", dm.root, list(dm.classes.names), names)
    indices = split_indices(dm, split)
    trained = OmegaConf.load(run / "config.yaml").trainer.get("precision") if run else None
    precision, autocast = precision_for(dev, trained)
    log.info(
        "Evaluating %s on %d %s images of %s (%s, %d px, batch %d, %s, %s)",
        ckpt_path,
        len(indices),
        split,
        dm.root,
        dm.policy,
        dm.image_size,
        dm.batch_size,
        dev,
        precision,
    )
    return Target(ckpt_path, run, dev, model, dm, own, split, indices, trained, precision, autocast, members, changed)


SHOWN = 5  # files a message names of each kind (all of them in metrics.json)


def data_changes(dm: SegmentationDataModule, run: Path) -> dict | None:
    """How the run's data files now differ from those it was trained and validated on, or None when they do not
    (or the run recorded no fingerprint: still training, or from before fingerprints).

    The run recorded its files' fingerprint (summary.json provenance.data.files_fingerprint: every file's name,
    size and modification time, and the geometry) and its images (split.json, written when training started).
    A different fingerprint now names the files modified after split.json was written (a file copied in with
    its old time is not named: `check_changes` then only warns). Images added to the folder or gone from it
    stop the data layer before this (its split check names them)."""
    try:
        recorded = json.loads((run / "summary.json").read_text())["provenance"]["data"]["files_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    now = dm.describe()["files_fingerprint"]
    if recorded is None or now == recorded:
        return None
    since = (run / "split.json").stat().st_mtime_ns
    modified = sorted(
        str(path) for s in dm.samples for path in (s.image, s.mask) if path.exists() and path.stat().st_mtime_ns > since
    )
    return {
        "files_fingerprint_then": recorded,
        "files_fingerprint_now": now,
        "modified_after": datetime.fromtimestamp(since / 1e9, timezone.utc).isoformat(timespec="seconds"),
        "modified": modified,
    }


def check_changes(changed: dict, dm: SegmentationDataModule, run: Path, allow: bool) -> None:
    """EvaluateError naming the run's data files modified since training, unless `allow` (then a warning).

    A different fingerprint with no file modified since is only a warning: the fingerprint also changes with
    poc59's preload cache format (a run trained by another version), and a file replaced by one with an older
    modification time cannot be told from that."""

    def some(items: list[str]) -> str:
        return ", ".join(items[:SHOWN]) + (f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else "")

    modified = changed["modified"]
    fingerprints = f"files fingerprint {changed['files_fingerprint_then']} then, {changed['files_fingerprint_now']} now"
    if not modified:
        log.warning(
            "%s: %s, but no file was modified after %s (a run of another poc59 version, whose cache format "
            "differs, or a file replaced by an older one): scoring; metrics.json records it",
            dm.root,
            fingerprints,
            changed["modified_after"],
        )
        return
    found = (
        f"{dm.root} differs from the files {run} was trained and validated on ({fingerprints}): "
        f"modified after {changed['modified_after']}: {some(modified)}"
    )
    if allow:
        log.warning("%s. Scoring the files as they are now (allow_changed_data=true; recorded in metrics.json)", found)
        return
    raise EvaluateError(
        f"{found}. Its scores would not be the run's: restore those files, or pass allow_changed_data=true to "
        "score them as they are now (metrics.json records the differences)"
    )


def _ensemble_split(members: list[Path], split: str | None) -> str | None:
    """test (the default) for members validated on different images; EvaluateError for their val or all."""
    fingerprints = set()
    for m in members:
        split_file = m.parent.parent / "split.json"
        fingerprints.add(json.loads(split_file.read_text())["fingerprint"] if split_file.is_file() else str(m))
    if len(fingerprints) == 1:
        return split
    if split in (None, "test"):
        return "test"
    raise EvaluateError(
        f"split={split}: the ensemble's members were validated on different images (the folds of a "
        "cross-validation), so each trained on images another one validates on. Score the ensemble on the "
        "held-out test split (split=test; data.test_fraction when training) or on data.root=<another folder>"
    )


def record(
    t: Target,
    per_image: Mapping[str, torch.Tensor],
    seconds: float,
    bootstrap_options: tuple[int, int, float],
    worst_k: int,
    mode: str,
    mode_convention: str,
) -> tuple[dict, list[float], list[tuple[float, int]]]:
    """(the metrics.json record, each image's headline metric (mIoU), the `worst_k` worst (value, position))
    of one scoring from its per-image statistics ({key: [N, *shape]}); `bootstrap_options` is (resamples,
    seed, level) of the intervals, given to every registered metric as ``<key>_ci``."""
    names = list(t.model.classes.names)
    s = scores({k: v.sum(0) for k, v in per_image.items()}, names)
    boot = bootstrap(per_image, *bootstrap_options)
    intervals = boot.pop("intervals")
    images = (
        (per_image["confusion"].sum(2) > 0).sum(0).tolist()
    )  # images whose target holds the class: 1 or 2 = fragile
    per_class = {}
    for c, n in enumerate(names):
        row: dict[str, Any] = {}
        for key, value in s["per_class"][n].items():
            row[key] = value
            if key in intervals:  # a per-class metric: its interval beside it
                row[f"{key}_ci"] = _interval(intervals[key][c])
        per_class[n] = {**row, "images": images[c]}
    head = registry.headline()
    image_miou = head.of(per_image).tolist()
    ranked = sorted((m, p) for p, m in enumerate(image_miou) if not math.isnan(m))[:worst_k]  # worst first
    ms = 1000 * seconds / len(t.indices)
    split = {}
    for m in registry.split_metrics():  # the registered metrics (poc59.metrics), each with its interval
        if m.key in s:
            split[m.key] = s[m.key]
            split[f"{m.key}_ci"] = _interval(intervals[m.key])
    metrics = {
        "checkpoint": str(t.ckpt),
        "checkpoint_identity": None if t.members else checkpoint_identity(t.ckpt),  # which file was scored
        "ensemble": t.model.card.provenance.get("ensemble") if t.members else None,
        "checkpoint_epoch": t.model.extra.get("epoch"),
        "run_dir": str(t.run) if t.run else None,
        "split": t.split,
        "data_root": str(t.dm.root),
        "mode": mode,
        "mode_convention": mode_convention,
        "image_size": t.dm.image_size,
        "geometry": dict(t.model.geometry),
        "split_fingerprint": t.dm.split["fingerprint"],
        "files_fingerprint": t.dm.describe()["files_fingerprint"],
        "data_changed": t.data_changed,
        "num_images": len(t.indices),
        "classes": t.model.classes.to_dict(),
        "metric_convention": metric_convention(),
        **split,
        "miou_legacy_convention": LEGACY_CONVENTION,
        "metrics": {
            m.key: {"name": m.name, "label": m.label, "meaning": m.meaning, "per_class": m.per_class}
            for m in registry.METRICS.values()
            if m.available(per_image)
        },
        "per_class": per_class,
        "bootstrap": boot,
        "groups": group_report(per_image, metadata_groups(t.dm, t.indices), names),
        "speed": {
            "ms_per_image": ms,
            "images_per_s": 1000 / ms if ms > 0 else None,
            "device": str(t.device),
            "cpu_threads": torch.get_num_threads(),
            "batch_size": t.dm.batch_size,
            "precision": t.precision,
            "convention": NATIVE_SPEED_CONVENTION if mode == "native" else SPEED_CONVENTION,
        },
        "worst_images": [{"id": t.dm.samples[t.indices[p]].id, head.key: float(m)} for m, p in ranked],
        "confusion_matrix": per_image["confusion"].sum(0).tolist(),
        "pictures": {},
    }
    return metrics, image_miou, ranked


def _default_out(t: Target, mode: str) -> Path:
    if t.members:
        base = Path(os.path.commonpath([m.parent for m in t.members])) / f"{ensemble_name(t.members)}-evaluation"
    else:
        base = t.run / "evaluation" if t.run else t.ckpt.parent / f"{t.ckpt.stem}-evaluation"
    split, root = t.split, t.dm.root
    name = split if t.own else f"{root.name}-{split}"
    return base / (f"{name}-native" if mode == "native" else name)
