"""The one calling convention of the commands that are not Hydra's: key=value, --help, unknown keys refused."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import in_process
from poc59.core.cli import (
    BUG,
    DONE,
    PARTIAL,
    PARTIAL_NOTE,
    USER,
    Command,
    HelpRequested,
    Key,
    resolve,
    run_command,
    source_defaults,
)
from poc59.core.config import SettingError


class DemoError(Exception):
    pass


def run(n: int = 3, level: float = 0.95, name: str = "x", pictures: bool = True, runs: list | None = None) -> None:
    """A function whose keywords the demo command fills (its defaults are what --help shows)."""


DEMO = Command(
    prog="python -m demo",
    summary="A demonstration.",
    keys=(
        Key("n", int, "how many"),
        Key("level", float, "a level"),
        Key("name", str, "a name"),
        Key("pictures", bool, "draw pictures"),
        Key("runs", list, "run folders"),
        Key("data.root", str, "a folder", required=True),
        Key("encoder.kwargs.*", str, "one keyword", dest="kwargs"),
    ),
    error=DemoError,
    fills=run,
)


def test_values_are_converted_by_type():
    got = DEMO.parse(["n=3", "+level=0.9", "name=a=b", "pictures=No", "runs=[x,y]", "data.root=d"])
    assert got == {"n": 3, "level": 0.9, "name": "a=b", "pictures": False, "runs": ["x", "y"], "data_root": "d"}
    assert DEMO.parse(["runs=a,b,c", "data.root=d"])["runs"] == ["a", "b", "c"]
    assert DEMO.parse(["data.root=d", "encoder.kwargs.img_size=256", "encoder.kwargs.x=y"])["kwargs"] == {
        "img_size": "256",
        "x": "y",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["n=three", "data.root=d"], "n=three: expected an integer"),
        (["pictures=maybe", "data.root=d"], "pictures=maybe: expected true or false"),
        (["colour=red"], "unknown argument 'colour=red': no key 'colour'"),
        (["nme=y"], "did you mean name=\\?"),
        (["n"], "'n': arguments are key=value"),
        ([], "missing data.root="),
    ],
)
def test_bad_arguments_name_the_key(argv, message):
    with pytest.raises(DemoError, match=message):
        DEMO.parse(argv)


def test_help_lists_every_key_with_its_default_and_meaning():
    with pytest.raises(HelpRequested) as asked:
        DEMO.parse(["data.root=d", "--help"])
    text = asked.value.text
    for line in ("n=3", "how many", "level=0.95", "pictures=true", "data.root=required", "encoder.kwargs.*="):
        assert line in text, line


HEAVY = ("torch", "lightning", "timm", "segmentation_models_pytorch")
# Per command: (a misspelt key, a value of the wrong type for a typed key), with the keys it requires.
CALLS: dict[str, tuple[list[str], list[str]]] = {
    "train": (["trainer.max_epoch=3"], ["data.batch_size=large"]),
    "prepare": (["data.rot=/data"], ["data.image_size=64px"]),
    "evaluate": (["split=val", "worstk=3"], ["bootstrap.level=high"]),
    "predict": (["ckpt=a.ckpt", "input=scans", "output=maps", "overlp=0.5"], ["batch_size=8.5"]),
    "compare": (["runs=[a,b]", "overwite=true"], ["overwrite=sure"]),
    "export": (["ckpt=a.ckpt", "fromat=onnx"], ["tolerance=small"]),
    "weights": (["path", "encoder=tiny", "weights_dri=/tmp"], ["path", "encoder=tiny", "timeout=long"]),
    "sweep_status": (["sweep=s", "line=3"], ["sweep=s", "lines=few"]),
    "import_parquet": (["src=a", "out=b", "overwrit=true"], ["src=a", "out=b", "overwrite=perhaps"]),
}


def calls(command: str) -> dict[str, tuple[list[str], int]]:
    """{kind: (the arguments, the exit status they must give)} of one command."""
    misspelt, bad = CALLS[command]
    return {"help": (["--help"], 0), "misspelt_key": (misspelt, 2), "bad_value": (bad, 2)}


def _imported(stderr: str) -> set[str]:
    """The top-level packages `python -X importtime` says were imported."""
    lines = (line.rpartition("|")[2].strip() for line in stderr.splitlines() if line.startswith("import time:"))
    return {name.split(".")[0] for name in lines}


@pytest.mark.parametrize("command", sorted(CALLS))
def test_every_command_answers_help_a_misspelt_key_and_a_bad_value_before_any_heavy_import(command):
    """One convention: --help exits 0 listing every key; a misspelt key exits 2 naming the closest one; a
    value of the wrong type exits 2 naming it; none of them waits for torch, Lightning, timm or smp (what
    keeps each under a second: bench/cli_start.py times them)."""
    said = {}
    for kind, (args, expected) in calls(command).items():
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", f"poc59.{command}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == expected, (kind, done.stderr[-3000:])
        assert not _imported(done.stderr) & set(HEAVY), (kind, _imported(done.stderr) & set(HEAVY))
        assert "Traceback" not in done.stderr
        said[kind] = " ".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
        if kind == "help":
            assert f"usage: python -m poc59.{command}" in done.stdout and "Keys (key=default: meaning):" in done.stdout
    assert "did you mean" in said["misspelt_key"], said["misspelt_key"]
    bad = calls(command)["bad_value"][0][-1]
    assert bad in " ".join(said["bad_value"].split()), said["bad_value"]  # the message names the value given


def test_a_partial_failure_has_its_own_exit_code(capsys, monkeypatch):
    """3 (done, but a part failed) is neither a bug (1) nor the user's input (2), and the commands that can
    end that way say so in their --help (answered in this process; the test above runs every --help in a real one)."""
    assert (DONE, BUG, USER, PARTIAL) == (0, 1, 2, 3)
    for name in ("evaluate", "export"):
        helped = in_process.command(name, ["--help"], capsys, monkeypatch)
        assert helped.returncode == DONE and PARTIAL_NOTE in " ".join(helped.stdout.split()), name


@pytest.mark.slow  # imports every command's library
def test_defaults_read_from_source_are_the_functions_own():
    """--help shows the defaults of the function a command fills without importing it: read from its source,
    they are what the imported function really has."""
    import importlib

    for command in sorted(CALLS):
        cli = importlib.import_module(f"poc59.{command}").CLI
        if not isinstance(getattr(cli, "fills", None), str):
            continue
        real = {
            name: p.default
            for name, p in inspect.signature(resolve(cli.fills)).parameters.items()
            if p.default is not p.empty
        }
        read = source_defaults(cli.fills)
        assert read == {k: v for k, v in real.items() if k in read}, command
        shown = {k.keyword for k in cli.keys} & set(real)
        assert shown <= set(read), (command, shown - set(read))  # every default --help would show was read


def test_a_library_value_error_is_a_bug_and_a_named_user_error_is_exit_2():
    """A Command's own error is raised by its parser only: a ValueError from the library it runs is a bug
    (it propagates: traceback, exit 1), while the errors named as the user's, as classes or as "module:name"
    imported only once the command ran, are exit 2."""
    command = Command(prog="python -m demo", summary="A demonstration.", keys=(Key("n", int, "how many"),))

    def act(options: dict) -> int:
        raise {1: ValueError("a bug"), 2: SettingError("n=2: too many")}[options["n"]]

    with pytest.raises(ValueError, match="a bug"):
        run_command(command, ["n=1"], act)
    assert run_command(command, ["n=two"], act) == USER
    assert run_command(command, ["n=2"], act, ("poc59.core.config:SettingError",)) == USER
    assert run_command(command, ["--help"], act) == DONE


def test_a_user_error_is_answered_without_importing_the_modules_of_the_other_errors_named(tmp_path, monkeypatch):
    """An error class whose module was never imported cannot have been raised: run_command does not import it
    to check (commands name errors of modules that import torch; a user's mistake must not wait for those)."""
    (tmp_path / "poc59_heavy_demo.py").write_text("raise RuntimeError('imported: a heavy module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    command = Command(prog="python -m demo", summary="A demonstration.", keys=(Key("n", int, "how many"),))

    def act(options: dict) -> int:
        raise SettingError("n=2: too many")

    errors = ("poc59_heavy_demo:DemoError", "poc59.core.config:SettingError")
    assert run_command(command, ["n=2"], act, errors) == USER
    assert "poc59_heavy_demo" not in sys.modules
