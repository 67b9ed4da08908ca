"""`logger=mlflow`: Lightning's MLFlowLogger bound to one poc59 run folder.

- The store: `tracking_uri` (a team's `http://host:port`, or by default SQLite in the outputs folder,
  `sqlite:///outputs/mlflow.db`, its artifacts beside it in `mlartifacts/`); a relative SQLite path is made
  absolute, so evaluate run from elsewhere finds the same store.
- One MLflow run per poc59 run: its id is kept in <run>/tracking.json, and a resumed run (or a requeued
  job) reopens it instead of opening a second one.
- Params: the composed config, flattened (`data.image_size` = 384), once; a resumed run adds keys that are
  new and keeps the first values of changed ones (MLflow refuses to change a param), naming them in the
  tag `poc59.changed_on_resume`. Tags: encoder, family, decoder, run folder, git commit, split fingerprint.
- Metrics: every metric the CSV gets, per-class IoU by class name (`val/IoU/Burn marks`), at the global
  step; at the end the run's best figures; artifacts: summary.json, class_weights.json, split.json, the
  model card, the training curves. Only rank 0 sends anything (Lightning's loggers are rank-zero).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from poc59.tracking.record import RunTracker, metric_name, read, remember

log = logging.getLogger(__name__)

NAME = "mlflow"


def absolute_uri(uri: str) -> str:
    """A `sqlite:///relative/path` made absolute (its folder created); other URIs as given."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix) :]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def default_artifacts(uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite store (MLflow would put them under the current folder); None: the server's."""
    prefix = "sqlite:///"
    return str(Path(uri[len(prefix) :]).parent / "mlartifacts") if uri.startswith(prefix) else None


class MLflowTracker(RunTracker, MLFlowLogger):
    """One poc59 run as one MLflow run (see the module docstring)."""

    def __init__(
        self,
        run_dir: str,
        tracking_uri: str,
        experiment_name: str = "poc59",
        run_name: str | None = None,
        artifact_location: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        uri = absolute_uri(tracking_uri)
        earlier = read(self.run_dir).get(NAME)
        run_id = None
        if earlier and earlier.get("tracking_uri") == uri:
            run_id = earlier["run_id"]
        elif earlier:
            log.warning(
                "%s was tracked at %s; logger.mlflow.tracking_uri is now %s: this attempt opens a new MLflow run",
                self.run_dir,
                earlier.get("tracking_uri"),
                uri,
            )
        self.resumed = run_id is not None
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or self.run_dir.name,
            tracking_uri=uri,
            artifact_location=artifact_location or default_artifacts(uri),
            run_id=run_id,
        )

    @rank_zero_only
    def begin(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """Open (or reopen) the run, keep its id in <run>/tracking.json, log the params and tags."""
        from mlflow.entities import Param, RunTag

        client = self.experiment
        if self.resumed:
            client.update_run(self.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s (%s)", self.run_id, self._tracking_uri)
        else:
            log.info("MLflow: run %s in experiment %r at %s", self.run_id, self._experiment_name, self._tracking_uri)
        remember(
            self.run_dir,
            NAME,
            {"tracking_uri": self._tracking_uri, "experiment_id": self.experiment_id, "run_id": self.run_id},
        )
        logged = client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        for i in range(0, len(new), 100):
            client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            log.warning("MLflow keeps the first values of params changed on resume: %s", ", ".join(changed))
            tags = {**tags, "poc59.changed_on_resume": ",".join(changed)[:5000]}
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @rank_zero_only
    def complete(self, metrics: dict[str, float], files: list[Path]) -> None:
        """The run's final figures and records (see the module docstring)."""
        add(read(self.run_dir)[NAME], metrics, files, "run")


def add(entry: dict, metrics: dict[str, float], files: list[Path], under: str) -> None:
    """Metrics and files added to the MLflow run of `entry` (a tracking.json record), files under `under`."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(entry["tracking_uri"])
    now = int(time.time() * 1000)
    batch = [Metric(metric_name(k), float(v), now, 0) for k, v in metrics.items() if v is not None]
    for i in range(0, len(batch), 1000):
        client.log_batch(entry["run_id"], metrics=batch[i : i + 1000])
    for f in files:
        client.log_artifact(entry["run_id"], str(f), under)
