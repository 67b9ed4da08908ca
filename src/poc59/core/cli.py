"""`key=value` command-line arguments for poc59's small commands (evaluate, compare, predict, ...).

Training is Hydra; the analysis commands take the same `key=value` shape without
Hydra's start-up cost. One parser, so every command converts and complains alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import yaml

TRUE_FALSE = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


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


def _describe(kind: Callable[[str], Any]) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", list: "a list"}.get(kind, "a value")  # type: ignore[call-overload]


def parse_key_values(
    argv: list[str],
    keys: Mapping[str, Callable[[str], Any]],
    usage: str,
    error: type[Exception] = ValueError,
) -> dict[str, Any]:
    """`{key: converted value}` from `key=value` arguments; `keys` maps each allowed key to its type.

    bool and list use `to_bool` / `to_list`; any other callable converts the text. A leading
    `+` (Hydra habit) is accepted. Unknown keys, bad values and `-h`/`--help` raise `error`
    with the usage text.
    """
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise error(usage)
    converters = {bool: to_bool, list: to_list}
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or key not in keys:
            raise error(f"unknown argument {arg!r} (expected key=value with one of: {', '.join(keys)})\n{usage}")
        kind = keys[key]
        try:
            out[key] = converters.get(kind, kind)(value)  # type: ignore[call-overload]
        except (TypeError, ValueError, yaml.YAMLError):
            raise error(f"{key}={value}: expected {_describe(kind)}\n{usage}") from None
    return out
