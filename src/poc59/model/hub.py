"""The weight cache's locations and the model hub's reachability: what `python -m poc59.weights` needs before it
knows whether to download. No model library is imported here (standard library, huggingface_hub's constants and
session, the yaml presets), so an unreachable hub is answered in about a second, not after smp, timm and torch
have loaded (poc59.model.pretrained does the downloading and loading)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from huggingface_hub.utils import get_session

from poc59.core.config import cache_root
from poc59.model.presets import encoder_overrides

IMAGENET = "imagenet"
FETCH_MODULE = "poc59.weights"


class HubUnreachableError(ConnectionError):
    """The model hub cannot be reached (or is disabled with HF_HUB_OFFLINE)."""


def default_weights_dir() -> Path:
    """poc59's weight cache: `cache_root()/weights` ($POC59_CACHE/weights, else ~/.cache/poc59/weights)."""

    return cache_root() / "weights"


def resolve_weights_dir(weights_dir: str | Path | None = None) -> Path:
    return Path(weights_dir).expanduser().resolve() if weights_dir else default_weights_dir()


def cached_weights_path(name: str, weights_dir: str | Path | None = None) -> Path:
    """Where the ImageNet weights of encoder `name` are expected: `<weights_dir>/<name>.imagenet.safetensors`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return resolve_weights_dir(weights_dir) / f"{safe}.{IMAGENET}.safetensors"


def fetch_command(name: str, kwargs: Mapping[str, Any] | None = None, weights_dir: str | Path | None = None) -> str:
    """The exact command that fills the weight cache for encoder `name`."""
    command = f"python -m {FETCH_MODULE} fetch {encoder_overrides(name, kwargs)}"
    if weights_dir is not None and resolve_weights_dir(weights_dir) != default_weights_dir():
        command += f" weights_dir={resolve_weights_dir(weights_dir)}"
    return command


def _hub_offline_env() -> bool:
    values = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(v.strip().lower() in ("1", "true", "yes", "on") for v in values):
        return True
    return bool(constants.HF_HUB_OFFLINE)  # huggingface_hub's own reading of the environment


def check_hub(timeout: float = 10.0) -> None:
    """Raise HubUnreachableError unless the model hub answers within `timeout` seconds (bounded, no retries)."""

    endpoint = constants.ENDPOINT
    if _hub_offline_env():
        raise HubUnreachableError(f"the model hub is disabled here (HF_HUB_OFFLINE=1); {endpoint} was not contacted")
    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            outcome["status"] = get_session().head(endpoint, timeout=timeout).status_code
        except Exception as e:  # DNS failure, refused, proxy, TLS, timeout
            outcome["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=probe, name="poc59-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    if thread.is_alive():
        raise HubUnreachableError(f"the model hub {endpoint} did not answer within {timeout:.0f} s")
    if "error" in outcome:
        raise HubUnreachableError(f"the model hub {endpoint} is unreachable ({outcome['error']})")


def unreachable_message(name: str, dest: Path, reason: str, kwargs: Mapping[str, Any] | None = None) -> str:
    return (
        f"Cannot fetch ImageNet weights for encoder {name}: {reason}.\n"
        "  - run the same command on a machine with network (e.g. a login node), with the same $POC59_CACHE:\n"
        f"      {fetch_command(name, kwargs, dest.parent)}\n"
        f"  - or copy a file in by hand: an smp encoder state dict as {dest}, or pass any file directly with "
        "encoder.weights=/path/to/file (.safetensors or .pth; for tu- encoders a timm checkpoint works too)\n"
        "  - or train from scratch: encoder.weights=null"
    )
