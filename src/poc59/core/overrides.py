"""The command line of the commands built on the training config (`train`, `prepare`): Hydra overrides.

`key=value` changes a key, `group=option` picks a file of a config group (conf/<group>/<option>.yaml),
`+key=value` adds a key, `-m` with `a,b` values sweeps. Before anything runs, `check_overrides` composes
the config with them (each option of a swept group too) and turns Hydra's errors into one `SettingError`
naming the override and the fix (exit 2): an unknown key gets the closest known one. `help_text` is
`--help`: every group with its options and every key with its default and meaning, the meanings read from
the comments beside the keys in conf/. A value of another type than its key's default (`trainer.max_epochs=
abc`) is refused the same way. `ConfigCommand` is these commands' side of `poc59.core.cli.run_command`, the
one front door of every command: nothing here imports torch, so `--help` and a bad override answer at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from poc59.core.cli import HELP as _HELP_WORDS
from poc59.core.cli import VERBOSE_HELP, HelpRequested, key_table
from poc59.core.config import SettingError, config_dir, config_groups, flatten, register_resolvers

HELP = ("-h", "--help")
UNSWEPT = ("trainer.devices", "trainer.num_nodes", "trainer.accelerator")  # the launcher's one request per sweep
# Keys that take more than their default's type (the typed check leaves them to the command's settings check)
LOOSE = {
    "data.cv.fold": "an index, or with data.cv.by= a value of that column",
    "trainer.fast_dev_run": "true, false, or a number of batches (Lightning's Trainer)",
}
_KINDS = {bool: "true or false", int: "an integer", float: "a number"}
# Keys that moved when the config became one object tree (the network in `model`, its parts in the `encoder` and
# `decoder` groups, the LightningModule in `module`, one key for the run folder): {old key: the key now}. A
# command line that still sets one is refused with the override that replaces it (`moved_key`).
MOVED = {
    "encoder.lr": "optimizer.lr",  # the encoder preset sets its recommended one there
    "encoder.batch_size": "data.batch_size",
    "encoder.decoder": "decoder",  # a group: decoder=<option>
    "encoder.decoder_kwargs": "decoder.kwargs",
    "model.channels_last": "module.channels_last",
    "model.compile": "module.compile",
    "model.compile_options": "module.compile_options",
    "run_name": "run_dir",  # run_dir=<paths.output_dir>/runs/<name>
    "paths.run_dir": "run_dir",
}


def split_argv(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(the overrides, whether Hydra's own flags ask for something else than a run: --cfg, --info, ...)."""
    args, _ = get_args_parser().parse_known_args(list(argv))
    other = args.info or args.hydra_help or args.shell_completion or args.experimental_rerun
    return list(args.overrides), bool(other or args.config_name or args.config_path or args.config_dir)


def compose_train(overrides: Sequence[str], hydra: bool = False, run_dir: str | Path | None = None) -> DictConfig:
    """conf/train.yaml composed with `overrides` (no sweep syntax); a Hydra error is a SettingError.

    `run_dir`: the run's folder, for a config that `poc59.training.run.train` runs without Hydra (whose runtime
    otherwise names it: `paths.run_dir` is Hydra's output folder), as `python -m poc59.train <overrides>
    run_dir=<run_dir>` would train it."""
    try:
        cfg = _compose(overrides, hydra)
    except (HydraException, OmegaConfBaseException) as err:
        raise SettingError(_explain(err, overrides)) from None
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
    return cfg


def _compose(overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def check_overrides(
    argv: Sequence[str], prog: str = "python -m poc59.train", check: Callable[[DictConfig], None] | None = None
) -> DictConfig | None:
    """Refuse, before any data is read, an override that cannot compose (SettingError, exit 2). With `-m`
    sweep values, each option of a swept group is composed once (the other keys at their first value); with
    `check` (the command's settings check), every value of every swept key is composed and checked that way,
    so a sweep with one bad value is refused before any job is submitted, not when that job starts.
    Returns the config of the first job (None when Hydra's flags ask for something else than a run)."""
    overrides, other = split_argv(argv)
    if other:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise SettingError(f"cannot read the overrides: {err}\n{prog} --help lists every key") from None
    for o in parsed:
        if o.is_sweep_override() and o.key_or_group in UNSWEPT:
            raise SettingError(
                f"{o.input_line}: {o.key_or_group} cannot be swept: a sweep's jobs share one launcher request "
                "(processes, nodes and GPUs per job follow trainer.devices and trainer.num_nodes), so start one "
                "sweep per value"
            )
    known_groups = config_groups()
    listed = [o for o in parsed if not o.is_sweep_override() or o.is_discrete_sweep()]  # not a sweeper's ranges
    first = [_with_value(o.input_line, o, _values(o)[0]) for o in listed]
    chosen = [line for line, o in zip(first, listed) if o.key_or_group in known_groups]
    base = compose_train(chosen, hydra=True)  # the groups chosen: every key's default, once
    for o in parsed:
        moved = moved_key(o, base, parsed)
        if moved:
            raise SettingError(moved)
    check_keys([o for o in listed if o.key_or_group not in known_groups], base)
    variants = [first]
    for i, o in enumerate(listed):
        if o.is_sweep_override() and (check is not None or o.key_or_group in known_groups):
            variants += [[*first[:i], _with_value(o.input_line, o, v), *first[i + 1 :]] for v in _values(o)[1:]]
    # every override composes before any check runs (a check may import the training library)
    composed = [base if variant == chosen else compose_train(variant, hydra=True) for variant in variants]
    if check is not None:
        for variant, cfg in zip(variants, composed):
            try:
                check(cfg)
            except SettingError as err:
                swept = [line for line, o in zip(variant, listed) if o.is_sweep_override()]
                raise SettingError(f"the sweep's job with {' '.join(swept)}: {err}" if swept else str(err)) from None
    return composed[0]


def moved_key(o: Any, base: DictConfig, parsed: Sequence[Any] = ()) -> str | None:
    """The message for an override of a key that moved (`MOVED`): the override that replaces it, ready to paste
    (with a leading + where `base`, the config of the chosen groups, lacks the new key); None for any other."""
    key = o.key_or_group
    old = next((m for m in MOVED if key == m or key.startswith(m + ".")), None)
    if old is None:
        return None
    line = o.input_line
    value = line.split("=", 1)[1] if "=" in line else ""  # as typed (1e-3 stays 1e-3, a sweep's list stays one)
    if old == "encoder.decoder":
        options = config_groups().get("decoder", [])
        pick = next((d for d in options if d == str(value).lower()), None)
        use = f"decoder={pick}" if pick else f"decoder=<one of {', '.join(options)}>"
        return f"{line}: the decoder is a config group of its own now: use {use} (conf/decoder/)"
    if old == "run_name":
        given = [p.input_line.split("=", 1)[1] for p in parsed if p.key_or_group == "paths.output_dir"]
        outputs = given[-1] if given else OmegaConf.select(base, "paths.output_dir", default="outputs")
        return f"{line}: the run folder has one key now, run_dir: use run_dir={outputs}/runs/{value}"
    new = MOVED[old] + key[len(old) :]
    exists = OmegaConf.select(base, new, default=None, throw_on_missing=False) is not None or new in flatten(
        OmegaConf.to_container(base, resolve=False)
    )
    plus = "~" if o.is_delete() else "++" if o.is_force_add() else "" if exists else "+"  # what Hydra takes there
    return f"{line}: {old} is {MOVED[old]} now: use {plus}{new}" + (f"={value}" if not o.is_delete() else "")


def check_keys(parsed: Sequence[Any], base: DictConfig) -> None:
    """Of the overrides of keys (not groups), refuse (SettingError) a key `base` (the config of the chosen
    groups) does not have, with the closest one, and a value of another type than its key's default: a
    switch takes true or false, an integer key an integer, a number key a number (an integer too); a default
    that is another key (`${optimizer.lr}`) has that key's type (`++` too, where the key exists). Keys
    the override adds (`+`, or `++` where the config lacks the key) or deletes (`~`), hydra.* keys (Hydra checks and types its own when the overrides compose), null,
    interpolations (`${...}`) and the `LOOSE` keys are left to Hydra and the command's own checks."""
    keys = [o for o in parsed if not o.is_add() and not o.is_delete() and not o.key_or_group.startswith("hydra")]
    if not keys:
        return
    defaults = flatten(OmegaConf.to_container(base, resolve=False))
    parser = OverridesParser.create()
    for o in keys:
        key = o.key_or_group
        if key not in defaults and not any(k.startswith(key + ".") for k in defaults):
            if o.is_force_add():  # `++` adds the key the config lacks
                continue
            raise SettingError(_unknown_key(key, list(defaults)))
        default = _followed(defaults, key)
        kind = type(default)
        if key in LOOSE or kind not in _KINDS:
            continue
        for text in _values(o):
            value = parser.parse_override(f"{key}={text}").value()
            if value is None or (isinstance(value, str) and "${" in value):
                continue
            fits = (
                isinstance(value, bool)
                if kind is bool
                else not isinstance(value, bool) and isinstance(value, int if kind is int else int | float)
            )
            if not fits:
                raise SettingError(
                    f"{o.input_line}: {key} takes {_KINDS[kind]}, not {text!r} (its default: {key}={_show(default)})"
                )


@dataclass(frozen=True)
class ConfigCommand:
    """A command whose keys are the training config's (`train`, `prepare`), for `run_command`: `parse`
    answers --help with `help_text`, checks the overrides (`check_overrides`, then `check`: the command's
    settings check, which may import the library; not for `--cfg`, which only prints the config) and
    returns {"argv": the arguments, "cfg": the first job's config (None when Hydra's own flags ask for
    something else than a run)}."""

    prog: str
    summary: str
    check: Callable[[DictConfig], None] | None = None
    error: type[Exception] = SettingError

    def help(self, argv: Sequence[str] = ()) -> str:
        return help_text(argv, self.prog, self.summary)

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        argv = list(argv)
        if any(a in _HELP_WORDS for a in argv):
            raise HelpRequested(self.help(argv))
        shown = get_args_parser().parse_known_args(argv)[0].cfg  # --cfg prints a config: nothing is run
        return {"argv": argv, "cfg": check_overrides(argv, self.prog, None if shown else self.check)}


def help_text(argv: Sequence[str], prog: str, summary: str) -> str:
    """`--help`: the groups and their options, then every key of the config the other arguments compose
    (so `encoder=custom --help` shows custom's keys), with default and meaning."""
    overrides = [a for a in split_argv([a for a in argv if a not in _HELP_WORDS])[0]]
    parsed = OverridesParser.create().parse_overrides(overrides)
    cfg = compose_train([_with_value(o.input_line, o, _values(o)[0]) for o in parsed], hydra=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    lines = [
        f"usage: {prog} [key=value ...] [group=option ...] [-m key=a,b ...]   (Hydra overrides)",
        "",
        summary,
        "",
        "Config groups (group=option; the chosen one in [brackets]):",
    ]
    for group, options in config_groups().items():
        chosen = choices.get(group)
        lines.append(f"  {group:<16} " + " ".join(f"[{o}]" if o == chosen else o for o in options))
    lines += ["", "Keys (key=default: meaning):"]
    rows = [(f"{key}={_show(value)}", meaning) for key, value, meaning in config_keys(cfg, choices)]
    lines += key_table(rows, widest=44)
    lines += [
        "",
        "+key=value adds a key the config does not have; hydra.* keys and Hydra's flags "
        f"(-m, --cfg job, --info): {prog} --hydra-help.",
        VERBOSE_HELP,
        "Exit 0 done, 2 a setting or the data is wrong (one message naming the key and the fix), 1 a bug.",
    ]
    return "\n".join(lines)


def config_keys(cfg: DictConfig, choices: dict[str, Any] | None = None) -> list[tuple[str, Any, str]]:
    """(key, default, meaning) of every key of a composed config (hydra.* left out), the meaning from the
    comment beside the key in train.yaml or in its group's files (the chosen one first)."""
    root = config_dir()
    meanings = _yaml_comments(root / "train.yaml", "")
    for group, options in config_groups().items():
        chosen = (choices or {}).get(group)
        for option in sorted(options, key=lambda o: o != chosen):  # the chosen file's comments first
            file = root / group / f"{option}.yaml"
            package = "" if "@package _global_" in file.read_text() or "/" in group else f"{group}."
            for key, text in _yaml_comments(file, package).items():
                meanings.setdefault(key, text)
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return [
        (key, value, meanings.get(key) or _argument_of(container, key)) for key, value in flatten(container).items()
    ]


def _argument_of(container: dict, key: str) -> str:
    """The meaning of an uncommented key of an object the config builds: `Trainer(max_epochs=...)`."""
    *parents, name = key.split(".")
    node: Any = container
    for part in parents:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    target = node.get("_target_") if isinstance(node, dict) else None
    if not target:
        return ""
    if name == "_target_":
        return "the class this builds (the keys beside it are its arguments)"
    if name == "_partial_":
        return "built later, when its remaining arguments are known"
    return f"{target}({name}=...)"


def _values(o: Any) -> list[str]:
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]


def _with_value(line: str, o: Any, value: str) -> str:
    if o.is_delete():
        return line
    return f"{o.get_key_element()}={value}" if o.is_sweep_override() else line


def _explain(err: Exception, overrides: Sequence[str]) -> str:
    text = str(err).strip()
    missing = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    option = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if option:
        group, value = option.groups()
        known = config_groups().get(group, [])
        close = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
        hint = f"; did you mean {group}={close[0]}?" if close else ""
        message = f"no option {value!r} in the config group {group!r} (options: {', '.join(known)}){hint}"
        if group == "encoder":
            message += (
                "\nAny segmentation-models-pytorch or timm encoder works by name: "
                f"encoder=custom encoder.name={value if value.startswith('tu-') else 'tu-' + value}"
            )
        return message
    if missing:
        key = missing.group(1)
        full = re.search(r"full_key: (\S+)", text)
        key = full.group(1) if full and "." in full.group(1) else key
        known = compose_keys_without(overrides, key)
        given = [o for o in overrides if o.partition("=")[0] == key]
        if key in known and given:  # the key exists: the value brings keys a mapping does not have
            cause = re.search(r"full_key: (\S+)", str(err.__cause__ or err.__context__ or ""))
            new = f"key {cause.group(1)}" if cause else f"new keys under {key}"
            return (
                f"{given[0]}: the config has no {new} (an override sets only the keys a mapping has); "
                f"add it with a leading +: +{given[0]}"
            )
        return _unknown_key(key, known)
    cause = err.__cause__ or err.__context__
    why = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
    return (
        f"the overrides do not compose: {text}"
        + (f" ({why})" if why and why not in text else "")
        + "\n(python -m poc59.train --help lists every group and key)"
    )


def _followed(defaults: dict[str, Any], key: str) -> Any:
    """`key`'s default, following interpolations of another key (`${optimizer.lr}`; not resolvers,
    whose value may need the library, e.g. `${poc59.precision:}`)."""
    value, seen = defaults.get(key), {key}
    while isinstance(value, str) and (ref := re.fullmatch(r"\$\{([\w.]+)\}", value)) and ref.group(1) not in seen:
        seen.add(ref.group(1))
        value = defaults.get(ref.group(1))
    return value


def _unknown_key(key: str, known: Sequence[str]) -> str:
    """The message for a key the config does not have, with the closest of `known` (or one named alike)."""
    close = (
        difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        or [k for k in known if k.endswith("." + key.rsplit(".", 1)[-1])][:1]
    )
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown key {key!r}{hint} (python -m poc59.train --help lists every key; +{key}=... adds a new one)"


def compose_keys_without(overrides: Sequence[str], key: str) -> list[str]:
    """The keys of the config composed with the overrides other than `key`'s (to suggest one)."""
    rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        cfg = _compose(rest, hydra=True)
    except (HydraException, OmegaConfBaseException):
        cfg = _compose([], hydra=True)
    return list(flatten(OmegaConf.to_container(cfg, resolve=False)))


def _yaml_comments(path: Path, prefix: str) -> dict[str, str]:
    """{dotted key: its trailing comment} of one config file (the comment on the key's own line, or on the
    block's first line for a mapping, with the comment-only lines under it whose `#` stands in the same
    column: a comment that runs on); keys under `prefix` (a group's package, e.g. `data.`)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: tuple[str, int] | None = None  # the key whose comment may run on, and its `#` column
    for line in path.read_text().splitlines():
        more = re.match(r"^(\s+)#\s*(.*)$", line)
        if more and last is not None and len(more.group(1)) == last[1]:
            comments[last[0]] += " " + more.group(2).strip()
            continue
        last = None
        m = re.match(r"^(\s*)([A-Za-z_]\w*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = prefix + ".".join([k for _, k in stack] + [key])
        comment = re.search(r"(?:^|\s)#\s*(.*)$", rest)
        if comment and key != "defaults":
            comments[dotted] = comment.group(1).strip()
            last = (dotted, m.start(3) + rest.index("#", comment.start()))
        stack.append((indent, key))
    return comments


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return str(value).replace(" ", "")
    return str(value)
