"""Shared fixtures: a private cache, small ARTeFACT-layout folders, the real composed config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from slurm_cluster import slurm  # noqa: F401  (the session fixture of the SLURM tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a model hub
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never touch the user's ~/.cache/poc59 (unless POC59_TEST_CACHE names one to reuse)."""
    cache = Path(os.environ.get("POC59_TEST_CACHE") or tmp_path_factory.mktemp("poc59-cache"))
    os.environ["POC59_CACHE"] = str(cache)
    return cache
