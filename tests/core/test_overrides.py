"""The training config's command line (train, prepare): bad overrides refused before anything runs, with
the fix; --help lists every group and key with its default and meaning."""

from __future__ import annotations

import pytest

from in_process import command
from poc59.core.config import SettingError
from poc59.core.overrides import check_overrides, compose_keys_without, compose_train, config_keys, help_text


@pytest.mark.parametrize(
    "argv, says",
    [
        (["trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'; did you mean trainer.max_epochs?"),
        (["data.rot=/x"], "did you mean data.root?"),
        (["lr=0.1"], "did you mean optimizer.lr?"),  # a key named like the last part of one
        (["encoder=segformr_b3"], "did you mean encoder=segformer_b3?"),
        (["encoder=resnet50"], "encoder=custom encoder.name=tu-resnet50"),
        # a sweep: every option of a swept group is checked, not only the first
        (["-m", "encoder=convnext_tiny,segformr_b3"], "no option 'segformr_b3' in the config group 'encoder'"),
        (["trainer.devices=[1"], "cannot read the overrides"),
        # the SLURM launcher's settings are checked with the rest, not while Hydra builds the launcher
        (
            ["-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=abc"],
            "'abc' of type 'str' could not be converted",
        ),
        (["-m", "hydra/launcher=slurm", "hydra.launcher.partitoin=gpu"], "did you mean hydra.launcher.partition?"),
        # one launcher request per sweep: the device layout is not swept (it could not match the jobs)
        (["-m", "hydra/launcher=slurm", "trainer.devices=1,2"], "trainer.devices cannot be swept"),
        # a value of another type than the key's default, refused before any check imports the library
        (
            ["trainer.max_epochs=abc"],
            "trainer.max_epochs takes an integer, not 'abc' (its default: trainer.max_epochs=",
        ),
        (["data.batch_size=large"], "data.batch_size takes an integer"),  # its default: the encoder preset's
        (["trainer.benchmark=maybe"], "trainer.benchmark takes true or false"),
        (["-m", "trainer.max_epochs=1,x"], "takes an integer, not 'x'"),  # every value of a sweep
        (["optimizer.lr=fast"], "optimizer.lr takes a number"),
    ],
)
def test_a_bad_override_is_one_message_with_the_fix(argv, says):
    with pytest.raises(SettingError) as refused:
        check_overrides(argv)
    assert says in str(refused.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment=quickstart"],
        ["experiment=compare_encoders"],
        ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "encoder=convnext_tiny,segformer_b3"],
        ["data=artefact", "data.root=/somewhere", "+data.extra_key=1"],
        ["-m", "optimizer.lr=range(1,3)", "seed=0,1"],
        [
            "optimizer.lr=1",
            "trainer.max_epochs=null",
            "data.cv.fold=Glass",
            "trainer.max_epochs=${seed}",
            "trainer.fast_dev_run=2",
        ],
    ],
)
def test_good_overrides_pass(argv):
    check_overrides(argv)


def test_help_lists_every_key_of_the_composed_config_with_its_default():
    cfg = compose_train(["encoder=custom", "encoder.name=tu-resnet18"], hydra=True)
    text = help_text(["encoder=custom", "encoder.name=tu-resnet18"], "python -m poc59.train", "Train one model.")
    for key, _default, _meaning in config_keys(cfg):
        assert f"  {key}=" in text, key
    assert "encoder.name=tu-resnet18" in text  # the other arguments are composed: help shows their effect
    assert "[custom]" in text and "segformer_b3" in text  # the group, its chosen option, the others
    # meanings come from the comments in conf/, or name the object's argument
    assert "side of the square the model sees" in text
    assert "lightning.pytorch.Trainer(max_epochs=...)" in text


@pytest.mark.parametrize("name", ["train", "prepare"])
def test_train_and_prepare_answer_help_and_refuse_an_unknown_key_with_exit_2(name, capsys, monkeypatch):
    """Answered in this process (tests/core/test_cli.py sends the same calls through real processes)."""
    helped = command(name, ["--help"], capsys, monkeypatch)
    assert helped.returncode == 0, helped.stderr
    assert f"usage: python -m poc59.{name}" in helped.stdout and "data.image_size=384" in helped.stdout
    refused = command(name, ["data.image_sise=256"], capsys, monkeypatch)
    assert refused.returncode == 2
    said = " ".join(refused.stderr.split())  # Rich wraps log lines at the terminal's width
    assert "did you mean data.image_size?" in said and "Traceback" not in said


def test_an_empty_mapping_is_one_key_with_an_empty_default():
    """`encoder.kwargs: {}` is a key of its own for --help, for the typed check and for the closest-key advice
    (a flattening that dropped empty mappings would call `encoder.kwargs=...` unknown)."""
    cfg = compose_train([], hydra=True)
    defaults = {key: default for key, default, _meaning in config_keys(cfg)}
    assert defaults["encoder.kwargs"] == {} and defaults["module.compile_options"] == {}
    assert "encoder.kwargs" in compose_keys_without(["data.root=x"], "data.root")
    check_overrides(["encoder.kwargs={}", "module.compile_options={}"])
    assert "  encoder.kwargs={}" in help_text([], "python -m poc59.train", "Train one model.")


def test_a_new_key_in_an_existing_mapping_is_refused_with_the_plus_that_adds_it():
    """`encoder.kwargs={img_size:256}`: the key exists, the value brings a key it lacks; the message is not
    "unknown key 'encoder.kwargs'; did you mean encoder.kwargs?", and its advice, pasted, composes."""
    with pytest.raises(SettingError) as err:
        check_overrides(["encoder.kwargs={img_size:256}"])
    said = str(err.value)
    assert "did you mean encoder.kwargs?" not in said and "unknown key 'encoder.kwargs'" not in said
    assert "encoder.kwargs.img_size" in said
    advice = said.rsplit("add it with a leading +: ", 1)[1]
    assert advice == "+encoder.kwargs={img_size:256}"
    assert compose_train([advice]).encoder.kwargs.img_size == 256


def test_a_forced_add_adds_a_missing_key_and_is_typed_where_the_key_exists():
    """`++key=value` sets the key whether or not the config has it (Hydra's force-add): it is not refused as an
    unknown key, and where the key exists its value still has the default's type."""
    check_overrides(["++encoder.kwargs.img_size=256"])
    assert compose_train(["++encoder.kwargs.img_size=256"]).encoder.kwargs.img_size == 256
    check_overrides(["++trainer.max_epochs=3"])
    with pytest.raises(SettingError, match="trainer.max_epochs takes an integer, not 'abc'"):
        check_overrides(["++trainer.max_epochs=abc"])


def test_a_keys_meaning_keeps_the_comment_lines_that_run_on_under_it():
    """--help and the manual's configuration reference read a key's meaning from its comment in conf/; a
    comment continued on the next lines (its `#` in the same column) is part of it (train.yaml's monitor and
    run_dir run on), a comment line of its own (the file's notes) is no key's."""
    meanings = {key: meaning for key, _, meaning in config_keys(compose_train([]))}
    assert meanings["monitor"].endswith("or val/<name> of a split metric registered in poc59.metrics, e.g. val/fwIoU")
    assert meanings["run_dir"].endswith("null = ${paths.output_dir}/runs/<date>_<time>")
    assert meanings["seed"].count("#") == 0 and "@package" not in " ".join(meanings.values())
