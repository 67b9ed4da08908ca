"""Experiment trackers and the hyperparameter search: a run's identity in MLflow or W&B (kept in
<run>/tracking.json, so that a resumed run, evaluate and compare add to the same tracked run), what a run
sends at its start and end, and the Optuna study behind `hydra/sweeper=optuna`. Nothing here imports a
tracker until one is configured."""
