"""The catalogue of hostile input, each case through the real command as a user types it: exit 2, one
message naming the setting or file and the fix, no traceback, and nothing written outside the run folder
(no cache filled, no synthetic set generated, no outputs/ in the working folder).

Each case is answered by the command's own `main` in this process (tests/in_process.py: the argument list
of `python -m poc59.<command>`, its exit code and stderr, in about a second instead of a new process's
imports); one case goes through a real `python -m poc59.train` process, so the exit status and stderr a
user sees stay tested end to end. (Every command's process refusing an unknown key: tests/core/test_cli.py.)

Data that is wrong in itself (masks, splits, classes.json) is in tests/training/test_hostile_data.py;
faults of a run (kill, damaged checkpoint or cache) in tests/training/test_resume.py and
tests/data/test_preload.py; a failing model hub in tests/model/test_weights_hub.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch

from helpers import CRACKFOREST
from in_process import Answer, command

TINY = ["encoder=tiny", "data.synthetic.n=6", "data.image_size=64", "data.batch_size=4", "trainer.max_epochs=1"]

TRAIN = {  # overrides -> what the message must say
    "image size not a multiple": (["data.image_size=100"], "data.image_size=100 does not fit encoder"),
    "batch size 0": (["data.batch_size=0"], "data.batch_size=0: must be a whole number >= 1"),
    "negative lr": (["optimizer.lr=-1"], "optimizer.lr=-1: the learning rate must be a positive number"),
    "lr 0": (["optimizer.lr=0"], "the weights never change"),
    "val fraction 1.5": (["data.val_fraction=1.5"], "data.val_fraction must be between 0 and 1"),
    "max_epochs 0": (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    "added typo": (["+data.imgae_size=128"], "did you mean data.image_size?"),
    "forced typo": (["++data.imgae_size=128"], "did you mean data.image_size?"),
    "unknown key": (["trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'; did you mean trainer.max_epochs?"),
    "unknown preset": (["encoder=resnet50"], "encoder=custom encoder.name=tu-resnet50"),
    "unknown timm model": (["encoder=custom", "encoder.name=tu-no_such_net"], "'no_such_net' is not a timm model"),
    "weights not cached": (["encoder.weights=imagenet"], "python -m poc59.weights fetch"),
    "unknown strategy": (["+trainer.strategy=ddp_spwan"], "Lightning knows no such strategy"),
    "no data folder": (["data.synthetic=null", "data.root=/no/such/folder"], "data folder not found: /no/such/folder"),
    "a sweep with one bad value": (
        ["-m", "optimizer.lr=0.01,-1"],
        "the sweep's job with optimizer.lr=-1: optimizer.lr=-1",
    ),
    "a sweep with one job missing weights": (
        ["-m", "encoder.weights=null,imagenet"],
        "the sweep's job with encoder.weights=imagenet: No ImageNet weights for encoder",
    ),
    "cv: a fold that does not exist": (["data.cv.folds=3", "data.cv.fold=5"], "pick a fold 0 to 2"),
    "leave one material out without metadata.csv": (
        ["experiment=leave_one_material_out", "data.synthetic=null", f"data.root={CRACKFOREST}"],
        "data.cv.by=material: " + str(CRACKFOREST / "metadata.csv") + " has no 'material' column",
    ),
    "crop windows bigger than the stored sources": (
        ["data.policy=crop", "data.max_side=32"],
        "data.max_side=32 is below data.image_size=64: data.policy=crop cuts 64 px windows",
    ),
    "seed -1": (["seed=-1"], "seed=-1: choose a whole number from 0 to 4294967295"),
    "seed 2**32": (["seed=4294967296"], "seed=4294967296: choose a whole number from 0 to 4294967295"),
    "a sweep with one bad seed": (["-m", "seed=0,-1"], "the sweep's job with seed=-1: seed=-1: choose a whole number"),
    "weights: a text file": (
        [f"encoder.weights={Path(__file__).resolve()}"],
        f"encoder.weights={Path(__file__).resolve()}: {Path(__file__).resolve()} is not a weights file",
    ),
    "launcher setting": (
        ["-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=soon"],
        "'soon' of type 'str' could not be converted to Integer",
    ),
}

OTHERS = {  # command and arguments -> what the message must say
    "evaluate: no run": (["poc59.evaluate", "run_dir=/no/such/run"], "/no/such/run"),
    "evaluate: unknown key": (["poc59.evaluate", "splt=val"], "did you mean split=?"),
    "predict: no model": (
        ["poc59.predict", "ckpt=/no/such.ckpt", "input=/no/such/folder", "output=/no/such/out"],
        "/no/such",
    ),
    "export: no model": (["poc59.export", "ckpt=/no/such.ckpt"], "/no/such.ckpt"),
    "compare: no sweep": (["poc59.compare", "sweep=/no/such/sweep"], "/no/such/sweep"),
    "sweep_status: no sweep": (["poc59.sweep_status", "sweep=/no/such/sweep"], "/no/such/sweep"),
    "weights: unknown preset": (["poc59.weights", "fetch", "encoder=nope"], "unknown encoder preset 'nope'"),
    "prepare: unknown key": (["poc59.prepare", "data.image_sise=256"], "did you mean data.image_size?"),
}


def _refused(out: Answer | subprocess.CompletedProcess, says: str) -> None:
    said = " ".join(out.stderr.split())  # Rich wraps log lines
    assert out.returncode == 2, out.stderr[-3000:]
    assert says in said, said[-3000:]
    assert "Traceback" not in said


Answering = Callable[[list[str], Path], "Answer | subprocess.CompletedProcess"]  # (argv, working folder)


@pytest.fixture
def train_answers(capsys, monkeypatch) -> Answering:
    """`python -m poc59.train <argv>` answered by its main in this process, in the working folder given."""

    def answer(argv: list[str], work: Path) -> Answer:
        monkeypatch.chdir(work)
        return command("train", argv, capsys, monkeypatch)

    return answer


def _train_refused(tmp_path: Path, overrides: list[str], says: str, answer: Answering) -> None:
    cache, run = tmp_path / "cache", tmp_path / "run"
    work = tmp_path / "work"
    work.mkdir()
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags come first, as a user types them
    given = [o for o in overrides if not o.startswith("-")]
    _refused(answer([*flags, *TINY, f"paths.cache_dir={cache}", f"hydra.run.dir={run}", *given], work), says)
    assert not cache.exists()  # no synthetic set generated, nothing decoded or cached
    assert not list(work.iterdir())  # no outputs/ (a sweep folder, a run folder) where the command ran
    assert not (run / ".hydra").exists() and not (run / "checkpoints").exists() and not (run / "summary.json").exists()


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_train_refuses_a_hostile_setting_before_anything_is_written(tmp_path, case, train_answers):
    _train_refused(tmp_path, *TRAIN[case], answer=train_answers)


@pytest.mark.slow  # a fresh python -m poc59.train: 69 s at a load of 8-10; the cases in-process above stay quick
def test_train_refuses_a_hostile_setting_through_a_real_process(tmp_path):
    """What main answers in-process (the test above) is what the command's process exits with and prints."""

    def process(argv: list[str], work: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "poc59.train", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=work)

    _train_refused(tmp_path, *TRAIN["batch size 0"], answer=process)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU where there is none: this machine has one")
def test_train_refuses_a_gpu_where_there_is_none_before_anything_is_written(tmp_path, train_answers):
    says = "trainer.accelerator=gpu: this machine has no GPU"
    _train_refused(tmp_path, ["trainer.accelerator=gpu"], says, answer=train_answers)


def test_train_refuses_weights_of_another_model_before_anything_is_written(tmp_path, train_answers):
    """A real timm checkpoint of another width (mobilenetv3_small_075) given for encoder=tiny (its 0.5x)."""
    other = tmp_path / "mobilenet_075.pth"
    torch.save(timm.create_model("mobilenetv3_small_075").state_dict(), other)
    says = f"encoder.weights={other}: weights file {other} does not fit encoder tu-mobilenetv3_small_050"
    _train_refused(tmp_path, [f"encoder.weights={other}"], says, answer=train_answers)


@pytest.mark.parametrize("case", sorted(OTHERS))
def test_every_other_command_refuses_hostile_input_with_one_message(tmp_path, case, capsys, monkeypatch):
    args, says = OTHERS[case]
    monkeypatch.chdir(tmp_path)
    _refused(command(args[0].removeprefix("poc59."), args[1:], capsys, monkeypatch), says)
    assert not list(tmp_path.iterdir())  # nothing written where it ran
