"""A killed run continues from last.ckpt with the same command; a changed configuration is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY_RUN
from poc59.training.checkpointing import AtomicCheckpointIO
from poc59.training.resume import changed_keys

TINY = TINY_RUN


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    # threads=2: results are bit-identical at one thread count; auto would leave out a core that other work
    # keeps busy when one of the runs starts
    return [sys.executable, "-m", "poc59.train", *TINY, f"run_dir={run_dir}", "threads=2", *extra]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run of `_cmd`, trained once by the real command (so it has its .hydra/ records) for
    the tests that resume, refuse or damage a run: each works on its own copy (`_copy`), as a user's copied run
    resumes in place (tests/training/test_run_folder.py checks that a copy resumes as its original would)."""
    run_dir = tmp_path_factory.mktemp("two-epochs") / "run"
    first = subprocess.run(_cmd(run_dir, "trainer.max_epochs=2"), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    return run_dir


def _copy(run: Path, tmp_path: Path) -> Path:
    """`run` copied to tmp_path/run, every file's bytes and modification time kept (cp -a)."""
    subprocess.run(["cp", "-a", str(run), str(tmp_path / "run")], check=True)
    return tmp_path / "run"


def _epoch_of(ckpt: Path) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # not there yet
        return -1


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_and_runs_each_epoch_once(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = _cmd(run_dir, "trainer.max_epochs=5")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while _epoch_of(last) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _epoch_of(last)
    assert killed_at >= 1 and not (run_dir / "summary.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stderr and "last.ckpt" in again.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3, 4]  # none lost, none repeated
    assert summary["epochs_run"] == 5
    assert not list(run_dir.glob("checkpoints/.*tmp"))


def _tensors(tree, prefix=""):
    """Every tensor and number of a checkpoint, by its path, for an exact comparison."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: torch.tensor(tree)}
    return {}


def term_callback():
    """A Lightning callback that sends its own process SIGTERM (what SLURM sends at preemption, a time limit or
    scancel) as epoch `$POC59_TEST_TERM_AT` starts, and does nothing without that variable
    (`+callbacks.term._target_=test_resume.term_callback`)."""
    import lightning as L

    class Term(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if str(trainer.current_epoch) == os.environ.get("POC59_TEST_TERM_AT"):
                os.kill(os.getpid(), signal.SIGTERM)

    return Term()


STOPS = {  # how a run is stopped as epoch 2 starts: (callback, its variable, the exit status it ends with)
    "SIGKILL": ("helpers.kill_callback", "POC59_TEST_KILL_AT", -signal.SIGKILL),
    "SIGTERM": ("test_resume.term_callback", "POC59_TEST_TERM_AT", 128 + signal.SIGTERM),
}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch run of `_cmd` never stopped, with no stop callback: the reference every stopped and resumed
    run is compared with (one for both ways of stopping; the callbacks do nothing until their variable names
    an epoch, and hold no state a checkpoint records)."""
    run_dir = tmp_path_factory.mktemp("unbroken") / "run"
    done = subprocess.run(_cmd(run_dir, "trainer.max_epochs=3"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("stop", sorted(STOPS))
def test_a_stopped_and_resumed_run_ends_exactly_as_an_unbroken_one(tmp_path, stop, unbroken):
    """Weights, optimizer moments, scheduler, augmentation generator and every epoch's figures: a run killed
    (SIGKILL) or terminated (SIGTERM: exit 143, where it stopped and the resume command logged) at an epoch
    start and resumed is bit-identical to one that was never stopped (augmentation and OneCycle on)."""
    target, variable, status = STOPS[stop]
    here = Path(__file__).resolve().parent
    path = [str(here.parent), str(here), os.environ.get("PYTHONPATH")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` is this one
    }
    extra = ("trainer.max_epochs=3", f"+callbacks.stop._target_={target}")
    broken = tmp_path / "broken"
    stopped = subprocess.run(
        _cmd(broken, *extra), capture_output=True, text=True, timeout=300, env={**env, variable: "2"}
    )
    assert stopped.returncode == status, stopped.stderr[-3000:]
    assert _epoch_of(broken / "checkpoints" / "last.ckpt") == 1  # epochs 0 and 1 done
    at_kill = next(
        v
        for k, v in _tensors(torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False)).items()
        if "aug_generator" in k
    )
    again = _cmd(broken, *extra)
    if stop == "SIGTERM":  # it says where it stopped, and the command it prints continues the run, pasted as it is
        assert stopped.stdout == "" and not (broken / "summary.json").exists()
        said = stopped.stderr.split("Stopped by SIGTERM", 1)[1]
        assert said.startswith(" (preemption, a time limit or scancel) in epoch 2 at step ")
        again = ["bash", "-c", said.split("Continue with:\n", 1)[1].splitlines()[0].strip()]
    resumed = subprocess.run(again, capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0 and "Resuming from" in resumed.stderr, resumed.stderr[-3000:]

    a = torch.load(unbroken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["optimizer_states"][0]["state"] and a["lr_schedulers"]  # Adam moments and OneCycle are compared
    aug = [v for k, v in _tensors(a).items() if "aug_generator" in k]
    assert len(aug) == 1  # and the augmentation generator's state, moved on by the last epoch's draws
    assert not torch.equal(aug[0], at_kill)
    timing = ("elapsed_s", "/epochs/", "time")  # seconds differ between two runs; nothing else may
    ta = {k: v for k, v in _tensors(a).items() if not any(t in k for t in timing)}
    tb = {k: v for k, v in _tensors(b).items() if not any(t in k for t in timing)}
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:10]
    history = [json.loads((d / "summary.json").read_text())["history"] for d in (unbroken, broken)]
    assert history[0] == history[1] and len(history[0]) == 3


@pytest.mark.slow
def test_resume_with_a_changed_learning_rate_is_refused_and_never_starts_over(tmp_path, two_epochs):
    run_dir = _copy(two_epochs, tmp_path)
    changed = subprocess.run(
        _cmd(run_dir, "trainer.max_epochs=3", "optimizer.lr=0.05"), capture_output=True, text=True, timeout=300
    )
    assert changed.returncode == 2
    assert "optimizer.lr" in changed.stderr and "resume=never" in changed.stderr
    assert "optimizer.scheduler" not in changed.stderr
    # more epochs alone is a safe change: the run continues, after a refused start too (`longer` in
    # test_a_refused_start_changes_nothing_and_a_rerun_of_a_finished_run_keeps_its_figures)
    fresh = subprocess.run(
        _cmd(run_dir, "trainer.max_epochs=1", "resume=never"), capture_output=True, text=True, timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (tmp_path / "run-2" / "summary.json").exists()


def test_changed_keys_ignores_only_safe_keys():
    # what the validation measures is not safe to change: val/mIoU and best.ckpt would mean another thing
    lowered = changed_keys({"trainer": {"limit_val_batches": 1.0}}, {"trainer": {"limit_val_batches": 0.5}})
    assert "trainer.limit_val_batches" in lowered
    old = {"optimizer": {"lr": 0.1}, "trainer": {"max_epochs": 5}, "paths": {"run_dir": "/a"}}
    new = {
        "optimizer": {"lr": 0.2},
        "trainer": {"max_epochs": 9},
        "paths": {"run_dir": "/b"},
        "seed": 1,
        "callbacks": {
            "val_overlays": {"_target_": "poc59.training.overlays.ValidationOverlays", "k": 4},  # added later
            "progress_bar": {"refresh_rate": 10},
        },
    }
    assert changed_keys(old, new) == {"optimizer.lr": (0.1, 0.2), "seed": (None, 1)}
    # a key added after the run began: resumes at the value that keeps the old behaviour, not at another
    assert changed_keys(old, {**old, "data": {"allow_large_images": False}}) == {}
    assert changed_keys(old, {**old, "data": {"allow_large_images": True}}) == {"data.allow_large_images": (None, True)}


def test_a_run_started_with_lightnings_checkpoint_callbacks_resumes_with_poc59s():
    lightning, poc59 = "lightning.pytorch.callbacks.ModelCheckpoint", "poc59.training.checkpointing.RunCheckpoint"
    callbacks = lambda own, extra: {  # noqa: E731
        "callbacks": {n: {"_target_": own} for n in ("model_checkpoint", "last_checkpoint")}
        | {"mine": {"_target_": extra}}
    }
    assert changed_keys(callbacks(lightning, lightning), callbacks(poc59, lightning)) == {}
    assert changed_keys(callbacks(lightning, lightning), callbacks(poc59, poc59)) == {
        "callbacks.mine._target_": (lightning, poc59)  # a checkpoint callback of the user's own is compared
    }


def test_window_sampling_matters_to_resume_only_under_crop():
    """rare_fraction's default became 0.25: a resize run from before resumes (it has no windows); a crop
    run does not, since its windows would change."""
    before = {"data": {"policy": "resize"}}
    now = {"data": {"policy": "resize", "crop_sampling": {"rare_fraction": 0.25}}}
    assert changed_keys(before, now) == {}
    crop = {"data": {"policy": "crop", "crop_sampling": {"rare_fraction": 0.0}}}
    assert changed_keys(crop, {"data": {"policy": "crop", "crop_sampling": {"rare_fraction": 0.25}}}) == {
        "data.crop_sampling.rare_fraction": (0.0, 0.25)
    }
    assert (
        changed_keys(
            {"data": {"policy": "crop"}}, {"data": {"policy": "crop", "crop_sampling": {"rare_fraction": 0.0}}}
        )
        == {}
    )
    assert "data.policy" in changed_keys(before, {"data": {"policy": "crop", "crop_sampling": {"rare_fraction": 0.25}}})


def test_checkpoint_writes_leave_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    assert torch.load(path, weights_only=False)["epoch"] == 1

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device") as failed:
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert failed.value.filename == str(path)  # the error names the checkpoint it could not write
    assert torch.load(path, weights_only=False)["epoch"] == 1  # the previous checkpoint survives
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def _records(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder except the log (a log records each attempt, refused ones too)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != "train.log" and "tensorboard" not in p.parts and "csv" not in p.parts
    }


@pytest.mark.slow
def test_a_refused_start_changes_nothing_and_a_rerun_of_a_finished_run_keeps_its_figures(tmp_path, two_epochs):
    run_dir = _copy(two_epochs, tmp_path)
    assert (run_dir / ".hydra" / "overrides.yaml").exists() and (run_dir / ".hydra" / "hydra.yaml").exists()
    before = _records(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_images_per_s"] and summary["wall_time_s"] > 0

    refused = subprocess.run(
        _cmd(run_dir, "trainer.max_epochs=2", "optimizer.lr=0.05"), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "resume=never" in refused.stderr
    assert _records(run_dir) == before  # .hydra/ included: the refused settings are recorded nowhere
    assert "refusing to resume it with" in (run_dir / "train.log").read_text()  # the log notes the attempt

    rerun = subprocess.run(_cmd(run_dir, "trainer.max_epochs=2"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already trained to the end" in rerun.stderr
    assert json.loads((run_dir / "summary.json").read_text()) == summary  # every figure as it was

    longer = subprocess.run(_cmd(run_dir, "trainer.max_epochs=3"), capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-3000:]
    grown = json.loads((run_dir / "summary.json").read_text())
    assert [h["epoch"] for h in grown["history"]] == [0, 1, 2]
    assert grown["wall_time_s"] > summary["wall_time_s"]  # the time of all the training, not of the last attempt
    assert grown["train_images_per_s"] is not None


@pytest.mark.slow
def test_a_truncated_last_checkpoint_stops_with_the_file_and_the_ways_on(tmp_path, two_epochs):
    run_dir = _copy(two_epochs, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short, as a full disk leaves it
    again = subprocess.run(_cmd(run_dir, "trainer.max_epochs=3"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr[-3000:]
    said = " ".join(again.stderr.split())
    assert f"{last} is damaged" in said and "resume=never" in said and "Traceback" not in said
    assert f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}" in said  # the intact one, named
    continued = subprocess.run(
        _cmd(run_dir, "trainer.max_epochs=3", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert continued.returncode == 0, continued.stderr[-3000:]


@pytest.mark.slow
def test_raising_max_epochs_on_resume_stretches_the_schedule_to_the_new_end(tmp_path, two_epochs):
    """OneCycle over the new length: after the peak the lr only falls, and it ends near its floor (it used to
    climb back up past the old end, the phases keeping the old total)."""
    import csv

    run_dir = _copy(two_epochs, tmp_path)
    longer = subprocess.run(_cmd(run_dir, "trainer.max_epochs=6"), capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "the schedule is stretched from" in longer.stderr
    rows = []
    for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with f.open() as fh:
            rows += [(int(r["step"]), float(r["lr-AdamW"])) for r in csv.DictReader(fh) if r.get("lr-AdamW")]
    lrs = [lr for _, lr in sorted(set(rows))]
    resumed = [lr for step, lr in sorted(set(rows)) if step >= max(s for s, _ in rows) // 3]
    peak = max(lrs)
    after_peak = resumed[resumed.index(max(resumed)) :]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(after_peak, after_peak[1:])), after_peak  # never climbs again
    assert lrs[-1] < 0.05 * peak  # ends near the floor of the stretched schedule


@pytest.mark.slow
def test_a_resumed_run_keeps_the_split_it_was_trained_on(tmp_path):
    """The split is read back from the run's split.json on resume, never made again: whatever changed in
    between (here the file itself, edited on purpose; in life a newer poc59's stratification) the images
    of each side stay those the run began with."""
    run_dir = tmp_path / "run"
    two_val = "data.val_fraction=0.34"  # 2 of the 6 source images
    first = subprocess.run(_cmd(run_dir, "trainer.max_epochs=1", two_val), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val"]) == 2
    moved = split["val"].pop()
    split["train"].append(moved)
    del split["fingerprint"]  # a deliberate edit (see poc59.data.split.from_dict)
    (run_dir / "split.json").write_text(json.dumps(split))
    longer = subprocess.run(_cmd(run_dir, "trainer.max_epochs=2", two_val), capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "Split read from" in longer.stderr and str(run_dir / "split.json") in longer.stderr
    kept = json.loads((run_dir / "split.json").read_text())
    assert moved in kept["train"] and moved not in kept["val"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["provenance"]["data"]["val_images"] == len(split["val"])


@pytest.mark.slow
def test_a_damaged_last_checkpoint_advises_the_best_checkpoint_the_run_records(tmp_path):
    """A run whose summary.json records best-v1.ckpt (trained before one best.ckpt per run): that is its best."""
    import zipfile

    from poc59.training.resume import ResumeConfigError, check_intact

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    for name in ("best.ckpt", "best-v1.ckpt"):  # the older best beside the recorded one
        with zipfile.ZipFile(folder / name, "w") as z:
            z.writestr("archive/data.pkl", b"x")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"checkpoint": {"best": "/elsewhere/best-v1.ckpt"}}))
    with pytest.raises(ResumeConfigError) as refused:
        check_intact(folder / "last.ckpt")
    assert f"ckpt_path={folder / 'best-v1.ckpt'} to continue" in str(refused.value)


def _synthetic_config(cache: str, **data) -> dict:
    """The resolved config keys that follow $POC59_CACHE, as a run's config.yaml holds them."""
    return {
        "paths": {"cache_dir": cache, "weights_dir": f"{cache}/weights"},
        "data": {
            "root": f"{cache}/synthetic/n6-aug3-seed0",
            "cache_dir": f"{cache}/data",
            "synthetic": {"n": 6, "aug_copies": 3, "seed": 0},
            **data,
        },
        "trainer": {"default_root_dir": "/runs/r1"},
        "callbacks": {"last_checkpoint": {"dirpath": "/runs/r1/checkpoints"}},
    }


def test_a_moved_cache_is_a_location_and_the_data_settings_still_count():
    """The synthetic set and the preload cache follow $POC59_CACHE: another cache is the same data (split.json's
    fingerprint guards them), and the keys that say which data are still compared."""
    assert changed_keys(_synthetic_config("/cache/a"), _synthetic_config("/cache/b")) == {}
    more = _synthetic_config("/cache/b")
    more["data"]["synthetic"]["n"] = 7
    assert changed_keys(_synthetic_config("/cache/a"), more) == {"data.synthetic.n": (6, 7)}
    # a folder of the user's own is what is trained on: another one is another run
    real = {"data": {"root": "/data/set-a", "synthetic": None}}
    assert changed_keys(real, {"data": {"root": "/data/set-b", "synthetic": None}}) == {
        "data.root": ("/data/set-a", "/data/set-b")
    }


def test_the_keys_resume_ignores_are_the_table_s_locations_lengths_and_speeds():
    from poc59.training import keys

    base = {"encoder": {"name": "tu-lcnet_050"}}
    for key in ("data.cache_dir", "trainer.default_root_dir", "callbacks.mine.dirpath", "threads", "module.compile"):
        assert keys.kind(key, {}) in (keys.LOCATION, keys.SPEED), key
        assert changed_keys(base, {**base, **_nested(key, "x")}) == {}, key
    for key in ("seed", "data.cv.fold", "optimizer.lr", "loss._target_", "data.image_size"):
        assert keys.kind(key, {}) in (keys.IDENTITY, keys.REPEAT), key
        assert key in changed_keys(base, {**base, **_nested(key, "x")}), key


def _nested(key: str, value):
    """{"a": {"b": {"c": value}}} for "a.b.c"."""
    tree = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


@pytest.mark.slow
def test_a_run_resumes_after_poc59_cache_moved(tmp_path, monkeypatch):
    """POC59_CACHE changed between a run's start and its resume: the synthetic set is generated into the new
    cache, it is the same data (split.json's fingerprint), and the run continues instead of being refused on
    data.root and data.cache_dir."""
    from helpers import make_cfg
    from poc59.training.run import train

    overrides = (*TINY_RUN, "trainer.limit_train_batches=1", "callbacks.val_overlays=null", "threads=1")
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache-a"))
    first = train(make_cfg(tmp_path, *overrides, "trainer.max_epochs=1"))
    monkeypatch.setenv("POC59_CACHE", str(tmp_path / "cache-b"))
    again = train(make_cfg(tmp_path, *overrides, "trainer.max_epochs=2"))
    assert [h["epoch"] for h in again["history"]] == [0, 1]  # epoch 0 from the first attempt
    assert (tmp_path / "cache-b" / "synthetic").is_dir()
    data = first["provenance"]["data"]
    assert again["provenance"]["data"]["split_fingerprint"] == data["split_fingerprint"]
