"""`hydra/sweeper=optuna` for poc59 (Hydra finds sweepers in the hydra_plugins namespace only)."""
