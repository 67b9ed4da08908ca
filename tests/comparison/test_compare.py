"""python -m poc59.compare on a sweep of really trained tiny runs: table, chart, seed aggregation, best, split rule."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import open_dict
from PIL import Image

from helpers import SMALL, TINY_RUN, make_cfg, write_multirun
from poc59.compare import main
from poc59.comparison import report as report_module
from poc59.comparison.run import CompareError, lead
from poc59.core.logs import LineFormatter
from poc59.evaluate import main as evaluate_main
from poc59.evaluation.run import evaluate_run
from poc59.training.run import train
from poc59.training.sweeps import expected_jobs

ENCODERS = ["tu-mobilenetv3_small_050", "tu-lcnet_050", "tu-regnetx_002"]
TRAINED = {0, 1, 2, 4}  # (mobilenet, seed 0), (mobilenet, seed 1), (lcnet, seed 0), (regnetx, seed 0)
STARTED = 3  # (lcnet, seed 1): started, no summary.json yet; job 5 never started


def _train(tmp: Path, run_dir: Path, overrides: list[str]) -> None:
    """One training step at 32 px and one validation pass: seconds, and a real run folder."""
    cfg = make_cfg(
        tmp,
        *SMALL,
        "data.image_size=32",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.num_sanity_val_steps=0",
        "callbacks.val_overlays=null",
        *overrides,
    )
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    train(cfg)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A Hydra sweep folder as `python -m poc59.train -m encoder.name=a,b,c seed=0,1 data.seed=0` leaves it mid-way."""
    tmp = tmp_path_factory.mktemp("compare")
    s = tmp / "sweeps" / "2026-01-01_10-00-00"
    s.mkdir(parents=True)
    task = ["encoder=tiny", "encoder.name=" + ",".join(ENCODERS), "seed=0,1", "data.seed=0"]
    write_multirun(s, task)
    jobs = expected_jobs(s)
    assert len(jobs) == 6 and "encoder.name=tu-lcnet_050" in jobs[STARTED] and "seed=1" in jobs[STARTED]
    for num in sorted(TRAINED | {STARTED}):
        d = s / str(num)
        if num in TRAINED:
            _train(tmp, d, jobs[num])
        else:
            d.mkdir()
            (d / "train.log").write_text("[2026-01-01 10:00:01,000][poc59.train][INFO] - epoch 0 ...\n")
        (d / ".hydra").mkdir()  # what train records of its start (in-process, without Hydra, it records none)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(jobs[num]))
    # the same encoder with seed=1 outside the sweep, data.seed following it: another split
    _train(tmp, tmp / "other", ["encoder.name=tu-mobilenetv3_small_050", "seed=1"])
    return s


def _summaries(sweep: Path) -> dict[int, dict]:
    return {n: json.loads((sweep / str(n) / "summary.json").read_text()) for n in TRAINED}


@pytest.fixture(scope="module")
def compared(sweep):
    assert main([f"sweep={sweep}", "evaluate=false"]) == 0
    out = sweep / "comparison"
    return json.loads((out / "comparison.json").read_text()), out


def test_best_is_the_configuration_with_the_highest_val_miou(sweep, compared):
    result, _ = compared
    by_encoder: dict[str, list[float]] = {}
    for s in _summaries(sweep).values():
        by_encoder.setdefault(s["encoder"], []).append(s["val/mIoU"])
    means = {e: statistics.fmean(v) for e, v in by_encoder.items()}
    top = max(means.values())
    assert result["best"] in {e for e, m in means.items() if m == top}
    configs = {c["label"]: c for c in result["configurations"]}
    assert set(configs) == set(ENCODERS)
    assert [c["rank"] for c in result["configurations"]] == [1, 2, 3]
    assert [c["val_mIoU"]["mean"] for c in result["configurations"]] == sorted(means.values(), reverse=True)
    assert configs[result["best"]]["best"] and sum(c["best"] for c in configs.values()) == 1
    assert "no interval" in result["lead"]["verdict"]  # evaluate=false and no metrics.json: not assessed, and says so


def test_seed_repeats_are_aggregated(sweep, compared):
    result, out = compared
    s = _summaries(sweep)
    values = [s[0]["val/mIoU"], s[1]["val/mIoU"]]  # mobilenet, seeds 0 and 1
    (mob,) = [c for c in result["configurations"] if c["encoder"] == ENCODERS[0]]
    assert mob["n"] == 2 and mob["seeds"] == [0, 1]
    m = mob["val_mIoU"]
    assert m["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert m["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert (m["min"], m["max"]) == (min(values), max(values))
    assert mob["interval"] == [min(values), max(values)]  # no bootstrap intervals: the range over seeds
    assert mob["per_class_iou"]["Clean"] == pytest.approx(np.mean([s[0]["val/IoU"]["Clean"], s[1]["val/IoU"]["Clean"]]))
    assert all(c["n"] == 1 and c["val_mIoU"]["std"] is None for c in result["configurations"] if c is not mob)
    md = (out / "comparison.md").read_text()
    assert "## Seed repeats" in md and f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}" in md


def test_unfinished_runs_are_listed_not_ranked(sweep, compared):
    result, out = compared
    status = {r["name"]: (r["status"], r["detail"]) for r in result["runs"]}
    assert [r["dir"] for r in result["runs"]] == [str(sweep / str(n)) for n in range(6)]
    assert status["3"][0] == "unfinished" and "no summary.json" in status["3"][1]
    assert status["5"][0] == "unfinished" and "not started" in status["5"][1]
    assert {k for k, v in status.items() if v[0] == "finished"} == {str(n) for n in TRAINED}
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["status"] for r in rows] == ["finished"] * 3 + ["unfinished"] * 2
    assert float(rows[0]["val_mIoU_mean"]) == result["configurations"][0]["val_mIoU"]["mean"]
    assert rows[0]["configuration"] == result["best"] and rows[0]["best"] == "True"
    assert set(rows[0]) >= {
        "encoder",
        "family",
        "decoder",
        "parameters",
        "train_images_per_s",
        "peak_memory_bytes",
        "wall_time_s",
        "IoU/Clean",
    }


def test_table_chart_and_labels(compared):
    result, out = compared
    with Image.open(out / "per_class_iou.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    assert rgb.shape[0] > 500 and len(np.unique(packed)) > 20
    md = (out / "comparison.md").read_text()
    assert f"**{result['best']}**" in md and "per_class_iou.png" in md
    conv = result["conventions"]
    assert "mean of per-class IoU" in conv["val_mIoU"]  # the summaries' own metric convention
    assert "training images per second" in conv["train_images_per_s"] and "resident set size" in conv["peak_memory"]
    for text in (conv["val_mIoU"], conv["interval"], conv["std"]):
        assert text in md


def test_an_earlier_comparison_is_replaced_only_with_overwrite(sweep, compared, caplog):
    """compare follows the rule of every command that writes results (poc59.core.outputs): stop before any
    run is read, name the file, and the advice works when followed."""
    _, out = compared
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with caplog.at_level(logging.INFO):
        assert main([f"sweep={sweep}", "evaluate=false"]) == 2
    assert f"{out / 'comparison.md'} exists (4 earlier result(s) in {out}): pass overwrite=true" in caplog.text
    assert "or out=<another folder>" in caplog.text and "reading runs" not in caplog.text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([f"sweep={sweep}", "evaluate=false", "overwrite=true"]) == 0  # the advice, followed


def test_runs_on_different_splits_are_refused(sweep, caplog):
    other = sweep.parents[1] / "other"
    fp = lambda d: json.loads((d / "summary.json").read_text())["provenance"]["data"]["split_fingerprint"]
    assert fp(other) != fp(sweep / "0")
    assert (
        main([f"runs=[{sweep / '0'},{sweep / '2'},{other}]", "evaluate=false", f"out={sweep.parent / 'refused'}"]) == 2
    )
    msg = caplog.text
    assert "refusing to rank" in msg and "same split" in msg
    assert f"differing from {sweep / '0'}: {other}" in msg
    assert f"data.split_file={sweep / '0' / 'split.json'}" in msg
    assert not (sweep.parent / "refused").exists()


def test_runs_with_different_class_tables_are_refused(sweep, caplog):
    """Same split, another classes.json (one class renamed): per-class IoU would be set side by side under
    names that mean different things, so nothing is ranked and nothing is written."""
    renamed = sweep.parent / "renamed"
    shutil.copytree(sweep / "2", renamed, ignore=shutil.ignore_patterns("tensorboard", "csv", "checkpoints"))
    summary = json.loads((renamed / "summary.json").read_text())
    names = summary["classes"]["names"]
    summary["classes"]["names"] = [*names[:-1], "Not " + names[-1]]
    (renamed / "summary.json").write_text(json.dumps(summary))
    out = sweep.parent / "refused-classes"
    assert main([f"runs=[{sweep / '0'},{sweep / '2'},{renamed}]", "evaluate=false", f"out={out}"]) == 2
    msg = caplog.text
    assert "refusing to rank" in msg and "same class table" in msg
    assert f"differing from {sweep / '0'}: {renamed}" in msg and "Not " + names[-1] in msg
    assert "same dataset and classes.json" in msg
    assert not out.exists()


def test_lead_is_judged_against_the_intervals():
    def cfg(label, mean, iv, rank):
        return {"label": label, "val_mIoU": {"mean": mean}, "score": mean, "score_interval": iv, "rank": rank}

    clear = lead([cfg("a", 0.50, [0.46, 0.54], 1), cfg("b", 0.40, [0.37, 0.45], 2)])
    assert clear["larger_than_intervals"] is True and clear["difference"] == pytest.approx(0.10)
    close = lead([cfg("a", 0.50, [0.44, 0.56], 1), cfg("b", 0.48, [0.45, 0.51], 2)])
    assert close["larger_than_intervals"] is False and close["verdict"].startswith("Lead within uncertainty")
    alone = lead([cfg("a", 0.5, None, 1)])
    assert alone["larger_than_intervals"] is None


def test_bad_arguments_are_named(tmp_path, caplog):
    assert main(["sweep=a", "runs=[b]"]) == 2 and "either sweep=DIR or runs=" in caplog.text
    assert main([f"runs=[{tmp_path / 'nope'}]"]) == 2 and "no such run folder" in caplog.text
    with pytest.raises(CompareError, match="evaluate=maybe"):
        from poc59.compare import parse_args

        parse_args(["sweep=x", "evaluate=maybe"])


def test_missing_intervals_are_computed_by_evaluate(sweep, tmp_path):
    """evaluate=true (the default): each run's best.ckpt is evaluated once, and its bootstrap interval is used."""
    runs = [
        shutil.copytree(sweep / str(n), tmp_path / "runs" / f"job{n}") for n in (2, 4)
    ]  # copies: the sweep stays unevaluated
    assert main(["runs=[" + ",".join(map(str, runs)) + "]", f"out={tmp_path / 'cmp'}"]) == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for run in runs:
        metrics = json.loads((run / "evaluation" / "val" / "metrics.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert metrics["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4)
        (config,) = [c for c in result["configurations"] if c["runs"] == [str(run)]]
        assert config["interval"] == metrics["miou_ci"] and config["n"] == 1
        assert config["per_class_interval"]["Clean"] == metrics["per_class"]["Clean"]["iou_ci"]
    assert "bootstrap interval over validation images" in result["conventions"]["interval"]
    best, runner = result["configurations"][:2]
    assert result["lead"]["larger_than_intervals"] == (best["interval"][0] > runner["interval"][1])
    if not result["lead"]["larger_than_intervals"]:
        assert "lead within uncertainty" in (tmp_path / "cmp" / "comparison.md").read_text().lower()


def _moved(run: Path, to: Path) -> Path:
    """`run` as trained from another clone with another cache: every path in its config.yaml elsewhere."""
    shutil.copytree(run, to)
    config = (to / "config.yaml").read_text()
    cache = str(Path(yaml.safe_load(config)["paths"]["cache_dir"]))
    (to / "config.yaml").write_text(config.replace(str(run), str(to)).replace(cache, "/elsewhere/cache"))
    return to


def test_runs_that_differ_only_by_paths_are_repeats(sweep, tmp_path):
    moved = _moved(sweep / "0", tmp_path / "clone2" / "run")
    out = tmp_path / "cmp"
    assert main([f"runs=[{sweep / '0'},{moved}]", f"out={out}", "evaluate=false"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert [c["n"] for c in result["configurations"]] == [2]  # one configuration, run twice; not ranked apart


def test_a_failed_job_is_named_with_its_cause(sweep, tmp_path):
    s = tmp_path / "sweeps" / "failing"
    write_multirun(s, ["seed=0,1"])
    shutil.copytree(sweep / "0", s / "0")
    (s / "1" / ".hydra").mkdir(parents=True)
    (s / "1" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    handler = logging.FileHandler(s / "1" / "train.log")  # the run's log, in the format every run writes
    handler.setFormatter(LineFormatter())
    log = logging.getLogger("poc59.train")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("data.root=/nope: no images\nput them in /nope/images, masks in /nope/annotations")
        except ValueError:
            log.exception("Run failed")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert main([f"sweep={s}", "evaluate=false"]) == 0
    runs = {r["name"]: r for r in json.loads((s / "comparison" / "comparison.json").read_text())["runs"]}
    assert runs["1"]["status"] == "failed"
    assert runs["1"]["detail"].endswith("; ValueError: data.root=/nope: no images"), runs["1"]["detail"]
    assert "ValueError: data.root=/nope: no images" in (s / "comparison" / "comparison.md").read_text()


@pytest.mark.slow  # a training, a resume and three evaluations: 61 s at a load of 8-10
def test_an_evaluation_of_an_earlier_best_checkpoint_is_redone_after_a_resume(tmp_path, caplog):
    """Evaluated at epoch 0, resumed to a later best epoch: the old metrics.json scored another file. compare
    neither pairs the new score with the old interval nor calls them the same checkpoint; it evaluates again."""
    train(make_cfg(tmp_path, *TINY_RUN, "trainer.max_epochs=1"))
    run = tmp_path / "run"
    old = evaluate_run(run_dir=run, pictures=False, resamples=50, device="cpu")
    assert old["checkpoint_identity"]["name"] == "best.ckpt" and old["checkpoint_epoch"] == 0
    summary = train(make_cfg(tmp_path, *TINY_RUN, "trainer.max_epochs=3"))  # resumes the run (resume=auto)
    assert summary["best_epoch"] > 0, "this test needs a later best epoch than the one evaluated"
    caplog.set_level(logging.INFO)

    assert main([f"runs=[{run}]", f"out={tmp_path / 'kept'}", "evaluate=false"]) == 0
    (row,) = json.loads((tmp_path / "kept" / "comparison.json").read_text())["runs"]
    assert row["val_miou"] == summary["val/mIoU"] and row["interval"] is None  # the old interval is not used
    assert "not the run's best checkpoint now" in caplog.text and "for the same checkpoint" not in caplog.text

    assert main([f"runs=[{run}]", f"out={tmp_path / 'redone'}"]) == 0
    metrics = json.loads((run / "evaluation" / "val" / "metrics.json").read_text())
    assert metrics["checkpoint_epoch"] == summary["best_epoch"]
    assert metrics["miou"] == pytest.approx(summary["val/mIoU"], abs=1e-4)
    (row,) = json.loads((tmp_path / "redone" / "comparison.json").read_text())["runs"]
    assert row["interval"] == metrics["miou_ci"] and "for the same checkpoint" not in caplog.text


def test_a_run_whose_data_changed_is_refused_with_advice_that_works_from_compare(sweep, tmp_path, caplog):
    """evaluate refuses a run whose files changed since training; compare names the run and the evaluate command
    whose allow_changed_data=true scores it (exit 2, no traceback), and compares it once that has run."""
    run = shutil.copytree(sweep / "2", tmp_path / "changed")
    summary = json.loads((run / "summary.json").read_text())
    summary["provenance"]["data"]["files_fingerprint"] = "0" * 16  # recorded before the files changed
    (run / "summary.json").write_text(json.dumps(summary))
    os.utime(run / "split.json", (0, 0))  # every data file is newer than the split: modified since training
    out = tmp_path / "cmp"
    with caplog.at_level(logging.ERROR):
        assert main([f"runs=[{run}]", f"out={out}"]) == 2
    message = caplog.records[-1].getMessage()
    assert f"{run}: cannot be evaluated" in message and "Traceback" not in caplog.text
    assert f"python -m poc59.evaluate run_dir={run}" in message and "evaluate=false" in message
    assert evaluate_main([f"run_dir={run}", "pictures=false", "bootstrap.resamples=20", "allow_changed_data=true"]) == 0
    assert main([f"runs=[{run}]", f"out={out}"]) == 0
    assert main([f"runs=[{run}]", f"out={tmp_path / 'plain'}", "evaluate=false"]) == 0


def test_a_failed_write_leaves_neither_this_comparison_nor_a_mix_with_the_earlier(sweep, tmp_path, monkeypatch, caplog):
    out = tmp_path / "cmp"
    assert main([f"runs=[{sweep / '0'}]", f"out={out}", "evaluate=false"]) == 0
    assert (out / "comparison.json").exists() and (out / "per_class_iou.png").exists()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report_module, "write_json", full)  # the disk fills after the chart, .md and .csv
    with caplog.at_level(logging.ERROR):
        assert main([f"runs=[{sweep / '0'},{sweep / '2'}]", f"out={out}", "evaluate=false", "overwrite=true"]) == 2
    assert f"out={out}: cannot write there (no space left" in caplog.text and "Traceback" not in caplog.text
    assert sorted(p.name for p in out.iterdir()) == []


def test_repeats_differ_only_in_seed_location_or_speed_and_length_counts():
    """One table (poc59.training.keys) for compare and resume: threads, how the network runs, the progress bar
    and where the cache or checkpoints are make no other configuration; the epochs and the loss do."""
    from poc59.comparison.run import config_key

    def config(**changes):
        tree = {
            "seed": 0,
            "threads": "auto",
            "model": {"compile": False},
            "trainer": {"max_epochs": 5, "enable_progress_bar": True, "default_root_dir": "/runs/a"},
            "data": {"cache_dir": "/cache/a/data", "image_size": 64},
            "callbacks": {"last_checkpoint": {"dirpath": "/runs/a/checkpoints"}},
            "loss": {"_target_": "poc59.model.losses.DiceFocalLoss"},
        }
        for key, value in changes.items():
            node = tree
            *parents, leaf = key.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return config_key(tree, Path("/runs/a"))

    same = config()
    assert config(seed=1, threads=2, model__compile=True, trainer__enable_progress_bar=False) == same
    assert config(data__cache_dir="/cache/b/data", callbacks__last_checkpoint__dirpath="/elsewhere/ckpt") == same
    assert config(trainer__max_epochs=9) != same
    assert config(loss___target_="torch.nn.CrossEntropyLoss") != same
