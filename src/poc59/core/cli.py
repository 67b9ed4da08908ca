"""One way to call every poc59 command: `python -m poc59.<command> key=value ...`.

`train` and `prepare` compose the Hydra config (their keys are its keys, see `python -m poc59.train
--help`; `poc59.core.overrides`); every other command declares its keys here as a `Command`: each `Key`
has a type, a default and a meaning, `--help` lists them all, and an unknown key is refused with the
closest known one. A leading `+` (a Hydra habit) is accepted. Values: true/false (yes/no, 1/0) for
switches, `[a,b]` or `a,b` for lists.

Every command answers `--help`, an unknown key and a bad value before it imports torch, Lightning, timm
or smp: this module imports none of them, a Command names the function whose defaults it shows and the
errors that are the user's as "module:name" (read without importing the module, or imported only once
the command runs), and each command imports its library inside the function that runs it.

Exit codes, the same for every command: 0 done (`DONE`), 1 a bug (`BUG`, traceback in the log), 2 the
user's input or setting (`USER`, one message naming it and the fix), 3 done, but a part failed
(`PARTIAL`: the part is named in the log and in the command's summary; e.g. a run of `evaluate sweep=`,
or export's parity check).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from poc59.core.logs import VERBOSE_FLAGS, setup_logging, take_verbose

DONE, BUG, USER, PARTIAL = 0, 1, 2, 3  # the exit codes (module docstring)
VERBOSE_HELP = f"{' / '.join(VERBOSE_FLAGS)}: every log line (Lightning's notices, dependencies' warnings)"
PARTIAL_NOTE = "exit 3: done, but a part failed (named in the log and in the summary)"
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


def resolve(ref: str | Any) -> Any:
    """The object a "module:name" reference names (imported now); anything else as it is."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


def _raised_as(err: Exception, kind: type[Exception] | str) -> bool:
    """Whether `err` is a `kind`; a "module:name" kind whose module was never imported cannot have raised it,
    so it is not imported now (a user's error is answered without waiting for torch)."""
    if isinstance(kind, str) and kind.partition(":")[0] not in sys.modules:
        return False
    return isinstance(err, resolve(kind))


def source_defaults(ref: str) -> dict[str, Any]:
    """{parameter: default} of the function or dataclass a "module:name" reference names, read from the
    module's source without importing it (the module may import torch; `--help` must not wait for it).
    A default that is no literal is looked up among the module's constants and the names it imports from
    poc59; one that is neither (a call, an expression) is left out."""
    module, _, name = ref.partition(":")
    tree = _module_tree(module)
    node = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name),
        None,
    )
    if node is None:
        raise LookupError(f"{ref}: no function or class {name!r} in {module}")
    pairs: list[tuple[str, ast.expr | None]] = []
    if isinstance(node, ast.FunctionDef):
        positional = node.args.posonlyargs + node.args.args
        defaults = [None] * (len(positional) - len(node.args.defaults)) + list(node.args.defaults)
        pairs += [(a.arg, d) for a, d in zip(positional, defaults)]
        pairs += [(a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults)]
    else:
        pairs += [
            (n.target.id, n.value)
            for n in node.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value is not None
        ]
    found: dict[str, Any] = {}
    for param, expr in pairs:
        if expr is None:
            continue
        try:
            found[param] = _source_value(module, tree, expr)
        except (ValueError, LookupError):
            continue
    return found


def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)  # imports the parent packages only (poc59's hold no imports)
    if spec is None or spec.origin is None:
        raise LookupError(f"no module {module}")
    return ast.parse(Path(spec.origin).read_text(), spec.origin)


def _source_value(module: str, tree: ast.Module, expr: ast.expr, depth: int = 0) -> Any:
    if not isinstance(expr, ast.Name):
        return ast.literal_eval(expr)
    if depth > 3:
        raise LookupError(expr.id)
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if targets and node.value is not None and any(isinstance(t, ast.Name) and t.id == expr.id for t in targets):
            return _source_value(module, tree, node.value, depth + 1)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("poc59"):
            for alias in node.names:
                if (alias.asname or alias.name) == expr.id:
                    other = _module_tree(node.module)
                    return _source_value(node.module, other, ast.Name(alias.name), depth + 1)
    raise LookupError(f"{expr.id} in {module}")


class ArgumentError(ValueError):
    """A command-line argument the command does not take, or of the wrong type (exit 2); the default `error`
    of a Command, which no library function raises, so a library's ValueError stays a bug (exit 1)."""


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
    error: type[Exception] = ArgumentError
    # the function (or dataclass) the keys are keywords of, whose defaults --help shows: the object, or
    # "module:name" to read them from its source without importing the module
    fills: Callable[..., Any] | str | None = None
    verbs: Sequence[str] = ()  # a first bare word, e.g. `fetch` / `path`
    _defaults: dict[str, Any] = field(default_factory=dict, compare=False)

    def defaults(self) -> dict[str, Any]:
        """{keyword: default} of `fills` (read once, when --help first asks)."""
        if self.fills is not None and not self._defaults:
            if isinstance(self.fills, str):
                self._defaults.update(source_defaults(self.fills))
            else:
                params = inspect.signature(self.fills).parameters
                self._defaults.update({n: p.default for n, p in params.items() if p.default is not p.empty})
        return self._defaults

    def default(self, key: Key) -> Any:
        return (
            key.default
            if key.default is not inspect.Parameter.empty
            else self.defaults().get(key.keyword, inspect.Parameter.empty)
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
        lines += ["", VERBOSE_HELP]
        return "\n".join(lines)

    def parse(self, argv: Sequence[str], error: type[Exception] | None = None) -> dict[str, Any]:
        """{keyword: value} of the keys given (`verb` too, with verbs); HelpRequested for --help. A bad
        argument raises `error` (default: the command's `error`), e.g. the library's own error class for a
        caller that has imported it already."""
        argv = list(argv)
        error = error or self.error
        if any(a in HELP for a in argv):
            raise HelpRequested(self.help())
        out: dict[str, Any] = {}
        if self.verbs:
            if not argv or argv[0] not in self.verbs:
                got = f"{argv[0]!r}" if argv else "nothing"
                raise error(f"expected one of {', '.join(self.verbs)} first, got {got}\n{self.usage()}")
            out["verb"] = argv.pop(0)
        for arg in argv:
            name, sep, value = arg.partition("=")
            name = name.lstrip("+")
            key = next((k for k in self.keys if k.matches(name)), None)
            if not sep or key is None:
                raise error(self._unknown(arg, name, sep))
            try:
                converted = _CONVERT.get(key.kind, key.kind)(value)
            except (TypeError, ValueError, yaml.YAMLError):
                raise error(f"{name}={value}: expected {_DESCRIBE.get(key.kind, 'a value')}\n{self.usage()}") from None
            if key.name.endswith(".*"):
                out.setdefault(key.keyword, {})[name[len(key.name) - 1 :]] = converted
            else:
                out[key.keyword] = converted
        missing = [k.name for k in self.keys if k.required and k.keyword not in out]
        if missing:
            raise error(f"missing {', '.join(f'{m}=' for m in missing)}\n{self.usage()}")
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


class CommandLine(Protocol):
    """What `run_command` needs of a command's parser: a `Command` here, or `poc59.core.overrides.
    ConfigCommand` (train, prepare: the training config's keys). `parse` raises HelpRequested for --help
    and `error` for a bad argument."""

    prog: str
    error: type[Exception]

    def parse(self, argv: Sequence[str]) -> dict[str, Any]: ...


def run_command(
    command: CommandLine,
    argv: Sequence[str] | None,
    act: Callable[[dict[str, Any]], int],
    user_errors: Sequence[type[Exception] | str] = (),
    log: logging.Logger | None = None,
) -> int:
    """A command's whole life: parse `argv` (sys.argv[1:] if None), `act` on the options, and return the exit
    status: `act`'s, 0 after --help (printed on stdout), 2 with one logged line for a user error (the
    command's own error or one of `user_errors`: classes, or "module:name" imported only when `act` raised,
    so that parsing waits for no library); anything else is a bug and propagates (traceback, 1). `act`
    imports the command's library itself, after the arguments are parsed."""
    argv, verbose = take_verbose(sys.argv[1:] if argv is None else argv)
    setup_logging(verbose)
    log = log or logging.getLogger(command.prog.rsplit(" ", 1)[-1])
    try:
        options = command.parse(argv)
    except HelpRequested as asked:
        print(asked.text)
        return DONE
    except command.error as err:
        log.error("%s", err)
        return USER
    try:
        return act(options)
    except Exception as err:
        if not isinstance(err, command.error) and not any(_raised_as(err, e) for e in user_errors):
            raise
        log.error("%s", err)
        return USER


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
