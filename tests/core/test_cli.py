"""The one calling convention of the commands that are not Hydra's: key=value, --help, unknown keys refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from poc59.core.cli import Command, HelpRequested, Key


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


@pytest.mark.parametrize(
    "command", ["evaluate", "predict", "compare", "export", "weights", "sweep_status", "import_parquet"]
)
def test_every_command_answers_help_with_its_keys_and_refuses_an_unknown_key(command):
    """One convention: --help exits 0 listing every key; an unknown key exits 2 naming the closest one."""
    helped = subprocess.run(
        [sys.executable, "-m", f"poc59.{command}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and f"usage: python -m poc59.{command}" in helped.stdout, helped.stderr
    assert "Keys (key=default: meaning):" in helped.stdout
    verb = ["fetch"] if command == "weights" else []
    refused = subprocess.run(
        [sys.executable, "-m", f"poc59.{command}", *verb, "no_such_key=1"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and "unknown argument 'no_such_key=1'" in refused.stderr
    assert "Traceback" not in refused.stderr
