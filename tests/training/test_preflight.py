"""Settings that cannot work are refused before any data is touched: one message naming the key and the
fix (the command exits 2), and the cache (where the synthetic set would be generated) stays empty."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save, save_file

from fake_cuda import FakeCuda
from helpers import SMALL, make_cfg
from in_process import command
from poc59.core.config import SettingError
from poc59.core.overrides import compose_train
from poc59.model.factory import build_network
from poc59.model.pretrained import read_state_dict
from poc59.training.preflight import check_settings
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
    (["data.policy=crop", "data.max_side=32"], "data.max_side=32 is below data.image_size=64"),
    (["data.policy=crop", "data.max_side=big"], "data.max_side=big: must be a whole number >= 1"),
    (["seed=-1"], "seed=-1: choose a whole number from 0 to 4294967295"),
    (["seed=4294967296"], "seed=4294967296: choose a whole number from 0 to 4294967295"),
    (["seed=1.5"], "seed=1.5: choose a whole number"),
    (["trainer.accelerator=mps"], "trainer.accelerator=mps: no Apple GPU (MPS) here"),
    (["data.on_bad_file=ignore"], "data.on_bad_file=ignore: choose error or skip"),
    (["data.mask_remap=5"], "data.mask_remap=5: a mapping of stored mask values to labels"),
    (["threads=0"], "threads=0: choose auto or a whole number of CPU threads"),
    (["threads=many"], "threads=many: choose auto or a whole number"),
    (["encoder=custom", "encoder.name=tu-no_such_net"], "'no_such_net' is not a timm model"),
    (["encoder.weights=imagenet"], "python -m poc59.weights fetch"),
    (["encoder.weights=/no/such/file.safetensors"], "is not an existing file"),
    (["decoder.name=Unett"], "Unknown decoder 'Unett'"),
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


def test_missing_imagenet_weights_exit_2_before_generating_the_data(tmp_path, capsys, monkeypatch):
    """`python -m poc59.train` with no weights cached: the message, not 95 s of data generation first (the
    command's main answering in this process: tests/in_process.py)."""
    cache = tmp_path / "cache"
    out = command("train", [f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "python -m poc59.weights fetch" in out.stderr and "encoder.weights=null" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (cache / "synthetic").exists() and not (cache / "data").exists()


NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="asks for a GPU where there is none: this machine has one"
)


@NO_GPU
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_asked_for_where_there_is_none_stops_the_run_before_the_data(tmp_path, accelerator):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path, *SMALL, f"paths.cache_dir={cache}", f"trainer.accelerator={accelerator}")
    with pytest.raises(SettingError, match=f"trainer.accelerator={accelerator}: this machine has no GPU"):
        train(cfg)
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_gpu_settings_are_checked_against_the_gpus_there_are(tmp_path):
    """With two (stand-in) CUDA devices: accelerator=gpu passes, three devices are one too many."""
    with FakeCuda(devices=2):
        check_settings(make_cfg(tmp_path, *SMALL, "trainer.accelerator=gpu", "trainer.devices=2"))
        check_settings(make_cfg(tmp_path, *SMALL, "trainer.accelerator=cuda", "trainer.devices=-1"))
        with pytest.raises(
            SettingError, match="trainer.devices=3: this machine has 2 CUDA GPUs: set trainer.devices=2"
        ):
            check_settings(make_cfg(tmp_path, *SMALL, "trainer.accelerator=gpu", "trainer.devices=3"))


@NO_GPU
def test_a_sweep_for_a_cluster_leaves_the_gpu_check_to_the_job():
    """A sweep submitted from a login node without a GPU: the job checks its GPU where it runs, not here."""
    check_settings(compose_train([*SMALL, "trainer.accelerator=gpu", "hydra/launcher=slurm"], hydra=True))
    with pytest.raises(SettingError, match="this machine has no GPU"):  # a local sweep runs here
        check_settings(compose_train([*SMALL, "trainer.accelerator=gpu"], hydra=True))


def _tiny_encoder_state() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in build_network("tu-mobilenetv3_small_050").encoder.state_dict().items()}


def _weights_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files a user may pass as encoder.weights that are not the tiny encoder's weights -> what the refusal says."""
    folder.mkdir()
    text = folder / "notes.pth"
    text.write_text("not weights\n")
    listed = folder / "list.pth"
    torch.save([1, 2, 3], listed)
    empty = folder / "no_tensors.pth"
    torch.save({"epoch": 3}, empty)
    other = folder / "mobilenet_075.pth"  # a real timm checkpoint, of another width
    torch.save(timm.create_model("mobilenetv3_small_075").state_dict(), other)
    good = _tiny_encoder_state()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(save(good)[:5000])
    partial = folder / "partial.safetensors"
    save_file({k: v for k, v in good.items() if k != "model.conv_stem.weight"}, str(partial))
    return {
        "text": (text, "is not a weights file: neither safetensors nor a torch checkpoint"),
        "a list": (listed, "holds a list, not a state dict"),
        "no tensors": (empty, "holds no tensors"),
        "another width": (other, "does not fit encoder tu-mobilenetv3_small_050"),
        "truncated": (truncated, "cannot read weights file"),
        "a tensor missing": (partial, "tensors are not in the file (e.g. model.conv_stem.weight)"),
    }


@pytest.mark.slow  # six weights files, each through a composed config and train's checks: 20 s at a load of 8-10
def test_a_weights_file_that_does_not_fit_stops_the_run_before_the_data(tmp_path):
    """Each file is named with encoder.weights= and the way out, before the set is generated and decoded."""
    cache = tmp_path / "cache"
    for case, (path, says) in _weights_files(tmp_path / "files").items():
        cfg = make_cfg(tmp_path, *SMALL, f"paths.cache_dir={cache}", f"encoder.weights={path}")
        with pytest.raises(USER_ERRORS) as refused:
            train(cfg)
        message = str(refused.value)
        assert message.startswith(f"encoder.weights={path}: ") and says in message, (case, message)
        assert "encoder.weights=null" in message, case
        assert not cache.exists() and not (tmp_path / "run").exists(), case


def test_a_weights_file_is_checked_without_reading_its_tensors(tmp_path):
    """The check before the data reads a safetensors header and maps a torch zip: the tensors are not read."""
    state = _tiny_encoder_state()
    flat = tmp_path / "tiny.safetensors"
    save_file(state, str(flat))
    shapes = read_state_dict(flat, lazy=True)
    assert {k: tuple(v.shape) for k, v in shapes.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert {v.device.type for v in shapes.values()} == {"meta"}
    zipped = tmp_path / "tiny.pth"
    torch.save({"state_dict": {f"net.encoder.{k}": v for k, v in state.items()}}, zipped)
    for path in (flat, zipped):  # both fit: the settings check passes
        check_settings(make_cfg(tmp_path, *SMALL, f"encoder.weights={path}"))
