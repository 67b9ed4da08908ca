"""The weights path end to end, against a local server that speaks the Hugging Face hub's download protocol
(`HF_ENDPOINT=http://127.0.0.1:PORT`: HEAD and GET of /<repo>/resolve/<revision>/<file> with the headers
huggingface_hub reads), serving weight files the test makes from randomly initialised models: `weights
fetch`, then training offline (`HF_HUB_OFFLINE=1`) from the fetched file; and the server failing."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from safetensors.torch import load_file, save_file

from helpers import SMALL, make_cfg

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMM = "tu-resnet18"  # timm's hub repo timm/resnet18.a1_in1k, model.safetensors
SMP = "mit_b0"  # smp's hub repo smp-hub/mit_b0.imagenet, config.json + model.safetensors


class Hub(http.server.ThreadingHTTPServer):
    """{url path: bytes} served as the hub serves files; `mode` breaks it: 404, 500, truncate, hang."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.mode, self.requests = files, "ok", []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        path = self.path.split("?")[0]
        if path in ("", "/"):  # the reachability probe
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        mode = self.server.mode
        if mode == "hang":
            time.sleep(30)
            return
        data = self.server.files.get(path)
        if mode == "500":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None or mode == "404":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and body:  # a resumed download, as the hub serves it
            start = int(wanted[6:].split("-")[0] or 0)
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Connection", "close")
        self.end_headers()
        if body:  # truncate: the server holds only the first half of the file, whatever it claims
            end = len(data) // 2 if mode == "truncate" else len(data)
            self.wfile.write(data[start:end])
            self.wfile.flush()
        self.close_connection = True

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)


def _safetensors(tensors: dict[str, torch.Tensor], tmp: Path, name: str) -> bytes:
    path = tmp / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path.read_bytes()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The hub, serving a random timm resnet18 and a random smp mit_b0 encoder in the hub's layout."""
    tmp = tmp_path_factory.mktemp("hub")
    torch.manual_seed(7)
    timm_cfg = timm.models.get_pretrained_cfg("resnet18")
    resnet = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.manual_seed(8)
    mit = smp.encoders.get_encoder(SMP, weights=None).state_dict()
    mit_repo = smp.encoders.encoders[SMP]["pretrained_settings"]["imagenet"]
    files = {
        f"/{timm_cfg.hf_hub_id}/resolve/main/model.safetensors": _safetensors(resnet, tmp, "resnet.safetensors"),
        f"/{mit_repo['repo_id']}/resolve/{mit_repo['revision']}/model.safetensors": _safetensors(mit, tmp, "mit.st"),
        f"/{mit_repo['repo_id']}/resolve/{mit_repo['revision']}/config.json": json.dumps({}).encode(),
    }
    server = Hub(files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, {"resnet": resnet, "mit": mit}
    server.shutdown()


def _env(tmp: Path, hub: Hub, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {
        **env,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": "3",
        "HF_HUB_DOWNLOAD_TIMEOUT": "3",
        **extra,
    }


def _fetch(tmp: Path, hub: Hub, name: str, timeout: int = 15, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "poc59.weights",
            "fetch",
            "encoder=custom",
            f"encoder.name={name}",
            f"weights_dir={tmp / 'weights'}",
            f"timeout={timeout}",  # a hub that stops answering is given up after this, not after HF's minutes of retries
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp, hub, **extra),
    )


@pytest.mark.slow
@pytest.mark.parametrize("name, served, prefix", [(TIMM, "resnet", "model."), (SMP, "mit", "")])
def test_fetch_then_train_offline_with_the_served_weights(tmp_path, monkeypatch, hub, name, served, prefix):
    server, weights = hub
    server.mode = "ok"
    done = _fetch(tmp_path, server, name)
    assert done.returncode == 0, done.stderr[-3000:]
    cached = Path(done.stdout.strip().splitlines()[-1])
    assert cached.is_file() and cached.parent == tmp_path / "weights"
    fetched = load_file(str(cached))
    served_tensors = weights[served]
    # the encoder's first tensors are the served ones (smp's timm wrapper names them model.<timm key>)
    for key in list(served_tensors)[:5]:
        assert torch.equal(fetched[prefix + key], served_tensors[key]), key

    # offline: the network poc59 builds for training starts from exactly these tensors, and a training runs on
    # it. Both in this process, as they read only the fetched file (the fetch has a process of its own, as
    # huggingface_hub reads the hub's address from the environment when it is imported)
    from poc59.model.factory import build_network
    from poc59.training.run import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = build_network(name, weights="imagenet", weights_dir=tmp_path / "weights", num_classes=4)
    state = net.encoder.state_dict()
    assert all(torch.equal(state[k], fetched[k]) for k in list(fetched)[:5])
    cfg = make_cfg(
        tmp_path,
        *[o for o in SMALL if not o.startswith("encoder=")],
        "encoder=custom",
        f"encoder.name={name}",
        "encoder.weights=imagenet",
        f"paths.weights_dir={tmp_path / 'weights'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
    )
    assert train(cfg)["epochs_run"] == 1
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["404", "500", "truncate", "hang"])
def test_a_failing_hub_leaves_no_file_and_says_what_to_do(tmp_path, hub, mode):
    server, _ = hub
    server.mode = mode
    server.requests.clear()
    try:
        start = time.monotonic()
        # a hub that holds the request, or answers 500 to HF's retries, is given up at the download's timeout:
        # a short one here, as what is checked is what that leaves behind, not how long it is
        done = _fetch(tmp_path, server, TIMM, timeout=5 if mode in ("500", "hang") else 15)
        took = time.monotonic() - start
    finally:
        server.mode = "ok"
    assert [path for _, path in server.requests if path.split("?")[0] not in ("", "/")], server.requests  # asked
    assert done.returncode == 2, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert "Traceback" not in said and "encoder.weights=null" in said
    assert not list((tmp_path / "weights").rglob("*.safetensors")) and not list((tmp_path / "weights").rglob("*tmp*"))
    # within the timeouts (a 10 s probe, the 5 or 15 s download) and a fresh process's start, which load stretches
    # (67 s beside a 300 MP benchmark); hanging on, or HF's own retries, take minutes
    assert took < 100
