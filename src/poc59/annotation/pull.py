"""`annotate pull`: the submitted annotations of a Label Studio project as image/mask pairs in the ARTeFACT layout.

For each task with a submitted annotation (the latest one not cancelled), the mask starts as 255 (ignore:
nobody labelled it) and each BrushLabels region paints its class id (the label's position in the class
table) where its alpha is set; a pixel two different labels paint stays 255 (counted as contested, never
guessed). The image is fetched from the server, so the dataset holds exactly what the annotator saw.

The pair's id is `ls<project id>-task<task id>`, found again through its metadata.csv row on the next pull:
- a new pair is written (`added`);
- an existing pair with the same image and mask is left alone (`unchanged`);
- one that differs is replaced only with `overwrite=true` (`changed`), else kept and listed (`skipped`).

Skipped and listed, with the reason, nothing of them written: a label not in the class table, an empty
annotation (no region, or regions that paint no pixel), an image the server no longer has, a mask whose
size is not the image's, an id whose files exist but no metadata.csv row of this task names them.

Files are written atomically, images and masks first, `metadata.csv` last: one row per pair with the
ARTeFACT columns and the provenance (`PROVENANCE_COLUMNS`); rows of other pairs are kept as they are. The
class table is the dataset's (`classes.json`, else ARTeFACT's), and the project's labels must be its names in
order (for a new dataset of other classes, write its classes.json before the first pull).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from poc59.annotation.client import HttpError, LabelStudio
from poc59.annotation.project import Project, checked_project, find_project
from poc59.annotation.rle import RleError, rle_to_mask
from poc59.core.atomic import write_bytes, write_json
from poc59.core.classes import IGNORE_INDEX, ClassTable, load_class_table
from poc59.data.import_parquet import METADATA_COLUMNS
from poc59.inference.outputs import label_map_png

log = logging.getLogger(__name__)

PROVENANCE_COLUMNS = (
    "source",
    "ls_url",
    "ls_project",
    "ls_task",
    "ls_annotation",
    "annotator",
    "annotated_at",
    "pre_annotation",
)
SOURCE = "label-studio"
SPLIT_NAME = "split_corrections.json"
WRITTEN_BY = "python -m poc59.annotate pull"


class PullError(ValueError):
    """A setting of `annotate pull` that cannot be used (the message names it and the fix)."""


@dataclass
class PullSettings:
    """What `python -m poc59.annotate pull` takes (see its --help)."""

    url: str = "http://localhost:8080"
    token: str | None = None
    project: str = "poc59 corrections"
    dataset: str | None = None
    overwrite: bool = False
    split: str | None = None


@dataclass
class Outcome:
    """What pull did with one task."""

    task: int
    action: str  # added | changed | unchanged | skipped
    pair: str | None = None
    reason: str = ""
    problem: bool = False  # skipped for a fault of the annotation or the image (not: exists, overwrite=false)


@dataclass
class PullReport:
    project: Project
    dataset: Path
    outcomes: list[Outcome] = field(default_factory=list)
    split: Path | None = None  # split_corrections.json, when split= was given

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem]


class _Skip(Exception):
    def __init__(self, reason: str, problem: bool = True) -> None:
        super().__init__(reason)
        self.problem = problem


def pair_id(project_id: int, task_id: int) -> str:
    return f"ls{project_id}-task{task_id}"


def _read_metadata(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return list(METADATA_COLUMNS + PROVENANCE_COLUMNS), []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PullError(f"{path}: not a readable CSV ({err}); fix or move it, then pull again") from None
    if "id" not in columns:
        raise PullError(f"{path}: has no id column; it is not an ARTeFACT metadata.csv (move it, then pull again)")
    return columns + [c for c in METADATA_COLUMNS + PROVENANCE_COLUMNS if c not in columns], rows


def _latest_submitted(task: dict[str, Any]) -> dict[str, Any] | None:
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return (
        max(kept, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
        if kept
        else None
    )


def _annotator(client: LabelStudio, annotation: dict[str, Any], known: dict[int, str]) -> str:
    """The annotator's e-mail (Label Studio's export gives the user's id; the user is asked once)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id", ""))
    if isinstance(who, int):
        if who not in known:
            try:
                user = client.user(who)
                known[who] = str(user.get("email") or user.get("username") or who)
            except HttpError:  # a user deleted since, or one the token's user may not see: keep the id
                known[who] = f"user {who}"
        return known[who]
    return str(who if who is not None else "")


def _pre_annotation(client: LabelStudio, task: dict[str, Any], annotation: dict[str, Any]) -> str:
    """model_version of the prediction the annotation started from (`parent_prediction`, set by the editor),
    else of the task's latest prediction; empty without one. The export lists predictions by id."""
    ids = [p["id"] if isinstance(p, dict) else p for p in task.get("predictions") or []]
    chosen = annotation.get("parent_prediction") or (max(ids) if ids else None)
    if chosen is None:
        return ""
    try:
        return str(client.prediction(int(chosen)).get("model_version") or "")
    except HttpError:  # deleted since: the provenance says so rather than guessing
        return f"prediction {chosen} (deleted)"


def mask_of(
    annotation: dict[str, Any], project: Project, classes: ClassTable, size: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """(mask uint8 [H, W], contested pixels) of an annotation's BrushLabels regions over an image of `size` (w, h)."""
    width, height = size
    mask = np.full((height, width), IGNORE_INDEX, np.uint8)
    painted = np.zeros((height, width), bool)
    contested = np.zeros((height, width), bool)
    regions = [r for r in annotation.get("result") or [] if r.get("type", "").lower() == "brushlabels"]
    for region in regions:
        value = region.get("value") or {}
        names = value.get("brushlabels") or []
        unknown = [n for n in names if n not in classes.names]
        if unknown:
            raise _Skip(f"label {unknown[0]!r} is not in the class table {list(classes.names)}")
        if len(names) != 1:
            raise _Skip(f"a region carries {len(names)} labels ({names}), not one")
        if (region.get("original_width"), region.get("original_height")) != (width, height):
            raise _Skip(
                f"a region is drawn on a {region.get('original_width')}x{region.get('original_height')} image, "
                f"the image is {width}x{height}"
            )
        if value.get("format") != "rle":
            raise _Skip(f"a region's format is {value.get('format')!r}, not Label Studio's brush rle")
        try:
            region_mask = rle_to_mask(value.get("rle") or [], height, width)
        except RleError as err:
            raise _Skip(f"a {names[0]} region: {err}") from None
        c = classes.names.index(names[0])
        contested |= region_mask & painted & (mask != c)
        mask[region_mask] = c
        painted |= region_mask
    if not painted.any():
        raise _Skip("the annotation is empty (no region paints a pixel)")
    mask[contested] = IGNORE_INDEX
    return mask, int(contested.sum())


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _same(path: Path, array: np.ndarray) -> bool:
    try:
        with Image.open(path) as img:
            return np.array_equal(np.asarray(img), array)
    except (OSError, UnidentifiedImageError):
        return False


def pull(s: PullSettings) -> PullReport:
    """Export, convert and write the project's submitted annotations (module docstring)."""

    if not s.dataset:
        raise PullError("missing dataset=: the folder the pairs go to (ARTeFACT layout; made if it is not there)")
    root = Path(s.dataset).expanduser()
    if root.exists() and not root.is_dir():
        raise PullError(f"dataset={root}: a file, not a folder; give a dataset folder")
    client = LabelStudio(s.url, s.token or "")
    client.whoami()
    found = find_project(client, s.project)
    if found is None:
        raise PullError(
            f"{client.url} has no project titled {s.project!r}: give the title push used (project=...) or its id"
        )
    try:
        classes = load_class_table(root)
    except ValueError as err:
        raise PullError(str(err)) from None
    project = checked_project(
        client,
        found,
        classes,
        f"the class table of {root} ({'its classes.json' if (root / 'classes.json').exists() else 'ARTeFACT, no classes.json'})",
        f"pull into the dataset folder of those labels (dataset=<folder>), or, for a new dataset, write them in "
        f"order as a JSON list to {root / 'classes.json'} first",
    )
    first_split = _first_split(s.split, root) if s.split else None
    columns, rows = _read_metadata(root / "metadata.csv")
    by_task = {(r.get("ls_url"), r.get("ls_project"), r.get("ls_task")): r for r in rows if r.get("source") == SOURCE}
    report = PullReport(project, root)
    written: list[dict[str, str]] = []
    users: dict[int, str] = {}
    for task in sorted(client.export(project.id), key=lambda t: t["id"]):
        annotation = _latest_submitted(task)
        if annotation is None:
            continue  # only cancelled (skipped) annotations: nothing submitted yet
        key = (client.url, str(project.id), str(task["id"]))
        earlier = by_task.get(key)
        pid = earlier["id"] if earlier else pair_id(project.id, task["id"])
        try:
            image = _image(client, task, project)
            mask, contested = mask_of(annotation, project, classes, (image.shape[1], image.shape[0]))
            outcome = _place(root, pid, image, mask, earlier is not None, s.overwrite)
        except _Skip as skip:
            report.outcomes.append(Outcome(task["id"], "skipped", pid, str(skip), skip.problem))
            continue
        if contested:
            outcome.reason = f"{contested} pixels painted by two labels left 255"
        outcome.task = task["id"]
        report.outcomes.append(outcome)
        if outcome.action in ("added", "changed"):
            write_bytes(root / "images" / f"{pid}.png", _png(image, "RGB"))
            write_bytes(root / "annotations" / f"{pid}.png", _png(mask, "L"))
            write_bytes(root / "annotations_rgb" / f"{pid}.png", label_map_png(mask, classes))
            written.append(
                {
                    "id": pid,
                    "material": (earlier or {}).get("material", ""),
                    "content": (earlier or {}).get("content", ""),
                    "image_path": f"images/{pid}.png",
                    "annotation_path": f"annotations/{pid}.png",
                    "annotation_rgb_path": f"annotations_rgb/{pid}.png",
                    "width": str(image.shape[1]),
                    "height": str(image.shape[0]),
                    "source": SOURCE,
                    "ls_url": client.url,
                    "ls_project": str(project.id),
                    "ls_task": str(task["id"]),
                    "ls_annotation": str(annotation.get("id", "")),
                    "annotator": _annotator(client, annotation, users),
                    "annotated_at": str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                    "pre_annotation": _pre_annotation(client, task, annotation),
                }
            )
    if written:
        replacing = {r["id"]: r for r in written}
        kept = [replacing.pop(r.get("id"), r) for r in rows]  # a replaced row keeps its place
        written = list(replacing.values())  # the new rows, after the others
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(kept + written)
        write_bytes(root / "metadata.csv", buf.getvalue().encode("utf-8"))
        rows = kept + written
    if first_split is not None:
        report.split = _write_split(root, first_split, [r["id"] for r in rows if r.get("source") == SOURCE])
    return report


def _first_split(path: str, root: Path) -> dict[str, Any]:
    """The first round's split.json (train/val/test ids), checked before anything is written."""
    file = Path(path).expanduser()
    try:
        split = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise PullError(
            f"split={file}: not a readable split.json ({err}); give the first run's <run>/split.json"
        ) from None
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
        raise PullError(
            f"split={file}: not a split.json (no train and val lists); give the first run's <run>/split.json"
        )
    target = root / SPLIT_NAME
    if target.exists():
        try:
            ours = json.loads(target.read_text()).get("written_by") == WRITTEN_BY
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise PullError(f"{target} exists and was not written by pull: move it away, then pull again")
    return split


def _write_split(root: Path, first: dict[str, Any], pulled: list[str]) -> Path:
    """`root/split_corrections.json`: the first round's split with every pulled pair added to training (a
    pair of the first split keeps its side). No fingerprint: poc59 reads such a file as written on purpose."""
    listed = {x for side in ("train", "val", "test") for x in first.get(side) or []}
    split = {
        "train": list(first["train"]) + sorted(x for x in pulled if x not in listed),
        "val": list(first["val"]),
        "test": list(first.get("test") or []),
        "written_by": WRITTEN_BY,
        "first_split": {k: v for k, v in first.items() if k not in ("train", "val", "test")},
    }
    return write_json(root / SPLIT_NAME, split)


def _image(client: LabelStudio, task: dict[str, Any], project: Project) -> np.ndarray:
    ref = str((task.get("data") or {}).get(project.to_name, ""))
    if not ref:
        raise _Skip(f"the task has no {project.to_name!r} in its data")
    try:
        data = client.file(ref)
    except HttpError as err:
        if err.code == 404 or err.code >= 500:  # Label Studio 1.23 answers 500 for an upload whose file is gone
            raise _Skip(f"the server could not give its image {ref} (is the file gone?): {err}") from None
        raise
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise _Skip(f"its image {ref} cannot be decoded ({err})") from None


def _place(root: Path, pid: str, image: np.ndarray, mask: np.ndarray, recorded: bool, overwrite: bool) -> Outcome:
    """What to do with a pair: added, unchanged, changed (overwrite) or skipped; raises _Skip for a foreign file."""
    image_file, mask_file = root / "images" / f"{pid}.png", root / "annotations" / f"{pid}.png"
    exists = image_file.exists() or mask_file.exists()
    if not exists:
        return Outcome(0, "added", pid)
    if not recorded:
        raise _Skip(f"{image_file} or {mask_file} exists but metadata.csv records no pair of this task: move them away")
    if _same(image_file, image) and _same(mask_file, mask):
        return Outcome(0, "unchanged", pid)
    if not overwrite:
        raise _Skip("the annotation differs from the dataset's pair; overwrite=true replaces it", problem=False)
    return Outcome(0, "changed", pid)
