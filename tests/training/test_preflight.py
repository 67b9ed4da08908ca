"""Settings that cannot work are refused before any data is touched: one message naming the key and the
fix (the command exits 2), and the cache (where the synthetic set would be generated) stays empty."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import SMALL, make_cfg
from poc59.training.run import USER_ERRORS, train

CASES = [
    (["data.image_size=100"], "data.image_size=100 does not fit encoder"),
    (["data.image_size=0"], "data.image_size=0: must be a whole number >= 1"),
    (["data.batch_size=0"], "data.batch_size=0: must be a whole number >= 1"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: the learning rate must be a positive number"),
    (["optimizer.lr=0"], "the weights never change"),
    (["data.val_fraction=1.5"], "data.val_fraction must be between 0 and 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    (["+data.imgae_size=128"], "data.imgae_size: poc59.data.datamodule.SegmentationDataModule takes no argument"),
    (["++data.imgae_size=128"], "did you mean data.image_size?"),
    (["+loss.gama=2"], "did you mean loss.gamma?"),
    (["data.policy=crop"], "data.policy=crop needs data.max_side"),
    (["data.on_bad_file=ignore"], "data.on_bad_file=ignore: choose error or skip"),
    (["threads=0"], "threads=0: choose auto or a whole number of CPU threads"),
    (["threads=many"], "threads=many: choose auto or a whole number"),
    (["encoder=custom", "encoder.name=tu-no_such_net"], "'no_such_net' is not a timm model"),
    (["encoder.weights=imagenet"], "python -m poc59.weights fetch"),
    (["encoder.weights=/no/such/file.safetensors"], "is not an existing file"),
    (["encoder.decoder=Unett"], "Unknown decoder 'Unett'"),
    (["trainer.accelerator=gpux"], "trainer.accelerator=gpux: choose one of"),
    (["+trainer.strategy=ddp_spwan"], "trainer.strategy=ddp_spwan: Lightning knows no such strategy; did you mean"),
    (
        ["++trainer.strategy={_target_:lightning.pytorch.strategies.DDPStrategy,process_group_backend:ncll}"],
        "trainer.strategy.process_group_backend=ncll: choose nccl, gloo",
    ),
    (["data.synthetic=null", "data.root=/no/such/folder"], "data folder not found: /no/such/folder"),
    (["data.cv.folds=1"], "data.cv.folds=1: must be a whole number >= 2"),
    (["data.cv.folds=3", "data.cv.fold=3"], "data.cv.fold=3: with data.cv.folds=3, pick a fold 0 to 2"),
    (["data.cv.folds=3", "data.cv.by=material"], "are two kinds of cross-validation"),
    (["data.cv.folds=3", "data.split_file=/tmp/split.json"], "fixes one split, and data.cv makes the folds"),
    (["data.cv.by=material", "data.cv.min_images=0"], "data.cv.min_images=0: must be a whole number >= 1"),
]


@pytest.mark.parametrize("overrides, says", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_setting_that_cannot_work_stops_the_run_before_the_data(tmp_path, overrides, says):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path, *SMALL, f"paths.cache_dir={cache}", *overrides)
    with pytest.raises(USER_ERRORS) as refused:
        train(cfg)
    assert says in str(refused.value)
    assert not cache.exists()  # no synthetic set generated, nothing decoded or cached
    assert not (tmp_path / "run").exists()  # and no run folder started


def test_missing_imagenet_weights_exit_2_before_generating_the_data(tmp_path):
    """`python -m poc59.train` with no weights cached: the message, not 95 s of data generation first."""
    cache = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-m", "poc59.train", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "python -m poc59.weights fetch" in out.stderr and "encoder.weights=null" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (cache / "synthetic").exists() and not (cache / "data").exists()
