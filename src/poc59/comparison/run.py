"""Runs of a sweep (or a list of run folders) grouped into configurations and ranked: `compare(...)`.

Runs that differ only in their seed, where they ran or how fast (`poc59.training.keys`) are one configuration
(n, mean, std, range); so are the folds of one cross-validation, ranked by their pooled out-of-fold score
(poc59.comparison.cross_validation). Runs of different splits (or fold partitions) or class tables are never
ranked together. `python -m poc59.compare` is its command.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from poc59.analysis.pictures import grouped_iou_bars_figure
from poc59.comparison.cross_validation import (
    FOLD_STD_CONVENTION,
    POOLED_CONVENTION,
    cross_validate,
    fold_record,
    partition_key,
)
from poc59.comparison.report import write_reports
from poc59.core.classes import ClassTable
from poc59.core.config import SettingError, flatten
from poc59.core.outputs import check_writable, refuse_existing, writing
from poc59.core.progress import Steps
from poc59.evaluation.run import PER_IMAGE_FILE, EvaluateError, evaluate_run, scored_the_best
from poc59.metrics import registry
from poc59.tracking.search import SEARCH_RESULTS
from poc59.tracking.tracked import add_to_tracked
from poc59.training import keys
from poc59.training.sweeps import Job, find_sweep, inspect_job, sweep_status

log = logging.getLogger("poc59.compare")


METRICS = Path("evaluation") / "val" / "metrics.json"
OUTPUTS = ("comparison.md", "comparison.csv", "comparison.json", "per_class_iou.png")  # what compare writes in out


# What differs between runs of one configuration: the seed (and the split or fold), where it ran, how fast
# (the one table of `poc59.training.keys`; resume reads the same).
REPEATS_MAY_DIFFER = (keys.REPEAT, keys.LOCATION, keys.SPEED)
PATH_START = ("/", "~", "./", "../")  # a value that is a path counts by its last part: the same data or weights
# in another place (another clone, cluster or cache) make the same configuration


STD_CONVENTION = "sample standard deviation over seeds (n - 1)"
BOOTSTRAP = {"resamples": 1000, "seed": 0, "level": 0.95}  # the pooled interval, as evaluate's defaults


class CompareError(ValueError):
    """Bad arguments, or runs that cannot be ranked together (the message names them and the fix)."""


@dataclass
class Run:
    """One run folder as compare sees it."""

    dir: str
    status: str  # finished | failed | unfinished
    name: str = ""  # as tables show it: the job number in a sweep, else the folder
    detail: str = ""  # sweep_status's state and the failure's cause (sweeps.cause), for runs that did not finish
    seed: int | None = None
    encoder: str | None = None
    family: str | None = None
    decoder: str | None = None
    parameters: int | None = None
    val_miou: float | None = None
    interval: list[float] | None = None  # bootstrap CI of val mIoU from metrics.json
    per_class: dict[str, float | None] = field(default_factory=dict)
    per_class_interval: dict[str, list[float] | None] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)  # every registered metric at the best epoch, by key
    monitor: str | None = None  # the metric that picked its best epoch (its `monitor` setting; older runs: val/mIoU)
    score: float | None = None  # the ranking metric (compare's monitor) at its best epoch
    score_interval: list[float] | None = None  # its bootstrap interval, from metrics.json
    train_images_per_s: float | None = None
    peak_memory_bytes: int | None = None
    wall_time_s: float | None = None
    config: str = ""  # this run's configuration without seed, locations and speed (`config_key`)
    summary: dict = field(default_factory=dict, repr=False)
    metrics: dict | None = field(default=None, repr=False)


def config_key(config: dict, run_dir: Path) -> str:
    """The run's resolved config without the keys repeats may differ in (`REPEATS_MAY_DIFFER`) and values naming
    its own folder, paths by their last part (PATH_START), as canonical JSON: runs with one key are repeats of
    one configuration."""
    homes = {str(run_dir), str((config.get("paths") or {}).get("run_dir") or run_dir)}  # now, and when it ran
    flat = flatten(keys.current(config))  # a run recorded before the model group, in today's layout
    kept = {
        k: Path(v).name if isinstance(v, str) and v.startswith(PATH_START) else v
        for k, v in flat.items()
        if keys.kind(k, flat) not in REPEATS_MAY_DIFFER and not (isinstance(v, str) and any(h in v for h in homes))
    }
    return json.dumps(kept, sort_keys=True, default=str)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CompareError(f"{path}: cannot be read as JSON ({err}); re-run the command that writes it") from None


def _finite(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _load_metrics(run: Run, evaluate: bool) -> None:
    """The run's val metrics.json (evaluating it first if asked, when there is none, when a fold lacks its
    per-image matrices, or when it scored another checkpoint than the run's best now: a resumed run's new
    best.ckpt); the intervals if it matches the run."""
    path = Path(run.dir) / METRICS
    epoch = run.summary.get("best_epoch")
    current, best = scored_the_best(_read_json(path), Path(run.dir), epoch) if path.exists() else (False, None)
    pooled = fold_record(run.summary) is not None and not (path.parent / PER_IMAGE_FILE).exists()
    stale = path.exists() and not current
    if (not path.exists() or pooled or stale) and evaluate:  # a fold needs its per-image matrices to be pooled
        why = f"its evaluation scored another checkpoint than {best} now" if stale else "for the interval"
        log.info("Evaluating %s (its best checkpoint on its validation split): %s", run.dir, why)
        try:
            evaluate_run(run_dir=Path(run.dir), pictures=False)  # the numbers; `python -m poc59.evaluate` draws
        except EvaluateError as err:  # its advice names evaluate's keys, which compare does not take
            raise CompareError(
                f"{run.dir}: cannot be evaluated for its interval: {err}\nThat advice is for "
                f"`python -m poc59.evaluate run_dir={run.dir}` (its keys, e.g. allow_changed_data=true): run it "
                "there, then compare again; or compare with evaluate=false (val mIoU without intervals)"
            ) from None
    if not path.exists():
        return
    m = _read_json(path)
    current, best = scored_the_best(m, Path(run.dir), epoch)
    if not current:
        log.warning(
            "%s scored %s (epoch %s), not the run's best checkpoint now (%s, epoch %s): its interval is not used; "
            "python -m poc59.evaluate run_dir=%s (or compare with evaluate=true) scores the new one",
            path,
            m.get("checkpoint"),
            m.get("checkpoint_epoch"),
            best,
            epoch,
            run.dir,
        )
        return
    fingerprint = run.summary.get("provenance", {}).get("data", {}).get("split_fingerprint")
    if m.get("split") != "val" or m.get("split_fingerprint") != fingerprint:
        log.warning(
            "%s: evaluated on split %s (%s), not the run's validation split %s: its interval is not used",
            path,
            m.get("split"),
            m.get("split_fingerprint"),
            fingerprint,
        )
        return
    if run.val_miou is not None and m.get("miou") is not None and abs(m["miou"] - run.val_miou) > 1e-4:
        log.warning(
            "%s: evaluation gives mIoU %.5f, training recorded %.5f for the same checkpoint and split",
            path,
            m["miou"],
            run.val_miou,
        )
    run.metrics = m
    run.interval = m.get("miou_ci")
    run.per_class_interval = {n: (c or {}).get("iou_ci") for n, c in (m.get("per_class") or {}).items()}


def read_run(run_dir: Path, name: str, status: str, detail: str, evaluate: bool) -> Run:
    """A Run from its folder: summary.json and config.yaml for a finished one, the status for others."""
    run = Run(dir=str(run_dir), name=name, status=status, detail=detail)
    if status != "finished":
        return run
    s = run.summary = _read_json(run_dir / "summary.json")
    cfg_path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CompareError(
            f"{cfg_path}: cannot be read ({err}); every finished run folder has its config.yaml"
        ) from None
    run.config = config_key(config, run_dir)
    run.seed = s.get("provenance", {}).get("seed", config.get("seed"))
    run.encoder, run.family, run.decoder, run.parameters = (
        s.get("encoder"),
        s.get("family"),
        s.get("decoder"),
        s.get("parameters"),
    )
    run.val_miou = _finite(s.get("val/mIoU"))
    run.per_class = {n: _finite(v) for n, v in (s.get("val/IoU") or {}).items()}
    run.scores = {m.key: s[f"val/{m.name}"] for m in registry.METRICS.values() if f"val/{m.name}" in s}
    run.monitor = s.get("monitor") or f"val/{registry.headline().name}"
    run.train_images_per_s = _finite(s.get("train_images_per_s"))
    run.peak_memory_bytes = (s.get("peak_memory") or {}).get("bytes")
    run.wall_time_s = _finite(s.get("wall_time_s"))
    _load_metrics(run, evaluate)
    return run


def _state(job: dict) -> tuple[str, str]:
    """compare's status (finished | failed | unfinished) and a one-line detail from a sweep_status job."""
    if job["status"] == "finished":
        return "finished", ""
    detail = "pending: not started" if job["status"] == "pending" else f"{job['status']}: no summary.json"
    detail += f"; {job['cause']}" if job.get("cause") else ""
    return ("failed" if job["status"] == "failed" else "unfinished"), detail


def collect(sweep: str | Path | None = None, runs: list[str | Path] | None = None, evaluate: bool = True) -> list[Run]:
    """Every run of the sweep (or the given folders), finished or not, in job order."""
    if (sweep is None) == (not runs):
        raise CompareError("give either sweep=DIR or runs=[DIR,...] (python -m poc59.compare --help)")
    if sweep is not None:
        report = sweep_status(sweep)
        with Steps(log, "compare: reading runs", len(report["jobs"]), "runs") as steps:
            return [_sweep_run(job, Path(report["sweep_dir"]), evaluate, steps) for job in report["jobs"]]
    folders = [Path(d).expanduser().resolve() for d in runs or []]
    for d in folders:
        if not d.is_dir():
            raise CompareError(f"{d}: no such run folder")
    out = []
    with Steps(log, "compare: reading runs", len(folders), "runs") as steps:
        for num, d in enumerate(folders):
            job = inspect_job(Job(num=num), d, None, None, lines=5).as_dict()
            status, detail = _state(job)
            out.append(read_run(d, str(d), status, detail, evaluate))
            steps.advance(str(d))
    return out


def _sweep_run(job: dict, sweep_dir: Path, evaluate: bool, steps: Steps) -> Run:
    """One job of a sweep as a Run (read, and evaluated if asked, when it has a folder)."""
    status, detail = _state(job)
    name = str(job["num"])
    if job["dir"] is None:
        run = Run(
            dir=str(sweep_dir / name), name=name, status=status, detail=f"{detail} ({' '.join(job['overrides'])})"
        )
    else:
        run = read_run(Path(job["dir"]), name, status, detail, evaluate)
    steps.advance(f"#{name} {status}")
    return run


def _fix_hint(reference: Run) -> str:
    return (
        f"train the differing runs again with data.split_file={Path(reference.dir) / 'split.json'} "
        "(data.seed follows seed: a seed sweep keeps one split with data.split_file, or with data.seed=0)"
    )


def check_comparable(runs: list[Run]) -> ClassTable:
    """The shared class table of the finished runs; CompareError if splits or class tables differ."""
    finished = [r for r in runs if r.status == "finished"]
    if not finished:
        raise CompareError(
            "no finished run to compare (no summary.json in any of them): " + ", ".join(r.dir for r in runs)
        )
    for what, key in (
        ("split", lambda r: partition_key(r.summary)),
        ("class table", lambda r: json.dumps(r.summary.get("classes"), sort_keys=True)),
    ):
        by: dict[str, list[Run]] = defaultdict(list)
        for r in finished:
            by[key(r)].append(r)
        if len(by) > 1:
            groups = sorted(by.values(), key=len, reverse=True)
            ref = groups[0]
            lines = [
                f"refusing to rank: the runs were not validated on the same {what}; their val mIoU is not comparable."
            ]
            for g in groups:
                label = (
                    f"split {key(g[0])}"
                    if what == "split"
                    else f"classes {g[0].summary.get('classes', {}).get('names')}"
                )
                lines.append(f"  {label}: " + ", ".join(r.dir for r in g))
            others = [r.dir for g in groups[1:] for r in g]
            lines.append(f"differing from {ref[0].dir}: " + ", ".join(others))
            lines.append(
                "fix: "
                + (
                    _fix_hint(ref[0])
                    if what == "split"
                    else "compare only runs trained on the same dataset and classes.json"
                )
            )
            raise CompareError("\n".join(lines))
    return ClassTable.from_dict(finished[0].summary["classes"])


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _span(points: list[tuple[float, list[float] | None]]) -> list[float] | None:
    """[lo, hi] over the values and their intervals."""
    if not points:
        return None
    return [min(iv[0] if iv else v for v, iv in points), max(iv[1] if iv else v for v, iv in points)]


def _monitors(runs: list[Run]) -> dict[str, list[str]]:
    """{monitor: the finished runs that picked their best epoch by it}, in run order."""
    used: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        if r.status == "finished":
            used[r.monitor].append(r.name or r.dir)
    return used


def _checked_monitor(monitor: str) -> str:
    try:
        return registry.check_monitor(monitor)
    except SettingError as err:
        raise CompareError(str(err)) from None


def ranking_monitor(runs: list[Run], monitor: str | None = None) -> str:
    """The validation metric compare ranks by: `monitor` if given, else the one every finished run picked its
    best epoch by (their `monitor` setting); runs that picked theirs by different metrics need `monitor=`."""
    if monitor is not None:
        return _checked_monitor(monitor)
    used = _monitors(runs)
    if len(used) > 1:
        which = "; ".join(f"{m}: {', '.join(names)}" for m, names in used.items())
        raise CompareError(
            f"the runs picked their best epochs by different metrics ({which}): rank them all by one, e.g. "
            f"monitor={next(iter(used))} (each run's value at its own best epoch)"
        )
    return next(iter(used), f"val/{registry.headline().name}")


def _score(run: Run, monitor: str) -> None:
    """run.score and run.score_interval: `monitor` at the run's best epoch, and its interval from metrics.json."""
    run.score = _finite(run.summary.get(monitor))
    key = registry.monitored(monitor).key
    run.score_interval = (run.metrics or {}).get(f"{key}_ci") if run.score is not None else None


def configurations(runs: list[Run], monitor: str | None = None) -> list[dict]:
    """Finished runs grouped by configuration (seed repeats, folds together), ranked by their score: the mean
    over seeds of `monitor` (default val/mIoU) at each run's best epoch, or for a cross-validation its pooled
    out-of-fold value."""
    monitor = registry.check_monitor(monitor)
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.status == "finished":
            _score(r, monitor)
            groups[r.config].append(r)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: (r.seed is None, r.seed))
        values = [r.val_miou for r in members if r.val_miou is not None]
        first = members[0]
        n = len(values)
        if len(members) == 1:
            interval = first.interval
            kind = _interval_kind(first) if interval else None
        else:
            interval = _span([(r.val_miou, r.interval) for r in members if r.val_miou is not None])
            with_ci = all(r.interval for r in members)
            kind = "range over seeds" + (" and their bootstrap intervals" if with_ci else " (no bootstrap intervals)")
        names = list(first.per_class)
        per_class_iv = {}
        for name in names:
            pts = [
                (r.per_class[name], r.per_class_interval.get(name))
                for r in members
                if r.per_class.get(name) is not None
            ]
            per_class_iv[name] = pts[0][1] if len(members) == 1 and pts else _span(pts) if len(pts) > 1 else None
        out.append(
            {
                "label": first.encoder or Path(first.dir).name,
                "encoder": first.encoder,
                "family": first.family,
                "decoder": first.decoder,
                "parameters": first.parameters,
                "n": n,
                "seeds": [r.seed for r in members],
                "runs": [r.dir for r in members],
                "val_mIoU": {
                    "mean": statistics.fmean(values) if values else None,
                    "std": statistics.stdev(values) if n >= 2 else None,
                    "min": min(values) if values else None,
                    "max": max(values) if values else None,
                    "values": values,
                },
                "interval": interval,
                "interval_kind": kind,
                "per_class_iou": {name: _mean([r.per_class.get(name) for r in members]) for name in names},
                "per_class_interval": per_class_iv,
                **_registered(members, names),
                "train_images_per_s": _mean([r.train_images_per_s for r in members]),
                "peak_memory_bytes": max(
                    (r.peak_memory_bytes for r in members if r.peak_memory_bytes is not None), default=None
                ),
                "wall_time_s": _mean([r.wall_time_s for r in members]),
                "status": "finished",
                "config": first.config,
                "ranked_by": monitor,
                "score": statistics.fmean(scores)
                if (scores := [r.score for r in members if r.score is not None])
                else None,
                "score_interval": (
                    first.score_interval
                    if len(members) == 1
                    else _span([(r.score, r.score_interval) for r in members if r.score is not None])
                ),
                "cv": None,
            }
        )
        if fold_record(first.summary) is not None:
            _as_cross_validation(out[-1], members, names, registry.monitored(monitor).key)
    _disambiguate(out)
    out.sort(key=lambda c: -1.0 if c["score"] is None else c["score"], reverse=True)
    for rank, c in enumerate(out, 1):
        c["rank"] = rank if c["score"] is not None else None
        c["best"] = rank == 1 and c["score"] is not None
    return out


def _as_cross_validation(c: dict, members: list[Run], names: list[str], key: str) -> None:
    """A configuration of folds: over-fold statistics, and the pooled score of metric `key` (its rank and
    interval), the pooled IoU per class."""
    cv = c["cv"] = cross_validate(members, names, BOOTSTRAP)
    c["folds"], c["pooled_miou"], c["pooled_interval"] = cv["folds"], cv["pooled_miou"], cv["pooled_interval"]
    folds = [f["val_mIoU"] for f in cv["per_fold"] if f["val_mIoU"] is not None]
    c["val_mIoU"] = {
        "mean": cv["fold_mean"],
        "std": cv["fold_std"],
        "min": min(folds, default=None),
        "max": max(folds, default=None),
        "values": folds,
        "over": "folds",
    }
    c["score"] = (cv.get("pooled") or {}).get(key)
    c["score_interval"] = (cv.get("pooled_intervals") or {}).get(key)
    c["interval"] = cv["pooled_interval"]
    c["interval_kind"] = cv.get("pooled_interval_kind")
    if cv["pooled_miou"] is not None:
        c["per_class_iou"] = cv["pooled_per_class_iou"]
        c["per_class_interval"] = cv["pooled_per_class_interval"]
        for m in registry.METRICS.values():
            if m.key in cv.get("pooled", {}):
                (c["per_class_metrics"] if m.per_class else c["metrics"])[m.key] = cv["pooled"][m.key]


def _registered(members: list[Run], names: list[str]) -> dict:
    """{"metrics": {split metric key: mean over the runs}, "per_class_metrics": {per-class metric key: {class:
    mean}}} of every registered metric the runs' summaries hold (at each run's best epoch)."""
    split, per_class = {}, {}
    for m in registry.METRICS.values():
        if not any(m.key in r.scores for r in members):
            continue
        if m.per_class:
            per_class[m.key] = {n: _mean([_finite((r.scores.get(m.key) or {}).get(n)) for r in members]) for n in names}
        else:
            split[m.key] = _mean([_finite(r.scores.get(m.key)) for r in members])
    return {"metrics": split, "per_class_metrics": per_class}


def _interval_kind(run: Run) -> str:
    b = (run.metrics or {}).get("bootstrap") or {}
    level = f"{100 * b['level']:.0f} % " if b.get("level") else ""
    unit = str(b.get("unit") or "image").rstrip("s") + "s"
    return f"{level}bootstrap interval over validation {unit}" + (
        f" ({b['resamples']} resamples)" if b.get("resamples") else ""
    )


def _disambiguate(configs: list[dict]) -> None:
    """Labels unique: the encoder, then + decoder, then the config keys that set it apart."""

    def clashes() -> dict[str, list[dict]]:
        by: dict[str, list[dict]] = defaultdict(list)
        for c in configs:
            by[c["label"]].append(c)
        return {k: v for k, v in by.items() if len(v) > 1}

    for same in clashes().values():
        for c in same:
            c["label"] = f"{c['encoder']} + {c['decoder']}"
    for same in clashes().values():
        flats = [json.loads(c["config"]) for c in same]
        differing = sorted({k for f in flats for k in f if len({json.dumps(g.get(k)) for g in flats}) > 1})
        for c, f in zip(same, flats):
            c["label"] += " (" + ", ".join(f"{k}={f.get(k)}" for k in differing[:3]) + ")"


def lead(configs: list[dict]) -> dict:
    """Is the best's lead over the runner-up (in the score they are ranked by) larger than their intervals?"""
    ranked = [c for c in configs if c["rank"] is not None]
    if len(ranked) < 2:
        return {"verdict": "Only one configuration finished: nothing to rank it against", "larger_than_intervals": None}
    best, runner = ranked[0], ranked[1]
    diff = best["score"] - runner["score"]
    out = {"best": best["label"], "runner_up": runner["label"], "difference": diff}
    missing = [c["label"] for c in (best, runner) if not c["score_interval"]]
    if missing:
        out["larger_than_intervals"] = None
        out["verdict"] = (
            f"Lead of {100 * diff:.2f} points not assessed: no interval for {', '.join(missing)} "
            "(python -m poc59.evaluate run_dir=..., or compare with evaluate=true)"
        )
    elif best["score_interval"][0] > runner["score_interval"][1]:
        out["larger_than_intervals"] = True
        out["verdict"] = f"Lead of {100 * diff:.2f} points is larger than the intervals (they do not overlap)"
    else:
        out["larger_than_intervals"] = False
        out["verdict"] = f"Lead within uncertainty: {100 * diff:.2f} points, and the intervals overlap"
    return out


def conventions(runs: list[Run]) -> dict:
    """What each number means, from the runs' own summaries (a warning where runs disagree)."""
    finished = [r for r in runs if r.status == "finished"]

    def one(values: list[Any], what: str) -> Any:
        distinct = list(dict.fromkeys(v for v in values if v is not None))
        if len(distinct) > 1:
            log.warning("the runs differ in their %s: %s", what, distinct)
            return " | ".join(str(v) for v in distinct)
        return distinct[0] if distinct else None

    cv = {}
    if any(fold_record(r.summary) for r in finished):
        cv = {
            "pooled_miou": POOLED_CONVENTION + "; a cross-validated configuration is ranked by it",
            "fold_std": FOLD_STD_CONVENTION,
        }
    return cv | {
        "val_mIoU": "best val/mIoU of each run (best.ckpt, the run's validation split); "
        + str(one([r.summary.get("metric_convention") for r in finished], "mIoU convention")),
        "std": STD_CONVENTION,
        "train_images_per_s": str(
            one([r.summary.get("train_images_per_s_convention") for r in finished], "images/s convention")
        )
        + "; mean over seeds",
        "peak_memory": str(one([(r.summary.get("peak_memory") or {}).get("kind") for r in finished], "memory kind"))
        + "; max over seeds",
        "wall_time_s": "wall time of the training run, seconds; mean over seeds",
        "per_class_iou": "best val IoU per class (absent classes: null); mean over seeds",
    }


def compare(
    sweep: str | Path | None = None,
    runs: list[str | Path] | None = None,
    out: str | Path | None = None,
    evaluate: bool = True,
    overwrite: bool = False,
    monitor: str | None = None,
) -> dict:
    """Compare the runs, write comparison.{md,csv,json} and per_class_iou.png into `out`; return the result.
    Configurations are ranked by `monitor` (``val/<metric>``; default: the metric the runs picked their best
    epochs by, their own `monitor` setting).

    An `out` that already holds a comparison is refused before any run is read unless `overwrite` (the rule
    of every command that writes results: poc59.core.outputs), as is a folder that cannot be written."""
    if out is None:
        out = (
            (Path(sweep) / "comparison")
            if sweep is not None
            else Path("outputs") / "comparisons" / time.strftime("%Y-%m-%d_%H-%M-%S")
        )
    out = Path(out)
    earlier = refuse_existing(out, OUTPUTS, overwrite, "out", CompareError)
    check_writable(out, "out", CompareError)
    if monitor is not None:
        monitor = _checked_monitor(monitor)  # a misspelt metric is refused before any run is read
    all_runs = collect(sweep, runs, evaluate)
    classes = check_comparable(all_runs)
    monitor = ranking_monitor(all_runs, monitor)
    configs = configurations(all_runs, monitor)
    # a failed write leaves none of this attempt's files, nor an earlier comparison's beside them: exit 2
    with writing(out, "out", CompareError):
        for path in earlier:  # overwrite=true: replaced as a whole, never mixed with this comparison's files
            path.unlink(missing_ok=True)
        chart = grouped_iou_bars_figure(
            {c["label"]: c["per_class_iou"] for c in configs},
            classes,
            out / "per_class_iou.png",
            "Best val IoU per class, by configuration (mean over seeds)",
            intervals={c["label"]: c["per_class_interval"] for c in configs},
            interval_label="bootstrap interval of one run, or range over seeds",
            legend_title="configuration",
        )
        conv = conventions(all_runs)
        conv["score"] = (
            f"{monitor}, the metric the configurations are ranked by ("
            + ("the runs' `monitor` setting" if list(_monitors(all_runs)) == [monitor] else "compare's monitor=")
            + "): the mean over seeds of each run's value at its best epoch; for a cross-validation, pooled over "
            "the out-of-fold images"
        )
        kinds = list(dict.fromkeys(c["interval_kind"] for c in configs if c["interval_kind"]))
        conv["interval"] = (
            "; ".join(kinds) or "none: no evaluation/val/metrics.json (python -m poc59.evaluate, or evaluate=true)"
        )
        result = {
            "sweep": str(sweep) if sweep is not None else None,
            "monitor": monitor,
            "classes": classes.to_dict(),
            "conventions": conv,
            "best": next((c["label"] for c in configs if c["best"]), None),
            "lead": lead(configs),
            "configurations": configs,
            "runs": [
                {k: v for k, v in asdict(r).items() if k not in ("summary", "metrics", "config")} for r in all_runs
            ],
            "chart": str(chart),
        }
        search = search_results(Path(sweep)) if sweep is not None else None
        if search is not None:
            result["search"] = search
        paths = write_reports(result, out)
    for c in configs:  # every tracked run compared gets the comparison, and its configuration's score
        figures = {f"compare/{out.name}/score": c.get("score"), f"compare/{out.name}/best": float(bool(c["best"]))}
        for run in c["runs"]:
            add_to_tracked(run, figures, [*paths.values(), Path(chart)], f"comparison/{out.name}")
    return result


def search_results(sweep: Path) -> dict | None:
    """An Optuna search's outcome (hydra/sweeper=optuna writes search_results.yaml in its sweep folder)."""
    found = find_sweep(sweep) / SEARCH_RESULTS
    return yaml.safe_load(found.read_text()) if found.is_file() else None
