"""`python -m poc59.weights fetch|path encoder=...`: poc59's weight cache from the command line (`--help`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from poc59.core.cli import Command, Key, run_command, to_value
from poc59.core.config import config_groups

log = logging.getLogger("poc59.weights")


class UsageError(ValueError):
    """A bad argument of this command (the message names it)."""


CLI = Command(
    prog="python -m poc59.weights",
    summary="poc59's weight cache: fetch an encoder's ImageNet weights where the model hub is reachable (e.g. a "
    "login node), or say where the file is expected. Training never downloads.",
    verbs=("fetch", "path"),
    examples=(
        "python -m poc59.weights fetch encoder=convnext_tiny              # download ImageNet weights (needs network)",
        "python -m poc59.weights fetch encoder=custom encoder.name=tu-resnet34",
        "python -m poc59.weights path encoder=segformer_b3                # where the file is expected",
    ),
    keys=(
        Key("encoder", str, "an encoder preset (conf/encoder/<preset>.yaml)", dest="preset"),
        Key("encoder.name", str, "an smp encoder or tu-<timm model> (instead of, or over, the preset's)", dest="name"),
        Key("encoder.kwargs.*", to_value, "one encoder keyword, e.g. encoder.kwargs.img_size=256", dest="kwargs"),
        Key(
            "encoder.kwargs", to_value, "all encoder keywords as a mapping, e.g. {img_size:256}", dest="kwargs_mapping"
        ),
        Key("weights_dir", str, "the weight cache (default $POC59_CACHE/weights, else ~/.cache/poc59/weights)"),
        Key("force", bool, "fetch again even when the file is there", default=False),
        Key("timeout", float, "seconds the download may take before it is given up (nothing is kept)", default=900.0),
        Key("encoder.*", to_value, "other encoder settings of a training command line (ignored here)", dest="ignored"),
    ),
    notes="Prints the weights file's path on stdout. Exit 0 done, 2 a bad setting, or the hub or the disk failed (named, with what to do), 1 a bug.",
    error=UsageError,
)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """{command, name, kwargs, weights_dir, force, raw_name} from `fetch encoder=... key=value ...`."""
    return _resolve(CLI.parse(argv))


def _resolve(given: dict[str, Any]) -> dict[str, Any]:
    """The encoder name and keywords: the preset's, with the keys given over them."""
    preset, name = given.get("preset"), given.get("name")
    mapping = given.get("kwargs_mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise UsageError(f"encoder.kwargs must be a mapping, e.g. encoder.kwargs={{img_size:256}}; got {mapping!r}")
    kwargs = {**(mapping or {}), **given.get("kwargs", {})}
    try:
        known = config_groups().get("encoder", [])  # conf/encoder/*.yaml, without importing the model library
    except FileNotFoundError:
        known = []
    if preset is not None and preset not in known:
        raise UsageError(
            f"unknown encoder preset {preset!r}: choose one of {', '.join(known) or '(none found)'}, "
            "or encoder=custom encoder.name=<smp encoder or tu-<timm model>>"
        )
    from poc59.model.presets import encoder_presets

    presets = encoder_presets()
    if preset is not None:
        cfg = presets[preset]
        name = name if name is not None else cfg.get("name")
        kwargs = {**dict(cfg.get("kwargs") or {}), **kwargs}
    if name in (None, "", "???"):
        hint = "encoder=custom needs encoder.name" if preset == "custom" else "give encoder=<preset> or encoder.name"
        raise UsageError(f"no encoder name: {hint}, e.g. encoder=custom encoder.name=tu-resnet34\n{CLI.usage()}")
    raw_name = preset is None or preset == "custom" or name != presets[preset].get("name")
    return {
        "command": given["verb"],
        "name": name,
        "kwargs": kwargs,
        "weights_dir": given.get("weights_dir") or None,
        "force": given.get("force", False),
        "timeout": given.get("timeout", 900.0),
        "raw_name": raw_name,
    }


def _weights(given: dict[str, Any]) -> int:
    from poc59.model import hub

    args = _resolve(given)
    name = args["name"]
    if args["command"] == "fetch":
        dest = hub.cached_weights_path(name, args["weights_dir"])
        if args["force"] or not dest.is_file():
            # The hub is probed before smp, timm and torch are imported (seconds, more on a loaded machine): an
            # unreachable hub is answered at once. A raw name is checked after it: offline, no name can be
            # fetched anyway, and checking one needs smp and timm.
            try:
                hub.check_hub()
            except hub.HubUnreachableError as e:
                log.error("%s", hub.unreachable_message(name, dest, str(e), args["kwargs"]))
                return 2  # the user acts on it (where to run), as on any input error

    from poc59.model import pretrained
    from poc59.model.encoders import check_encoder_name

    if args["raw_name"]:  # presets' names are known; a raw name is checked before anything is built
        check_encoder_name(name)
    if args["command"] == "path":
        path = pretrained.cached_weights_path(name, args["weights_dir"])
        if path.is_file():
            log.info("%s: present", name)
        else:
            fill = pretrained.fetch_command(name, args["kwargs"], args["weights_dir"])
            log.info("%s: missing; fill it with: %s", name, fill)
        print(path)  # the command's result, for scripts
        return 0
    try:
        path = pretrained.fetch(
            name, args["weights_dir"], args["kwargs"], force=args["force"], download_timeout=args["timeout"]
        )
    except (pretrained.HubUnreachableError, ValueError, OSError) as e:  # no network, no such weights, mismatch, disk
        log.error("%s", e)
        return 2  # the user acts on it (where to run, which weights), as on any input error
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _weights, ("poc59.model.encoders:UnknownEncoderError",), log)


if __name__ == "__main__":
    sys.exit(main())
