"""hydra/sweeper=optuna (poc59.tracking.search) as a user runs it: a 3-trial search with the local launcher,
a rerun that adds trials to the same SQLite study, a cross-validated objective, failed trials, compare on
the search, and a 2-trial search on the real single-node SLURM cluster."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import TINY_RUN
from in_process import command
from poc59.tracking.search import search_space

TINY = [*TINY_RUN, "trainer.max_epochs=1"]


def _search(cwd: Path, *overrides: str, env: dict | None = None, base: list[str] = TINY) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "poc59.train", "experiment=search", *base, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="search", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


def _value(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["val/mIoU"]


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_a_search_tells_each_trial_its_val_miou_and_a_rerun_adds_trials(tmp_path, capsys, monkeypatch):
    first = _search(tmp_path, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "outputs" / "searches" / "search"
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # trial k ran in folder k with its own params, and was told that run's best val/mIoU
        assert t.value == pytest.approx(_value(sweep / str(t.number)))
        overrides = yaml.safe_load((sweep / str(t.number) / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.lr={t.params['optimizer.lr']!r}" in overrides
        config = yaml.safe_load((sweep / str(t.number) / "config.yaml").read_text())
        assert config["loss"]["dice_weight"] == pytest.approx(t.params["loss.dice_weight"])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(trials, key=lambda t: t.value)
    assert results["best_trial"] == best.number and results["best_params"] == best.params
    assert (sweep / "optimization_history.png").stat().st_size > 0 and (sweep / "param_importances.png").is_file()

    again = _search(tmp_path, "hydra.sweeper.n_trials=1")  # the same command: the same study, one more trial
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(sweep)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    assert (sweep / "3" / "summary.json").is_file()
    assert {t.params["optimizer.lr"] for t in trials[3:]}.isdisjoint(t.params["optimizer.lr"] for t in trials[:3])
    assert trials[0].value == pytest.approx(_value(sweep / "0"))  # no rerun wrote into an earlier trial's folder

    # compare's own process is tested elsewhere (tests/test_command_output.py): here it answers in this one
    compared = command("compare", [f"sweep={sweep}", "evaluate=false"], capsys, monkeypatch)
    assert compared.returncode == 0, compared.stderr[-3000:]
    best = max(trials, key=lambda t: t.value)
    report = (sweep / "comparison" / "comparison.md").read_text()
    assert f"Optuna study search: best trial {best.number} of 4 (4 complete)" in report
    assert f"optimizer.lr={best.params['optimizer.lr']}" in report
    assert json.loads((sweep / "comparison" / "comparison.json").read_text())["search"]["best_trial"] == best.number


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_a_cross_validated_trial_runs_every_fold_and_scores_their_mean(tmp_path):
    run = _search(tmp_path, "experiment=[cv,search]", "data.cv.folds=2", "hydra.sweeper.n_trials=1")
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = tmp_path / "outputs" / "searches" / "search"
    (trial,) = _trials(sweep)
    folds = [yaml.safe_load((sweep / str(n) / "config.yaml").read_text())["data"]["cv"]["fold"] for n in (0, 1)]
    assert folds == [0, 1]
    assert trial.value == pytest.approx(statistics.fmean([_value(sweep / "0"), _value(sweep / "1")]))


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_failed_trials_are_kept_with_their_error_and_a_search_of_only_failures_fails(tmp_path):
    empty = tmp_path / "nowhere"  # a folder with no image: every job fails as it reads it (not at submit time)
    (empty / "images").mkdir(parents=True)
    (empty / "annotations").mkdir()
    base = [o for o in TINY if not o.startswith("data.synthetic")]
    run = _search(tmp_path, "data=artefact", f"data.root={empty}", "hydra.sweeper.n_trials=2", base=base)
    assert run.returncode != 0
    assert "every trial of this search failed" in run.stderr
    sweep = tmp_path / "outputs" / "searches" / "search"
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("nowhere" in t.user_attrs["error"] for t in trials)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["n_complete"] == 0 and "nowhere" in results["trials"][0]["error"]


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_a_two_trial_search_on_slurm_runs_its_trials_as_parallel_jobs(slurm, tmp_path, capsys, monkeypatch):
    run = _search(
        tmp_path,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm.partition}",
        "hydra.launcher.timeout_min=20",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        env=slurm.env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = tmp_path / "outputs" / "searches" / "search"
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert [t.value for t in trials] == pytest.approx([_value(sweep / "0"), _value(sweep / "1")])
    for key, value in slurm.env.items():  # sweep_status asks the same cluster
        monkeypatch.setenv(key, value)
    # what is checked is what sweep_status reads of the sweep, so it answers in this process
    status = command("sweep_status", [f"sweep={sweep}", "json=true"], capsys, monkeypatch)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["counts"]["finished"] == 2
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")  # one SLURM array: the two trials at once
    assert "#SBATCH --array=0-1%2" in script.read_text()  # both tasks may run at once (n_jobs=2)


def test_the_search_space_reads_the_plugin_syntax_and_the_folds():
    space, fixed, folds = search_space(
        [
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "loss.dice_weight=interval(0.2, 0.8)",
            "trainer.max_epochs=range(2, 8, 2)",
            "encoder=choice(tiny, cpu_small)",
            "data.cv.fold=${cv_folds:}",  # experiment=cv's params, before they resolve
            "data.cv.fold=0,1,2",  # the folds train.py writes out
            "seed=3",
        ]
    )
    assert space["optimizer.lr"].log and (space["optimizer.lr"].low, space["optimizer.lr"].high) == (1e-4, 1e-2)
    assert not space["loss.dice_weight"].log
    assert (space["trainer.max_epochs"].low, space["trainer.max_epochs"].high, space["trainer.max_epochs"].step) == (
        2,
        6,
        2,
    )
    assert space["encoder"].choices == ("tiny", "cpu_small")
    assert folds == ["0", "1", "2"] and fixed == ["seed=3"]  # no stale fold override rides along
    _, fixed, folds = search_space(["data.cv.fold=0,1,2", "data.cv.fold=1", "optimizer.lr=interval(0.1, 0.2)"])
    assert folds is None and fixed == ["data.cv.fold=1"]  # one fold named: that fold only
