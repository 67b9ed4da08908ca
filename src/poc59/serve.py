"""`python -m poc59.serve model=<model.onnx | best.ckpt | run folder>`: a web page that finds damage in a scan."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from poc59.core.cli import USER, Command, Key, run_command
from poc59.core.config import SettingError

log = logging.getLogger("poc59.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
INSTALL_HINT = 'pip install -e ".[serve]"'

CLI = Command(
    prog="python -m poc59.serve",
    summary="A web page (and its API) over one model: drop a scan or paste a IIIF info.json URL, see the damage "
    "overlay with one toggle per class, the confidence map, the classes found with their area and how far to "
    "trust them, and download the class map, the confidence map, the statistics and the condition report.",
    examples=(
        "python -m poc59.serve model=outputs/runs/<name>/export/model.onnx   # ONNX Runtime on the CPU",
        "python -m poc59.serve model=outputs/runs/<name> port=8080           # its best.ckpt (PyTorch)",
        "python -m poc59.serve model=model.onnx host=0.0.0.0                 # reachable from other machines",
    ),
    keys=(
        Key(
            "model",
            str,
            "an exported model (.onnx, with its .card.json; .pt), a checkpoint (.ckpt) or a run folder",
            required=True,
        ),
        Key("port", int, "the TCP port of the page", default=7860),
        Key(
            "host",
            str,
            "the address to listen on: 127.0.0.1 (this machine only), or e.g. 0.0.0.0 (every machine that reaches "
            "this one)",
            default="127.0.0.1",
        ),
        Key("device", str, "auto | cpu | cuda | cuda:N (checkpoints; an .onnx model runs on ONNX Runtime)", "auto"),
        Key("max_upload_mb", float, "the largest scan file accepted (MB)"),
        Key("max_pixels", int, "the largest scan accepted, width x height"),
        Key("max_memory_mb", float, "the working memory one scan may need (MB); a larger one is refused"),
        Key("timeout_s", float, "the seconds one prediction may run; a slower one is stopped and answered"),
        Key("concurrency", int, "predictions run at once (more wait in the queue)"),
        Key("queue_size", int, "requests that may wait; past that a request is told the server is busy"),
        Key(
            "threads", Any, "CPU threads: auto (the CPUs this job may use, less those busy with other work) | N", "auto"
        ),
    ),
    notes="Start-up checks the settings, the port and the model before the port is opened: a missing or wrong "
    "model, a port in use or a bad setting exits with 2 and one message. A scan the server does not predict "
    "(not an image, too large, a decompression bomb, corrupt, over the time or memory budget) is answered in "
    "the page, and the server goes on serving. Stop it with Ctrl-C.",
    fills="poc59.serving.limits:Limits",
)
USER_ERRORS = ("poc59.artifacts.trained:ModelLoadError", "poc59.core.device:DeviceError", SettingError)
_LIMITS = ("max_upload_mb", "max_pixels", "max_memory_mb", "timeout_s", "concurrency", "queue_size")


def _serve(options: dict[str, Any]) -> int:
    from poc59.serving.limits import Limits
    from poc59.serving.startup import check_port, model_path

    host, port = options.get("host", "127.0.0.1"), options.get("port", 7860)
    try:  # answered here, in seconds: run_command's check of the user's errors would import torch first
        limits = Limits(**{k: options[k] for k in _LIMITS if k in options}).check()
        check_port(host, port)
        model = model_path(options["model"])
    except SettingError as err:
        log.error("%s", err)
        return USER
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing sent anywhere
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SettingError(f"python -m poc59.serve needs Gradio, an optional extra: {INSTALL_HINT}") from None
    from poc59.core.threads import set_threads
    from poc59.serving.app import build_app, launch
    from poc59.serving.engine import Engine

    set_threads(options.get("threads", "auto"))
    with tempfile.TemporaryDirectory(prefix="poc59-serve-") as work:
        engine = Engine.load(model, limits, work, options.get("device", "auto"))
        app = build_app(engine, limits)
        if host not in LOOPBACK:
            log.warning(
                "listening on %s:%d: every machine that can reach this one at that address can open the page, "
                "upload scans and use the model (host=127.0.0.1 keeps it to this machine)",
                host,
                port,
            )
        log.info(
            "serving %s at http://%s:%d (%d prediction(s) at a time, %d waiting at most; Ctrl-C stops)",
            engine.model.source,
            host,
            port,
            limits.concurrency,
            limits.queue_size,
        )
        try:
            launch(app, engine, host, port, limits)
        except KeyboardInterrupt:
            log.info("stopped")
        except OSError as err:  # the port taken between the check and the launch
            raise SettingError(f"port={port}: cannot listen on {host}:{port} ({err}); pass another port") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _serve, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())
