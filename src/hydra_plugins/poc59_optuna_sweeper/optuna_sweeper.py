"""The Hydra side of poc59's Optuna search: the Sweeper interface over poc59.tracking.search.Search.

Kept in hydra_plugins because Hydra instantiates sweepers from there only; everything else is in
poc59.tracking.search, imported when a search starts (Hydra imports this module whenever it scans plugins).
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Asks Optuna for trials, runs them through the configured launcher, tells Optuna their val/mIoU."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from poc59.tracking.search import Search

        self.hydra_context, self.config = hydra_context, config
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

        def launch(jobs: list[list[str]], first: int) -> Any:
            self.validate_batch_is_legal(jobs)  # a job that cannot compose fails here, before any is started
            return launcher.launch(jobs, initial_job_idx=first)

        self.search = Search(config, launch, **self.settings)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.run(arguments)
