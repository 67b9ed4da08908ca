"""Small test helpers: ARTeFACT-layout folders written by the tests themselves, and the real composed config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig
from PIL import Image

from poc59.core.overrides import compose_train

# A small real set shipped inside the repository (tests/fixtures/crackforest/README.md: source, licence), so the
# suite needs nothing outside the checkout.
CRACKFOREST = Path(__file__).resolve().parent / "fixtures" / "crackforest"


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray, image_ext: str = ".png") -> None:
    """Write one image/mask pair in the ARTeFACT layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask.astype(np.uint8), "L").save(root / "annotations" / f"{stem}.png")


def make_folder(
    root: Path, n: int = 6, copies: int = 2, size: tuple[int, int] = (40, 32), classes: int = 4, seed: int = 0
) -> Path:
    """n originals (+ copies named <id>_augK) with random images and blocky masks, some 255."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.kron(rng.integers(0, classes, (h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
        mask[:2] = 255
        write_pair(root, f"img{i:03d}", image, mask)
        for k in range(1, copies + 1):  # distinct copies: horizontal, vertical, both flips
            flip = {
                1: (slice(None), slice(None, None, -1)),
                2: (slice(None, None, -1),),
                0: (slice(None, None, -1), slice(None, None, -1)),
            }[k % 3]
            write_pair(root, f"img{i:03d}_aug{k}", np.ascontiguousarray(image[flip]), np.ascontiguousarray(mask[flip]))
    return root


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """The real config with a private run folder, as `python -m poc59.train <overrides>` would compose it."""
    return compose_train(overrides, run_dir=tmp_path / "run")


SMALL = (
    "encoder=tiny",
    "data.synthetic.n=10",
    "data.image_size=64",
    "data.batch_size=8",
    "trainer.enable_progress_bar=false",  # drops the Rich progress bar callback too (Lightning refuses both)
)


TRAINED_RUN = (  # the session's shared `trained_run` (tests/conftest.py): best.ckpt one of two epochs, a test split
    *SMALL,
    "data.test_fraction=0.2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
)


TINY_RUN = [  # a tiny run from the command line: seconds an epoch on one CPU (resume, requeue)
    "encoder=tiny",
    "data.synthetic.n=6",
    "data.image_size=64",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "trainer.num_sanity_val_steps=0",
]


def write_multirun(sweep: Path, task: list[str]) -> None:
    """The multirun.yaml Hydra writes at the top of a sweep of the basic sweeper over `task` overrides."""
    cfg = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": None,
            },
            "overrides": {"task": task},
            "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"},
        }
    }
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(cfg))


class PlantedBug(Exception):
    """What `boom_callback`'s callback raises: a stand-in for a bug in poc59 (not a user error)."""


def boom_callback():
    """A Lightning callback that fails as a bug would once training starts
    (`+callbacks.boom._target_=helpers.boom_callback`, with tests/ on PYTHONPATH)."""
    import lightning as L

    class Boom(L.Callback):
        def on_train_start(self, trainer, pl_module):
            raise PlantedBug("a planted bug")

    return Boom()


def kill_callback():
    """A Lightning callback that SIGKILLs its own process as epoch `$POC59_TEST_KILL_AT` starts (after the
    previous epoch's last.ckpt is written), and does nothing without that variable: a kill at a known point,
    with the same config on both sides of it (`+callbacks.kill._target_=helpers.kill_callback`)."""
    import os
    import signal

    import lightning as L

    class Kill(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if str(trainer.current_epoch) == os.environ.get("POC59_TEST_KILL_AT"):
                os.kill(os.getpid(), signal.SIGKILL)

    return Kill()


def pooled_miou_by_hand(fold_metrics: list[Path]) -> float:
    """mIoU of the sum of the folds' validation confusion matrices (metrics.json, rows target), with numpy:
    IoU_c = TP / (row + column - TP) over the classes in target or prediction, then their mean."""
    import json

    cm = sum(np.array(json.loads(p.read_text())["confusion_matrix"], dtype=np.float64) for p in fold_metrics)
    tp, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
    present = rows + cols > 0
    return float(np.mean(tp[present] / (rows + cols - tp)[present]))
