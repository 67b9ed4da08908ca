"""Shared fixtures: a private cache, small ARTeFACT-layout folders, the real composed config."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from slurm_cluster import slurm  # noqa: F401  (the session fixture of the SLURM tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a model hub
torch.set_num_threads(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never touch the user's ~/.cache/poc59 (unless POC59_TEST_CACHE names one to reuse)."""
    cache = Path(os.environ.get("POC59_TEST_CACHE") or tmp_path_factory.mktemp("poc59-cache"))
    os.environ["POC59_CACHE"] = str(cache)
    return cache


# The shared trained run: its path once built, and what its files were then (see `trained_run`).
_trained: dict[str, object] = {}


def _files(run: Path) -> dict[str, tuple[int, int]]:
    """Every file under `run`: relative path -> (size, modification time in ns)."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """One tiny real run folder, trained once per pytest session, for every test that needs a trained run
    (evaluate, predict, export, compare, ensembles, loading checkpoints).

    What it holds: the run `python -m poc59.train <helpers.TRAINED_RUN>` trains (encoder=tiny, 10 synthetic images
    at 64 px in the ARTeFACT class table, 20% held out as a test split, 2 epochs of 3 steps, so best.ckpt is one
    of two epochs), trained in-process by `poc59.training.run.train`: checkpoints/best.ckpt and last.ckpt,
    summary.json, split.json, config.yaml, model_card.json, class_weights.json, the loggers' folders. Its data
    lies in the private cache (`private_cache`) of the process that built it. It has no .hydra/ (train records
    that only when started through Hydra) and no evaluation/.

    The xdist workers of a session share it too: the first worker that needs it trains it, the others read it
    (and its data, in the first worker's cache). It must stay as built: a test that writes into a run (evaluate
    writes evaluation/ into the run it scores, a resume adds epochs, a test that damages a file) copies it first,
    `run = Path(shutil.copytree(trained_run, tmp_path / "run"))` (or the `trained_run_copy` fixture), and a
    module-scoped fixture copies it under `tmp_path_factory.mktemp(...)`. Every test is checked after it
    runs: one that changed, added or removed a file of the shared run fails, naming the files.
    """
    from helpers import TRAINED_RUN, make_cfg
    from poc59.training.run import train

    home = _built_once(tmp_path_factory, pytestconfig, "trained_run", lambda h: train(make_cfg(h, *TRAINED_RUN)))
    run = home / "run"
    _trained.update(run=run, files=_files(run))
    return run


def _built_once(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config, name: str, build: Callable[[Path], None]
) -> Path:
    """The folder `name` that `build(folder)` fills, built once per pytest session.

    Under xdist the session's workers share one build: the first to need it builds it under a lock in the
    session's folder (above each worker's own), the others wait for it or find it done. A worker is known by
    its config, not by PYTEST_XDIST_WORKER: a pytest started from a worker's test inherits that variable, and
    its folder's parent is pytest's root for every session, where another session's build may lie."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if hasattr(pytestconfig, "workerinput"):
        shared = shared.parent
    home, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(home, ignore_errors=True)  # a build that failed on another worker, started again
            build(home)
            done.touch()
    return home


@pytest.fixture(scope="session")
def crop_ckpt(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A tiny native-scale (crop) model's best.ckpt, 128 px tiles, trained for 2 steps on 6 CrackForest
    photographs (`data.max_side=480`), once per pytest session like `trained_run`; the predict tests read it."""
    from helpers import CRACKFOREST, make_cfg
    from poc59.training.run import train

    def build(home: Path) -> None:
        root = home / "crackforest"
        for sub in ("images", "annotations"):
            (root / sub).mkdir(parents=True)
        shutil.copy(CRACKFOREST / "classes.json", root)
        for i in range(1, 7):
            shutil.copy(CRACKFOREST / "images" / f"{i:03d}.jpg", root / "images")
            shutil.copy(CRACKFOREST / "annotations" / f"{i:03d}.png", root / "annotations")
        cfg = make_cfg(
            home,
            "encoder=tiny",
            "data=artefact",
            f"data.root={root}",
            "data.image_size=128",
            "data.batch_size=8",
            "data.policy=crop",
            "data.max_side=480",
            "trainer.enable_progress_bar=false",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
        )
        train(cfg)

    return _built_once(tmp_path_factory, pytestconfig, "crop_ckpt", build) / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture
def trained_run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of `trained_run` under this test's tmp_path, free to modify."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(autouse=True)
def _trained_run_unchanged(request: pytest.FixtureRequest):
    """Fails the test after which the shared `trained_run` differs from what was built (see its docstring)."""
    yield
    if "run" not in _trained:
        return
    before, after = _trained["files"], _files(_trained["run"])
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        _trained["files"] = after  # name the culprit once, not every test after it
        pytest.fail(
            f"{request.node.nodeid} changed the shared trained_run ({', '.join(changed)}): copy it first, "
            "shutil.copytree(trained_run, tmp_path / 'run') or the trained_run_copy fixture (under xdist the "
            "change may come from a test running beside it on another worker, named by that worker's failure)",
            pytrace=False,
        )
