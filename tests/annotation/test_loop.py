"""The correction loop against a real Label Studio (tests/label_studio_server.py): push a tiny trained model's
predictions, annotate through the HTTP API as an annotator would, pull the corrections into a dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_folder
from label_studio_server import label_studio_at
from poc59.annotate import main
from poc59.annotation.client import LabelStudio
from poc59.annotation.project import label_config
from poc59.annotation.rle import mask_to_rle, rle_to_mask
from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.data.datamodule import SegmentationDataModule


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with label_studio_at(tmp_path_factory.mktemp("label_studio")) as running:
        yield running


def _scans(folder: Path, n: int = 5) -> Path:
    """n small generated scans (different sizes, a dark stroke on a textured ground), no masks."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    for i in range(n):
        h, w = 40 + 4 * i, 56 - 2 * i
        image = rng.integers(90, 200, (h, w, 3), dtype=np.uint8)
        image[h // 3 : h // 3 + 3, 5 : w - 5] = 20
        Image.fromarray(image).save(folder / f"scan{i}.png")
    return folder


def _label_map(task: dict, height: int, width: int) -> np.ndarray:
    labels = np.full((height, width), IGNORE_INDEX, np.uint8)
    for region in task["result"]:
        labels[rle_to_mask(region["value"]["rle"], height, width)] = ARTEFACT.names.index(
            region["value"]["brushlabels"][0]
        )
    return labels


def _regions(labels: np.ndarray, names: dict[int, str] | None = None) -> list[dict]:
    h, w = labels.shape
    return [
        {
            "from_name": "damage",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": w,
            "original_height": h,
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": mask_to_rle(labels == c),
                "brushlabels": [(names or {}).get(c, ARTEFACT.names[c])],
            },
        }
        for c in np.unique(labels).tolist()
        if c != IGNORE_INDEX
    ]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _annotate(client: LabelStudio, task_id: int, result: list[dict]) -> dict:
    return client.request("POST", f"/api/tasks/{task_id}/annotations", {"result": result, "was_cancelled": False})


@pytest.mark.slow
def test_push_annotate_pull_round_trip(server, trained_run, tmp_path, capsys):
    from poc59.artifacts.load import load_model
    from poc59.artifacts.trained import best_checkpoint
    from poc59.inference.image import predict_label_map

    scans = _scans(tmp_path / "scans")
    ranking = tmp_path / "ranking.csv"
    common = [f"url={server.url}", f"token={server.token}", "project=corrections"]
    assert main(["push", f"run_dir={trained_run}", f"input={scans}", f"ranking={ranking}", *common]) == 0

    # the tasks' pre-annotations are poc59's predictions, pixel for pixel, by the run's name and commit
    client = LabelStudio(server.url, server.token)
    project = next(p for p in client.projects() if p["title"] == "corrections")
    model = load_model(best_checkpoint(trained_run))
    rows = list(csv.DictReader(ranking.open()))
    assert [r["image"] for r in rows] and sorted(r["image"] for r in rows) == sorted(p.name for p in scans.iterdir())
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [int(r["task_id"]) for r in rows] == sorted(int(r["task_id"]) for r in rows)  # uploaded in rank order
    commit = model.card.provenance["git_commit"]  # the commit the run was trained at (not HEAD now)
    by_name = {}
    for row in rows:
        task = client.task(int(row["task_id"]))
        assert task["project"] == project["id"] and task["data"]["image"].endswith("-" + row["image"])
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == f"{trained_run.name}@{commit[:12]}"
        image = np.asarray(Image.open(scans / row["image"]).convert("RGB"))
        expected = predict_label_map(model, image)
        assert np.array_equal(_label_map(prediction, *image.shape[:2]), expected)
        assert len(prediction["result"]) == len(np.unique(expected))  # one region per class present
        by_name[row["image"]] = (task, expected)

    # an annotator: accepts one prediction, edits one, uses a label not in the table, submits an empty one;
    # one task's image is deleted on the server
    accepted, edited, foreign, empty, gone = (by_name[f"scan{i}.png"] for i in range(5))
    _annotate(client, accepted[0]["id"], accepted[0]["predictions"][0]["result"])
    edit = edited[1].copy()
    edit[:6] = IGNORE_INDEX  # left unlabelled
    edit[10:20, 10:30] = ARTEFACT.names.index("Hair")
    _annotate(client, edited[0]["id"], _regions(edit))
    _annotate(client, foreign[0]["id"], _regions(foreign[1], {int(foreign[1][0, 0]): "Mould"}))
    _annotate(client, empty[0]["id"], [])
    _annotate(client, gone[0]["id"], gone[0]["predictions"][0]["result"])
    uploaded = gone[0]["data"]["image"].split("/data/upload/", 1)[1]
    (server.data_dir / "media" / "upload" / uploaded).unlink()
    capsys.readouterr()

    # the dataset of round 0 and its split: pulled pairs join it, its validation images stay validation
    dataset = make_folder(tmp_path / "dataset", n=6, copies=1)
    round0 = SegmentationDataModule(dataset, image_size=16, batch_size=2, cache=False)
    round0.setup("fit")
    (tmp_path / "split.json").write_text(json.dumps(round0.split))
    pull = ["pull", f"dataset={dataset}", f"split={tmp_path / 'split.json'}", *common]
    assert main(pull) == 3  # done, three tasks skipped
    out = capsys.readouterr()
    pid = project["id"]
    for task, image in ((accepted[0], accepted[1]), (edited[0], edit)):
        mask = np.asarray(Image.open(dataset / "annotations" / f"ls{pid}-task{task['id']}.png"))
        assert np.array_equal(mask, image)
        source = np.asarray(Image.open(scans / task["data"]["image"].rsplit("-", 1)[1]).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(dataset / "images" / f"ls{pid}-task{task['id']}.png")), source)
    assert sorted(p.name for p in (dataset / "annotations").glob("ls*")) == sorted(
        f"ls{pid}-task{t['id']}.png" for t in (accepted[0], edited[0])
    )
    meta = {r["id"]: r for r in csv.DictReader((dataset / "metadata.csv").open())}
    assert set(meta) == {f"ls{pid}-task{accepted[0]['id']}", f"ls{pid}-task{edited[0]['id']}"}
    for row in meta.values():
        assert row["source"] == "label-studio" and row["ls_project"] == str(pid) and row["ls_url"] == server.url
        assert row["annotator"] == "conservator@example.org" and row["annotated_at"]
        assert row["pre_annotation"] == f"{trained_run.name}@{commit[:12]}"
        assert (dataset / row["annotation_path"]).is_file() and (dataset / row["image_path"]).is_file()
    skipped = {line.split("\t")[1]: line for line in out.out.splitlines() if line.startswith("skipped")}
    assert "'Mould' is not in the class table" in skipped[f"task {foreign[0]['id']}"]
    assert "empty" in skipped[f"task {empty[0]['id']}"]
    assert "could not give its image" in skipped[f"task {gone[0]['id']}"]
    assert "2 added, 0 changed, 0 unchanged, 3 skipped" in out.out
    round1 = SegmentationDataModule(
        dataset, image_size=16, batch_size=2, cache=False, split_file=dataset / "split_corrections.json"
    )
    round1.setup("fit")
    assert sorted(round1.split["val"]) == sorted(round0.split["val"])
    assert sorted(round1.split["test"]) == sorted(round0.split["test"])
    assert set(round1.split["train"]) == set(round0.split["train"]) | set(meta)

    # again: nothing changes
    before = _digest(dataset)
    assert main(pull) == 3
    assert _digest(dataset) == before
    assert "0 added, 0 changed, 2 unchanged, 3 skipped" in capsys.readouterr().out

    # the annotator edits one pair: kept without overwrite=true, replaced (that pair only) with it
    annotation = client.task(accepted[0]["id"])["annotations"][0]
    fixed = accepted[1].copy()
    fixed[-5:] = ARTEFACT.names.index("Dust")
    client.request("PATCH", f"/api/annotations/{annotation['id']}", {"result": _regions(fixed)})
    assert main(pull) == 3
    assert _digest(dataset) == before
    assert "differs from the dataset's pair; overwrite=true replaces it" in capsys.readouterr().out
    assert main([*pull, "overwrite=true"]) == 3
    after = _digest(dataset)
    changed = sorted(k for k in after if after[k] != before.get(k))
    name = f"ls{pid}-task{accepted[0]['id']}.png"
    assert changed == ["annotations/" + name, "annotations_rgb/" + name, "metadata.csv"]
    assert np.array_equal(np.asarray(Image.open(dataset / "annotations" / name)), fixed)
    assert "0 added, 1 changed, 1 unchanged, 3 skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_refusals_exit_2_and_write_nothing(server, trained_run, tmp_path, caplog):
    scans = _scans(tmp_path / "scans", n=1)
    client = LabelStudio(server.url, server.token)
    other = ARTEFACT.names[:-1] + ("Mould",)
    client.create_project("other labels", label_config(type(ARTEFACT)(other, ARTEFACT.palette)))
    projects = len(client.projects())
    dataset, ranking = tmp_path / "dataset", tmp_path / "ranking.csv"
    closed = socket.socket()  # bound, never listening: connections are refused and no other server takes the port
    closed.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{closed.getsockname()[1]}"
    cases = {
        "down": ([f"url={down}", f"token={server.token}", "project=x"], "cannot reach Label Studio at"),
        "token": ([f"url={server.url}", "token=abc.def.ghi", "project=x"], "refused the token"),
        "labels": ([f"url={server.url}", f"token={server.token}", "project=other labels"], "has the labels"),
    }
    for name, (keys, said) in cases.items():
        for verb in (
            ["push", f"run_dir={trained_run}", f"input={scans}", f"ranking={ranking}"],
            ["pull", f"dataset={dataset}"],
        ):
            caplog.clear()
            assert main([*verb, *keys]) == 2, (name, verb[0])
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == 1 and said in errors[0], (name, verb[0], errors)
    closed.close()
    assert not dataset.exists() and not ranking.exists()
    assert len(client.projects()) == projects

    # the labels' advice, pasted: push to the project title it names
    caplog.clear()
    assert main(["push", f"run_dir={trained_run}", f"input={scans}", f"ranking={ranking}", *cases["labels"][0]]) == 2
    (advice,) = re.findall(r"e\.g\. ('project=[^']+'|project=\S+)\)", caplog.records[-1].getMessage())
    (pasted,) = shlex.split(advice)
    assert (
        main(
            ["push", f"run_dir={trained_run}", f"input={scans}", f"ranking={ranking}", *cases["labels"][0][:2], pasted]
        )
        == 0
    )
    assert len(client.projects()) == projects + 1


def test_missing_server_skips_or_fails_under_ci(tmp_path, monkeypatch):
    """The fixture's rule: no Label Studio -> skip naming the install command; under CI=1 -> fail."""
    import label_studio_server

    monkeypatch.setenv("POC59_LABEL_STUDIO", str(tmp_path / "none" / "label-studio"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install label-studio==1.23.2"):
        label_studio_server.require()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match=".ci/run installs it"):
        label_studio_server.require()
    shutil.rmtree(tmp_path, ignore_errors=True)
