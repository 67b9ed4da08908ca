"""What `python -m poc59.serve` checks before it imports torch or Gradio: the port and the model's path.

Both are the user's settings, so a mistake is answered in seconds with one message (exit 2), before the
model loads and before the port is opened.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from poc59.core.config import SettingError

MODEL_SUFFIXES = (".onnx", ".pt", ".ckpt")


def model_path(value: str | Path) -> Path:
    """The model `model=` names: an existing exported model or checkpoint file, or a folder (a run folder,
    whose best checkpoint `poc59.artifacts.load.locate_checkpoint` finds); SettingError otherwise."""
    path = Path(value).expanduser()
    if not path.exists():
        raise SettingError(
            f"model={path}: no such file or folder. Name an exported model (model.onnx, from python -m "
            "poc59.export), a checkpoint (best.ckpt) or a run folder (outputs/runs/<name>)"
        )
    if path.is_file() and path.suffix not in MODEL_SUFFIXES:
        raise SettingError(
            f"model={path}: not a poc59 model file (.onnx, .pt or .ckpt). Name an exported model (model.onnx), "
            "a checkpoint (best.ckpt) or a run folder"
        )
    return path


def _bind_error(host: str, port: int) -> OSError | None:
    """Why `port` cannot be listened on at `host` now, or None when it can."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as err:
            return err
    return None


def check_port(host: str, port: int) -> None:
    """SettingError unless `port` can be listened on at `host` now (the page would fail to open); for a port in
    use, the message names a free one."""
    if not 0 < port < 65536:
        raise SettingError(f"port={port}: a TCP port is 1 to 65535, e.g. port=7860")
    try:
        err = _bind_error(host, port)
    except socket.gaierror as why:
        raise SettingError(f"host={host}: not an address of this machine ({why}); e.g. host=127.0.0.1") from None
    if err is None:
        return
    if err.errno == errno.EADDRINUSE:
        free = next((p for p in range(port + 1, min(port + 100, 65536)) if _bind_error(host, p) is None), None)
        advice = f"pass another port, e.g. port={free} (free now)" if free else "pass another port="
        raise SettingError(f"port={port}: another program listens on {host}:{port}; {advice}")
    raise SettingError(f"host={host} port={port}: cannot listen there ({err.strerror}); e.g. port=7860")
