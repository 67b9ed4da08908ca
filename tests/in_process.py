"""poc59's commands called in the test process through their own `main`, for tests of what a command answers
(its exit code, what it says on stderr and stdout, what it leaves on disk) rather than of the process itself:
the same entry point and argument list as `python -m poc59.<command> ...`, without the 5-8 s of imports a new
Python process pays. Exit codes, signals, a fresh interpreter and everything Hydra does to a process stay in
subprocess tests (tests/training/test_run_folder.py, test_resume.py, test_hostile_data.py)."""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from dataclasses import dataclass

import pytest

DONE = 0


@dataclass(frozen=True)
class Answer:
    """What a command answered: its exit code (0 done, 1 a bug, 2 the user's input) and its two streams."""

    returncode: int
    stdout: str
    stderr: str


class ReachedHydra(AssertionError):
    """`poc59.train` went on to Hydra: the refusal a test expected before any run folder is touched never came."""


def _reached_hydra(*args: object, **kwargs: object) -> None:
    raise ReachedHydra("poc59.train reached Hydra's main: nothing refused the call before the run started")


def command(name: str, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Answer:
    """`python -m poc59.<name> <argv>` answered in this process (module docstring).

    `sys.argv` is `argv` too while the command runs (a main that reads it, or hands it to Hydra). `poc59.train`
    runs its job through Hydra, which takes over the process's logging, working folder and run folder: here
    it may only refuse (exit 2 before Hydra starts); reaching Hydra raises `ReachedHydra`. The log handlers
    a command adds (they write to this test's captured stderr) are removed afterwards."""
    module = importlib.import_module(f"poc59.{name}")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", [f"{sys.executable} -m poc59.{name}", *argv])  # a command may rewrite it
    if name == "train":
        monkeypatch.setattr(module, "_hydra_main", _reached_hydra)
    capsys.readouterr()  # only what the command says
    try:
        code = module.main(list(argv)) if inspect.signature(module.main).parameters else module.main()
    except SystemExit as exited:
        code = exited.code
    finally:
        for added in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(added)
        root.setLevel(level)
    out, err = capsys.readouterr()
    # sys.exit(None) is 0, sys.exit('a message') prints it and is 1, as the interpreter exits
    return Answer(DONE if code is None else code if isinstance(code, int) else 1, out, err)
