"""What the GPU tests share: small generated ARTeFACT-layout folders, the real composed config on one GPU, and
the skip without CUDA.

The tests here are marked `gpu`: deselected by default (pyproject's addopts), run by `pytest -m gpu tests/gpu`,
and skipped with the reason below where CUDA is absent, so they never fail on a CPU machine for want of one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from parity import write_folder
from poc59.core.config import config_dir, register_resolvers

NO_CUDA = "needs a CUDA device (torch.cuda.is_available() is False): run `bash bench/gpu_check.sh` on a GPU machine"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a gpu-marked test without CUDA before its fixtures build anything."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(NO_CUDA)


ONE_GPU = (
    "data=artefact",
    "trainer.accelerator=gpu",
    "trainer.devices=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.val_overlays.k=1",
)
"""The overrides every GPU run shares: one GPU, no progress bar; the precision stays the config's auto one."""


@pytest.fixture(scope="session")
def set_384(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 pairs at 384 px: one training step of a real encoder at the production size."""
    return write_folder(tmp_path_factory.mktemp("set384"), 8, 384)


@pytest.fixture(scope="session")
def set_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 pairs at 128 px: a few steady-state steps of the tiny encoder."""
    return write_folder(tmp_path_factory.mktemp("set128"), 40, 128, seed=1)


@pytest.fixture(scope="session")
def gpu_cfg() -> Callable[..., DictConfig]:
    """conf/train.yaml composed as `python -m poc59.train` does, on one GPU, with a run folder of the test's own."""

    def make(run_dir: Path, *overrides: str) -> DictConfig:
        register_resolvers()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[*ONE_GPU, *overrides])
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
        return cfg

    return make


@pytest.fixture(scope="session")
def gpu_argv() -> Callable[..., list[str]]:
    """The same run as `gpu_cfg` as a command line: `python -m poc59.train ...` (for runs that need their own process)."""

    def make(run_dir: Path, *overrides: str) -> list[str]:
        return [sys.executable, "-m", "poc59.train", *ONE_GPU, *overrides, f"run_dir={run_dir}"]

    return make
