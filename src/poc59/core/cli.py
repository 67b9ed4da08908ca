"""One way to call every poc59 command: `python -m poc59.<command> key=value ...`.

`train` and `prepare` compose the Hydra config (their keys are its keys, see `python -m poc59.train
--help`); every other command declares its keys here as a `Command`: each `Key` has a type, a default
and a meaning, `--help` lists them all, and an unknown key is refused with the closest known one. A
leading `+` (a Hydra habit) is accepted. Values: true/false (yes/no, 1/0) for switches, `[a,b]` or `a,b`
for lists.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from poc59.core.logs import VERBOSE_FLAGS, setup_logging, take_verbose

TRUE_FALSE = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
HELP = ("-h", "--help", "help")


def to_bool(text: str) -> bool:
    """true/false, yes/no, 1/0 (any case)."""
    try:
        return TRUE_FALSE[text.strip().lower()]
    except KeyError:
        raise ValueError("expected true or false") from None


def to_list(text: str) -> list[str]:
    """`[a,b]` (YAML) or `a,b`."""
    parsed = yaml.safe_load(text) if text.strip().startswith("[") else text.split(",")
    if not isinstance(parsed, list) or not parsed:
        raise ValueError("expected a list, e.g. [a,b] or a,b")
    return [str(p) for p in parsed]


class Paths:
    """The kind of a key that takes one path or a list of them (`ckpt=a.ckpt`, `ckpt=[a.ckpt,b.ckpt]`)."""


def to_paths(text: str) -> str | list[str]:
    """`[a,b]` (YAML) -> a list; anything else is one path, commas and all."""
    return to_list(text) if text.strip().startswith("[") else text


def to_value(text: str) -> Any:
    """A YAML scalar or list (`3`, `0.5`, `true`, `[1,2]`), else the text itself."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_CONVERT: dict[Any, Callable[[str], Any]] = {bool: to_bool, list: to_list, Paths: to_paths, Any: to_value}
_DESCRIBE = {bool: "true or false", int: "an integer", float: "a number", list: "a list", Paths: "a path or [a,b]"}


class HelpRequested(Exception):
    """`--help` was asked for; `text` is the help (printed on stdout, exit 0)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Key:
    """One command-line key. `name` may end in `.*` for a family (`encoder.kwargs.*`); `dest` is the keyword
    it fills (default: the name with dots as underscores); `default` is shown by `--help` (`Command.fills`
    reads it from the function's signature when left out)."""

    name: str
    kind: Any = str
    help: str = ""
    default: Any = inspect.Parameter.empty
    dest: str | None = None
    required: bool = False

    @property
    def keyword(self) -> str:
        return self.dest or self.name.replace(".", "_")

    def matches(self, key: str) -> bool:
        return key == self.name or (
            self.name.endswith(".*") and key.startswith(self.name[:-1]) and len(key) > len(self.name) - 1
        )


@dataclass(frozen=True)
class Command:
    """A command's keys, its help, and the parser that refuses what it does not know (raising `error`)."""

    prog: str
    summary: str
    keys: Sequence[Key]
    examples: Sequence[str] = ()
    notes: str = ""
    error: type[Exception] = ValueError
    fills: Callable[..., Any] | None = None  # the function the keys are keywords of (for defaults)
    verbs: Sequence[str] = ()  # a first bare word, e.g. `fetch` / `path`
    _defaults: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.fills is not None:
            params = inspect.signature(self.fills).parameters
            for key in self.keys:
                p = params.get(key.keyword)
                if p is not None and p.default is not inspect.Parameter.empty:
                    self._defaults[key.name] = p.default

    def default(self, key: Key) -> Any:
        return (
            key.default
            if key.default is not inspect.Parameter.empty
            else self._defaults.get(key.name, inspect.Parameter.empty)
        )

    def usage(self) -> str:
        verbs = "{" + ",".join(self.verbs) + "} " if self.verbs else ""
        required = " ".join(f"{k.name}=..." for k in self.keys if k.required)
        return f"usage: {self.prog} {verbs}{required + ' ' if required else ''}[key=value ...]   (--help: every key)"

    def help(self) -> str:
        lines = [self.usage(), "", self.summary]
        if self.examples:
            lines += ["", "Examples:"] + [f"  {e}" for e in self.examples]
        lines += ["", "Keys (key=default: meaning):"]
        shown = []
        for key in self.keys:
            default = self.default(key)
            text = "required" if key.required else ("" if default is inspect.Parameter.empty else _show(default))
            shown.append((f"{key.name}={text}", key.help))
        lines += key_table(shown, widest=34)
        if self.notes:
            lines += ["", self.notes.strip()]
        lines += ["", f"{' / '.join(VERBOSE_FLAGS)}: every log line (Lightning's notices, dependencies' warnings)"]
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """{keyword: value} of the keys given (`verb` too, with verbs); HelpRequested for --help."""
        argv = list(argv)
        if any(a in HELP for a in argv):
            raise HelpRequested(self.help())
        out: dict[str, Any] = {}
        if self.verbs:
            if not argv or argv[0] not in self.verbs:
                got = f"{argv[0]!r}" if argv else "nothing"
                raise self.error(f"expected one of {', '.join(self.verbs)} first, got {got}\n{self.usage()}")
            out["verb"] = argv.pop(0)
        for arg in argv:
            name, sep, value = arg.partition("=")
            name = name.lstrip("+")
            key = next((k for k in self.keys if k.matches(name)), None)
            if not sep or key is None:
                raise self.error(self._unknown(arg, name, sep))
            try:
                converted = _CONVERT.get(key.kind, key.kind)(value)
            except (TypeError, ValueError, yaml.YAMLError):
                raise self.error(
                    f"{name}={value}: expected {_DESCRIBE.get(key.kind, 'a value')}\n{self.usage()}"
                ) from None
            if key.name.endswith(".*"):
                out.setdefault(key.keyword, {})[name[len(key.name) - 1 :]] = converted
            else:
                out[key.keyword] = converted
        missing = [k.name for k in self.keys if k.required and k.keyword not in out]
        if missing:
            raise self.error(f"missing {', '.join(f'{m}=' for m in missing)}\n{self.usage()}")
        return out

    def _unknown(self, arg: str, name: str, sep: str) -> str:
        if not sep:
            return f"{arg!r}: arguments are key=value\n{self.usage()}"
        close = difflib.get_close_matches(name, [k.name.rstrip(".*") for k in self.keys], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}=?" if close else ""
        known = ", ".join(k.name for k in self.keys)
        return (
            f"unknown argument {arg!r}: no key {name!r}{hint} (keys: {known}; {self.prog} --help says what each means)"
        )


def run_command(
    command: Command,
    argv: Sequence[str] | None,
    act: Callable[[dict[str, Any]], int],
    user_errors: tuple[type[Exception], ...] = (),
    log: logging.Logger | None = None,
) -> int:
    """A command's whole life: parse `argv` (sys.argv[1:] if None), `act` on the options, and return the exit
    status: `act`'s, 0 after --help (printed on stdout), 2 with one logged line for a user error (the
    command's own error or one of `user_errors`); anything else is a bug and propagates (traceback, 1)."""
    argv, verbose = take_verbose(sys.argv[1:] if argv is None else argv)
    setup_logging(verbose)
    log = log or logging.getLogger(command.prog.rsplit(" ", 1)[-1])
    try:
        return act(command.parse(argv))
    except HelpRequested as asked:
        print(asked.text)
        return 0
    except (command.error, *user_errors) as err:
        log.error("%s", err)
        return 2


def key_table(rows: Sequence[tuple[str, str]], widest: int) -> list[str]:
    """`--help`'s lines for (key=default, meaning) rows: meanings in one column, at most `widest` in; a longer
    key=default gets its meaning on the next line."""
    width = min(max((len(left) for left, _ in rows), default=0) + 2, widest)
    return [
        f"  {left:<{width}} {meaning}" if len(left) < width else f"  {left}\n  {'':<{width}} {meaning}"
        for left, meaning in rows
    ]


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
