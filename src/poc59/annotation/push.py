"""`annotate push`: a model's predictions on unlabelled scans, put in front of an annotator in Label Studio.

Every setting is checked before anything is written or uploaded: the scans, the model, the ranking file, the
server (its address, the token) and the project (reused when its BrushLabels are the model's class table,
refused when they differ). Then each scan is predicted and ranked (`poc59.annotation.ranking`), the project is
created when it is new, and the scans are **uploaded** to it (Label Studio's file import: the server need not
share a disk with this machine) most useful first, so that Label Studio's default sequential order shows them
in that order; each task gets poc59's prediction as a pre-annotation: one BrushLabels region per predicted
class (Label Studio's brush RLE), `model_version` = the run's name and its git commit, `score` = the ranking
score over its largest possible value (1 + rare_bonus), in [0, 1] as Label Studio shows it (a percentage). A scan already in the project (same file name) is not uploaded again. The ranking is written last as a
CSV (rank, image, task id, score and its parts, the classes predicted).
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poc59.annotation.client import LabelStudio, LabelStudioError
from poc59.annotation.project import FROM_NAME, TO_NAME, Project, checked_project, find_project, label_config
from poc59.annotation.ranking import RARE_BONUS, RARE_DEFAULT, Score, Uncertainty
from poc59.annotation.rle import mask_to_rle
from poc59.artifacts.load import load_models, locate_checkpoint
from poc59.artifacts.trained import ModelLoadError
from poc59.core.atomic import write_bytes
from poc59.core.device import resolve_device
from poc59.inference.iiif_source import is_iiif_input
from poc59.inference.image import band_labels, logit_bands
from poc59.inference.run import UsageError, find_inputs
from poc59.inference.scans import ScanError, open_scan

log = logging.getLogger(__name__)

RANKING_COLUMNS = (
    "rank",
    "image",
    "path",
    "task_id",
    "score",
    "mean_entropy",
    "rare_share",
    "width",
    "height",
    "predicted_classes",
)


class PushError(ValueError):
    """A setting of `annotate push` that cannot be used (the message names it and the fix)."""


@dataclass
class PushSettings:
    """What `python -m poc59.annotate push` takes (see its --help)."""

    url: str = "http://localhost:8080"
    token: str | None = None
    project: str = "poc59 corrections"
    ckpt: str | None = None
    run_dir: str | None = None
    input: str | None = None
    ranking: str = "ranking.csv"
    rare: list[str] | None = None
    rare_bonus: float = RARE_BONUS
    overwrite: bool = False
    device: str = "cpu"
    threads: Any = "auto"


@dataclass
class Ranked:
    """One scan, predicted and scored."""

    path: Path
    width: int
    height: int
    score: Score
    regions: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    task_id: int | None = None


def model_version(card_provenance: dict[str, Any], source: Path) -> str:
    """`<run name>@<commit>`: the run folder's name (else the model file's stem) and the git commit (12 hex)."""
    run = card_provenance.get("run_dir")
    name = Path(run).name if run else source.stem
    commit = card_provenance.get("git_commit") or card_provenance.get("commit")
    return f"{name}@{commit[:12]}" if commit else f"{name}@unknown-commit"


def regions_of(labels: np.ndarray, names: tuple[str, ...], project: Project) -> list[dict[str, Any]]:
    """Label Studio result regions for a label map: one BrushLabels region per class present."""
    height, width = labels.shape
    regions = []
    for c in np.unique(labels).tolist():
        regions.append(
            {
                "id": f"poc59-{c}",
                "from_name": project.from_name,
                "to_name": project.to_name,
                "type": "brushlabels",
                "origin": "prediction",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": mask_to_rle(labels == c), "brushlabels": [names[c]]},
            }
        )
    return regions


def _inputs(spec: str | None) -> list[Path]:

    if not spec:
        raise PushError("missing input=: the unlabelled scans (an image, a folder of them or a glob)")
    if is_iiif_input(spec):
        raise PushError(f"input={spec}: push uploads files from this machine; give image files, not IIIF addresses")
    try:
        paths = find_inputs(spec)
    except UsageError as err:
        raise PushError(str(err)) from None
    if not paths:
        raise PushError(f"input={spec}: holds no image files")
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PushError(
            f"input={spec}: file names occur twice ({', '.join(twice)}); Label Studio tasks are told apart by name"
        )
    return paths  # type: ignore[return-value]


def _rare_ids(rare: list[str] | None, names: tuple[str, ...]) -> list[int]:
    if rare is None:
        return [names.index(n) for n in RARE_DEFAULT if n in names]
    unknown = [n for n in rare if n not in names]
    if unknown:
        raise PushError(
            f"rare={','.join(rare)}: {unknown} not in the model's classes {list(names)}; name classes of it"
        )
    return [names.index(n) for n in rare]


def _uploaded_names(client: LabelStudio, project_id: int) -> dict[str, int]:
    """{original file name: task id} of the project's uploaded images (Label Studio prefixes 8 hex and '-')."""
    found = {}
    for task in client.tasks(project_id):
        image = str((task.get("data") or {}).get(TO_NAME, ""))
        base = image.rsplit("/", 1)[-1]
        found[base.split("-", 1)[1] if "-" in base else base] = task["id"]
    return found


def push(s: PushSettings) -> list[Ranked]:
    """Predict, rank and upload (module docstring); the scans in ranking order, with their task ids."""

    paths = _inputs(s.input)
    ranking = Path(s.ranking).expanduser()
    if ranking.exists() and not s.overwrite:
        raise PushError(
            f"ranking={ranking} exists; give another file (ranking=<new>.csv) or overwrite=true to replace it"
        )
    if not (s.ckpt or s.run_dir):
        raise PushError(
            "missing ckpt= or run_dir=: the model that pre-annotates (a checkpoint, exported model or run folder)"
        )
    if s.rare_bonus < 0:
        raise PushError(f"rare_bonus={s.rare_bonus}: must be 0 or more")
    client = LabelStudio(s.url, s.token or "")
    client.whoami()  # the address and the token, before the model is loaded
    try:
        ckpt = s.ckpt if s.ckpt else locate_checkpoint(s.run_dir, None)[0]
        device = resolve_device(s.device)
        model = load_models(ckpt=ckpt, device=device)
    except ModelLoadError as err:
        raise PushError(str(err)) from None
    classes = model.classes
    rare_ids = _rare_ids(s.rare, classes.names)
    found = find_project(client, s.project)
    other = shlex.quote(f"project={s.project}-{classes.num_classes}classes")
    fix = f"give another title (e.g. {other}) and push creates it"
    project = checked_project(client, found, classes, "the model's classes", fix) if found else None
    version = model_version(model.card.provenance, model.source)
    log.info("pre-annotations by %s (model_version %s)", model.source, version)

    placeholder = Project(0, s.project, FROM_NAME, TO_NAME, classes.names)
    ranked: list[Ranked] = []
    for path in paths:
        try:
            scan = open_scan(path)
        except (ScanError, OSError) as err:
            raise PushError(f"{path}: cannot be read ({err}); remove it from input= or fix the file") from None
        labels = np.empty((scan.height, scan.width), np.uint8)
        doubt = Uncertainty(classes.num_classes, rare_ids)
        for y0, band in logit_bands(model, scan, device=device):
            rows = band_labels(band)
            labels[y0 : y0 + rows.shape[0]] = rows
            doubt.add(band, rows)
        present = [classes.names[c] for c in np.unique(labels).tolist()]
        ranked.append(
            Ranked(
                path,
                scan.width,
                scan.height,
                doubt.score(s.rare_bonus),
                regions_of(labels, classes.names, placeholder),
                present,
            )
        )
        log.info("%s: score %.4f", path.name, ranked[-1].score.score)
    ranked.sort(key=lambda r: (-r.score.score, r.path.name))

    if project is None:
        created = client.create_project(s.project, label_config(classes))
        project = checked_project(client, client.project(created["id"]), classes, "the model's classes", fix)
        log.info("created project %r (id %d) on %s", project.title, project.id, client.url)
    there = _uploaded_names(client, project.id)
    for item in ranked:
        if item.path.name in there:
            item.task_id = there[item.path.name]
            log.info("%s: already task %d of project %d, not uploaded again", item.path.name, item.task_id, project.id)
            continue
        ids = client.upload(project.id, item.path, item.path.name)
        if len(ids) != 1:
            raise LabelStudioError(f"{client.url}: importing {item.path.name} made {len(ids)} tasks, not one")
        item.task_id = ids[0]
        for region in item.regions:
            region["from_name"], region["to_name"] = project.from_name, project.to_name
        client.predict(item.task_id, item.regions, round(item.score.score / (1 + s.rare_bonus), 6), version)
    _write_ranking(ranking, ranked)
    return ranked


def _write_ranking(path: Path, ranked: list[Ranked]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RANKING_COLUMNS)
    for rank, r in enumerate(ranked, 1):
        writer.writerow(
            [
                rank,
                r.path.name,
                str(r.path),
                r.task_id,
                f"{r.score.score:.6f}",
                f"{r.score.mean_entropy:.6f}",
                f"{r.score.rare_share:.6f}",
                r.width,
                r.height,
                ";".join(r.classes),
            ]
        )
    write_bytes(path, buf.getvalue().encode())
