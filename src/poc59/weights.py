"""poc59's weight cache from the command line.

    python -m poc59.weights fetch encoder=convnext_tiny              # download ImageNet weights (needs network)
    python -m poc59.weights fetch encoder=custom encoder.name=tu-resnet34
    python -m poc59.weights path encoder=segformer_b3                # where the file is expected

Arguments are key=value, as in training: encoder=<preset> (conf/encoder/<preset>.yaml),
encoder.name=<smp encoder or tu-<timm model>>, encoder.kwargs.<key>=<value>,
weights_dir=<folder> (default $POC59_CACHE/weights), force=true (fetch again).
Run `fetch` where the model hub is reachable (e.g. a login node); training never downloads.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import yaml

from poc59.model import pretrained
from poc59.model.encoders import encoder_presets
from poc59.model.factory import UnknownEncoderError, check_encoder_name

log = logging.getLogger("poc59.weights")

COMMANDS = ("fetch", "path")
USAGE = (
    "usage: python -m poc59.weights {fetch,path} encoder=<preset> [encoder.name=<name>] "
    "[encoder.kwargs.<key>=<value>] [weights_dir=<folder>] [force=true]"
)


class UsageError(ValueError):
    pass


def _value(text: str) -> Any:

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_args(argv: list[str]) -> dict[str, Any]:
    """{command, name, kwargs, weights_dir, force} from `fetch encoder=... key=value ...`."""

    if not argv or argv[0] in ("-h", "--help", "help"):
        raise UsageError(USAGE)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}: choose one of {', '.join(COMMANDS)}\n{USAGE}")
    preset: str | None = None
    name: str | None = None
    kwargs: dict[str, Any] = {}
    weights_dir: str | None = None
    force = False
    for arg in rest:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {arg!r}\n{USAGE}")
        if key == "encoder":
            preset = value
        elif key == "encoder.name":
            name = value
        elif key.startswith("encoder.kwargs."):
            kwargs[key[len("encoder.kwargs.") :]] = _value(value)
        elif key == "encoder.kwargs":
            parsed = _value(value)
            if not isinstance(parsed, dict):
                raise UsageError(
                    f"encoder.kwargs must be a mapping, e.g. encoder.kwargs={{img_size:256}}; got {value!r}"
                )
            kwargs.update(parsed)
        elif key == "weights_dir":
            weights_dir = value or None
        elif key == "force":
            force = bool(_value(value))
        elif key.startswith("encoder."):
            continue  # other preset fields (weights, batch_size, ...) do not matter here
        else:
            raise UsageError(f"unknown argument {key!r}\n{USAGE}")

    if preset is not None:
        presets = encoder_presets()
        if preset not in presets:
            raise UsageError(
                f"unknown encoder preset {preset!r}: choose one of {', '.join(presets) or '(none found)'}, "
                "or encoder=custom encoder.name=<smp encoder or tu-<timm model>>"
            )
        cfg = presets[preset]
        if name is None:
            name = cfg.get("name")
        kwargs = {**dict(cfg.get("kwargs") or {}), **kwargs}
    if name in (None, "", "???"):
        hint = "encoder=custom needs encoder.name" if preset == "custom" else "give encoder=<preset> or encoder.name"
        raise UsageError(f"no encoder name: {hint}, e.g. encoder=custom encoder.name=tu-resnet34\n{USAGE}")
    raw_name = preset is None or preset == "custom" or name != presets[preset].get("name")
    return dict(command=command, name=name, kwargs=kwargs, weights_dir=weights_dir, force=force, raw_name=raw_name)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        log.error("%s", e)
        return 2
    name = args["name"]
    if args["raw_name"]:  # presets' names are known; a raw name is checked before anything else
        try:
            check_encoder_name(name)
        except UnknownEncoderError as e:
            log.error("%s", e)
            return 2
    if args["command"] == "path":
        path = pretrained.cached_weights_path(name, args["weights_dir"])
        if path.is_file():
            log.info("%s: present", name)
        else:
            log.info(
                "%s: missing; fill it with: %s",
                name,
                pretrained.fetch_command(name, args["kwargs"], args["weights_dir"]),
            )
        print(path)
        return 0
    try:
        path = pretrained.fetch(name, args["weights_dir"], args["kwargs"], force=args["force"])
    except pretrained.HubUnreachableError as e:
        log.error("%s", e)
        return 1
    except (ValueError, OSError) as e:  # UnknownEncoderError, no pretrained weights, mismatch, disk
        log.error("%s", e)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
