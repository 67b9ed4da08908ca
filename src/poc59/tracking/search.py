"""The Optuna search behind `hydra/sweeper=optuna`; the Hydra plugin (hydra_plugins.poc59_optuna_sweeper)
is a thin shell over `Search`.

Why poc59's own: hydra-optuna-sweeper 1.3.0 (its last release) pins optuna < 3, whose SQLite storage
fails under SQLAlchemy 2, which MLflow 3 needs. This one drives current Optuna and reads the plugin's
search-space syntax, so its examples carry over:

- `hydra.sweeper.params` (and sweeps on the command line): `interval(a, b)` a uniform float range
  (int ends: an int range), `tag(log, interval(a, b))` log-uniform, `range(a, b, step)` a stepped range,
  `choice(x, y, ...)` or `x,y` categorical; a plain value is fixed for every trial.
- The study is kept in `storage` (default: SQLite in the sweep folder, <sweep>/optuna.db) under
  `study_name`: rerunning the same command (experiment=search names its sweep folder after the study)
  adds `n_trials` trials to it instead of starting over. Trials left running by a search that was
  stopped are marked failed; their folders stay.
- Trials go to the configured launcher `n_jobs` at a time (hydra/launcher=slurm: parallel SLURM jobs).
  Trial k runs in <sweep>/<k>, its job number, so no rerun ever writes into another trial's folder.
- The objective is what `train` returns, the best val/mIoU, maximised by default. A cross-validated
  objective: when the sweep holds `data.cv.fold` as a list (experiment=cv), each trial runs every fold
  (job number = trial x folds + fold) and scores the mean of its folds' best val/mIoU.
- At the end: optimization_results.yaml (best trial, value and params, every trial) and two pictures,
  optimization_history.png and param_importances.png.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from omegaconf import DictConfig, OmegaConf

from poc59.analysis.curves import importance_figure, search_history_figure
from poc59.core.atomic import write_bytes
from poc59.core.config import flatten, plain

log = logging.getLogger("poc59.search")

SEARCH_RESULTS = "optimization_results.yaml"
FOLD_KEY = "data.cv.fold"
OBJECTIVE = "best val/mIoU of the trial's run (the mean over its folds for a cross-validated trial)"


def distribution(o: Override) -> Any:
    """The Optuna distribution of one sweep override (None: a fixed value)."""
    import optuna.distributions as d

    if not o.is_sweep_override():
        return None
    value = o.value()
    if o.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return d.CategoricalDistribution(list(o.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return d.FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return d.IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{o.input_line}: not a search space the Optuna sweeper reads")


def search_space(lines: Sequence[str]) -> tuple[dict[str, Any], list[str], list[str] | None]:
    """(distributions by key, fixed overrides, the folds each trial runs or None) of the params and
    command-line overrides."""
    space: dict[str, Any] = {}
    fixed: list[str] = []
    folds = None
    for o in OverridesParser.create().parse_overrides(list(lines)):
        key = o.get_key_element()
        if key == FOLD_KEY and o.is_sweep_override():
            folds = [str(v) for v in o.sweep_iterator(transformer=Transformer.encode)]
            fixed = [f for f in fixed if f.split("=", 1)[0] != FOLD_KEY]
            continue
        found = distribution(o)
        if found is None:
            folds = None if key == FOLD_KEY else folds  # one fold named after the sweep of them: that fold only
            fixed.append(f"{key}={o.get_value_element_as_str()}")
            space.pop(key, None)
        else:
            space[key] = found
    return space, fixed, folds


def trial_overrides(fixed: list[str], params: dict[str, Any]) -> list[str]:
    """The overrides of one trial: the fixed ones, then its params as Hydra reads them back."""
    return [*fixed, *(f"{k}={override_text(v)}" for k, v in params.items())]


def override_text(value: Any) -> str:
    """A param value as an override's value: null, true/false, numbers as Python writes them, text as is."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


class SearchFailed(RuntimeError):
    """No trial of this invocation completed (each trial's error is in optimization_results.yaml)."""


class Search:
    """One invocation of the search: `run(arguments)` asks, launches and tells `n_trials` trials."""

    def __init__(
        self,
        config: DictConfig,
        launch: Callable[[list[list[str]], int], Sequence[Any]],
        *,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        seed: int | None,
        params: dict[str, Any] | None,
    ) -> None:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"hydra.sweeper.direction={direction}: choose maximize or minimize")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be at least 1")
        self.config, self.launch = config, launch
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().resolve()
        self.study_name, self.direction, self.seed = study_name, direction, seed
        self.storage = storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        # a key given on the command line (hydra.sweeper.params.optimizer.lr=...) arrives nested, one written
        # in YAML as "optimizer.lr" flat: flattened, both read the same
        given = plain(params)
        self.params = {k: str(v) for k, v in flatten(given).items()} if given else {}

    def study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            direction=self.direction,
            load_if_exists=True,
        )

    def run(self, arguments: Sequence[str]) -> dict:
        import optuna

        space, fixed, folds = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            raise ValueError(
                "hydra/sweeper=optuna with no search space: give hydra.sweeper.params (see experiment=search)"
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # as Hydra's sweeper: sweep_status finds it
        study = self.study()
        if self.seed is not None:  # a rerun continues with new draws, not the first run's again
            study.sampler = optuna.samplers.TPESampler(seed=int(self.seed) + 1_000_003 * len(study.trials))
        stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        for t in stale:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if stale:
            log.warning("Trials %s were left running by an earlier search: marked failed", [t.number for t in stale])
        before = len(study.trials)
        log.info(
            "Optuna study %r (%s): %d trials so far, %d more, %d at a time; searching %s%s",
            self.study_name,
            self.storage,
            before,
            self.n_trials,
            self.n_jobs,
            ", ".join(space),
            f"; each trial runs folds {','.join(folds)}" if folds else "",
        )
        k = len(folds) if folds else 1
        left, told = self.n_trials, []
        while left > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            left -= len(trials)
            for group in consecutive(trials):
                jobs = [
                    trial_overrides(fixed, t.params) + ([f"{FOLD_KEY}={f}"] if folds else [])
                    for t in group
                    for f in folds or [None]
                ]
                returns = self.launch(jobs, group[0].number * k)
                for i, t in enumerate(group):
                    told.append(self.tell(study, t, returns[i * k : (i + 1) * k]))
        results = self.report(study, space)
        if all(error is not None for error in told):
            raise SearchFailed(f"every trial of this search failed; the first: {told[0]}")
        return results

    def tell(self, study: Any, trial: Any, returns: Sequence[Any]) -> str | None:
        """Tell Optuna the trial's value (the mean over its jobs), or that it failed; returns the error."""
        import optuna

        values, errors = [], []
        for r in returns:
            try:
                value = r.return_value
            except Exception as err:  # the job failed: its error is kept in the trial, the search goes on
                errors.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
                continue
            if value is None or (isinstance(value, float) and math.isnan(value)):
                errors.append("the run returned no val/mIoU (no validation epoch?)")
            else:
                values.append(float(value))
        if errors:
            trial.set_user_attr("error", errors[0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("Trial %d failed: %s", trial.number, errors[0])
            return errors[0]
        study.tell(trial, statistics.fmean(values))
        log.info("Trial %d: %.4f with %s", trial.number, statistics.fmean(values), trial.params)
        return None

    def report(self, study: Any, space: dict[str, Any]) -> dict:
        """optimization_results.yaml and the two pictures; the results as a dict."""
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        results: dict[str, Any] = {
            "name": self.study_name,
            "storage": self.storage,
            "direction": self.direction,
            "objective": OBJECTIVE,
            "n_trials": len(study.trials),
            "n_complete": len(done),
            "best_trial": None,
            "best_value": None,
            "best_params": None,
            "trials": [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "params": dict(t.params),
                    **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
                }
                for t in study.trials
            ],
        }
        if done:
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
            log.info("Best trial %d: %.4f (%s) with %s", best.number, best.value, OBJECTIVE, best.params)
        results["pictures"] = pictures(study, done, self.sweep_dir)
        write_bytes(self.sweep_dir / SEARCH_RESULTS, yaml.safe_dump(results, sort_keys=False).encode())
        log.info("Search results: %s", self.sweep_dir / SEARCH_RESULTS)
        return results


def consecutive(trials: list[Any]) -> list[list[Any]]:
    """Trials split where their numbers jump (another process asked in between): each group is one
    launch, its job numbers following the trial numbers."""
    groups: list[list[Any]] = []
    for t in trials:
        if groups and t.number == groups[-1][-1].number + 1:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def pictures(study: Any, done: list[Any], folder: Path) -> dict[str, str]:
    """optimization_history.png (each trial's value and the best so far) and param_importances.png
    (PED-ANOVA importances, which need no extra dependency, from two or more complete trials)."""
    import optuna

    out: dict[str, str] = {}
    if not done:
        return out
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    title = f"Optuna study {study.study_name}: {OBJECTIVE}"
    path = search_history_figure(
        [t.number for t in done],
        [100 * t.value for t in done],
        maximize,
        folder / "optimization_history.png",
        title,
        "val mIoU (%)",
    )
    out["history"] = path.name
    if len(done) >= 2:
        try:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importance = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError) as err:  # e.g. every trial with the same values
            log.info("No parameter importances: %s", err)
            importance = {}
        if importance:
            path = importance_figure(
                importance,
                folder / "param_importances.png",
                f"Which parameters moved {OBJECTIVE}",
                "importance (PED-ANOVA, share of the total)",
            )
            out["importances"] = path.name
    return out
