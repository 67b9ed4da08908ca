"""Encoder weights: loading files (smp and timm formats), the weight cache, and the offline fetch CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import poc59
from in_process import command
from poc59.model.factory import build_network
from poc59.model.pretrained import (
    HubUnreachableError,
    MissingWeightsError,
    WeightsMismatchError,
    cached_weights_path,
    fetch,
)
from poc59.weights import UsageError, parse_args

TINY = "tu-mobilenetv3_small_050"  # conf/encoder/tiny.yaml
SMALL_SMP = "mit_b0"  # smp's own MiT, the smallest


def _randomised(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Every float tensor replaced by noise, so no tensor equals a fresh initialisation (BN ones/zeros included)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v.clone()
        for k, v in state.items()
    }


def _assert_loaded(net: torch.nn.Module, expected: dict[str, torch.Tensor], fresh: torch.nn.Module) -> None:
    loaded, init = net.encoder.state_dict(), fresh.encoder.state_dict()
    assert set(loaded) == set(expected)
    for key, tensor in loaded.items():
        assert torch.equal(tensor, expected[key]), key
    for key, param in net.encoder.named_parameters():
        assert not torch.equal(param, init[key]), key


def _timm_features(name: str, path: Path, like: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Independent reference: timm's own loader (stack.md: works offline), features-only as smp built `like`."""
    model = timm.create_model(
        name,
        features_only=True,
        out_indices=tuple(like.encoder.model.feature_info.out_indices),
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    return model.state_dict()


@pytest.fixture(scope="module")
def smp_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    net = build_network(SMALL_SMP)
    state = _randomised(net.encoder.state_dict())
    path = tmp_path_factory.mktemp("weights") / f"{SMALL_SMP}.safetensors"
    save_file(state, str(path))
    return path, state


def test_smp_state_dict_file_loads(smp_file):
    path, state = smp_file
    fresh = build_network(SMALL_SMP)
    _assert_loaded(build_network(SMALL_SMP, weights=str(path)), state, fresh)


def test_whole_model_checkpoint_loads_its_encoder(smp_file, tmp_path):
    path, state = smp_file
    net = build_network(SMALL_SMP)
    whole = {f"net.{k}": v for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    whole.update({f"net.encoder.{k}": v for k, v in state.items()})
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": whole, "epoch": 3}, ckpt)
    _assert_loaded(build_network(SMALL_SMP, weights=ckpt), state, net)


def test_timm_checkpoint_loads_into_tu_encoder(tmp_path):
    """A plain timm checkpoint (with its classifier head) maps into smp's features-only timm encoder."""
    state = _randomised(timm.create_model(TINY[3:]).state_dict())
    assert any(k.startswith("classifier.") for k in state)  # the head is in the file and is dropped
    path = tmp_path / "mobilenet.pth"
    torch.save(state, path)
    net = build_network(TINY, weights=path)
    reference = _timm_features(TINY[3:], path, net)
    loaded = net.encoder.model.state_dict()
    assert set(loaded) == set(reference)
    for key, tensor in loaded.items():
        assert torch.equal(tensor, reference[key]), key
    fresh = build_network(TINY).encoder.state_dict()
    for key, param in net.encoder.named_parameters():
        assert not torch.equal(param, fresh[key]), key


@pytest.mark.slow
def test_timm_checkpoint_real_size_convnext(tmp_path):
    name = "convnext_tiny"
    path = tmp_path / f"{name}.safetensors"
    save_file(_randomised(timm.create_model(name).state_dict()), str(path))
    net = build_network(f"tu-{name}", weights=path)
    reference = _timm_features(name, path, net)
    for key, tensor in net.encoder.model.state_dict().items():
        assert torch.equal(tensor, reference[key]), key
    assert len(reference) == len(net.encoder.model.state_dict())


def test_mismatched_files_are_named(tmp_path):
    other = tmp_path / "mobilenet_075.pth"  # same architecture, other widths
    torch.save(timm.create_model("mobilenetv3_small_075").state_dict(), other)
    with pytest.raises(WeightsMismatchError, match=f"{other}.*does not fit encoder {TINY}.*other shapes"):
        build_network(TINY, weights=other)

    state = build_network(TINY).encoder.state_dict()
    dropped = "model.conv_stem.weight"
    partial = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k != dropped}, str(partial))
    with pytest.raises(WeightsMismatchError, match=f"{partial}.*not in the file.*{dropped}"):
        build_network(TINY, weights=partial)

    with pytest.raises(MissingWeightsError, match="encoder.weights=null"):
        build_network(TINY, weights=tmp_path / "nope.pth")


@pytest.fixture
def connections(monkeypatch) -> list:
    """Every network connection the code under test tries, each refused: failing fast means trying none (no
    probe, no download, no retries), whatever the machine's load makes of the wall time."""
    tried: list = []

    def refuse(sock: socket.socket, address: object) -> None:
        tried.append(address)
        raise OSError("this test refuses every network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tried


def test_imagenet_with_empty_cache_fails_fast(tmp_path, connections):
    with pytest.raises(MissingWeightsError) as info:
        build_network(TINY, weights="imagenet", weights_dir=tmp_path)
    assert connections == []
    message = str(info.value)
    assert f"python -m poc59.weights fetch encoder=tiny weights_dir={tmp_path.resolve()}" in message
    assert str(cached_weights_path(TINY, tmp_path)) in message and "encoder.weights=null" in message
    with pytest.raises(MissingWeightsError, match="fetch encoder=custom encoder.name=tu-resnet10t"):
        build_network("tu-resnet10t", weights="imagenet", weights_dir=tmp_path)


def test_imagenet_loads_from_cache(tmp_path):
    fresh = build_network(TINY)
    state = _randomised(fresh.encoder.state_dict())
    save_file(state, str(cached_weights_path(TINY, tmp_path)))
    _assert_loaded(build_network(TINY, weights="imagenet", weights_dir=tmp_path), state, fresh)


def test_fetch_offline_fails_fast(tmp_path, monkeypatch, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError) as info:
        fetch(TINY, tmp_path)
    assert connections == []
    assert "encoder.weights=/path/to/file" in str(info.value) and "fetch encoder=tiny" in str(info.value)
    assert not any(tmp_path.iterdir())


def test_fetch_saves_a_loadable_file(tmp_path, monkeypatch):
    """fetch's download step stubbed (no hub here): it saves the encoder state dict and it loads back."""
    import segmentation_models_pytorch as smp

    from poc59.model import pretrained

    real_get_encoder = smp.encoders.get_encoder
    downloaded = {}

    def fake_download(name, weights=None, **kwargs):
        encoder = real_get_encoder(name, weights=None, **kwargs)
        if weights is not None:  # stands in for the hub's weights
            encoder.load_state_dict(_randomised(encoder.state_dict(), seed=7))
            downloaded.update(encoder.state_dict())
        return encoder

    monkeypatch.setattr(pretrained, "check_hub", lambda timeout=10.0: None)
    monkeypatch.setattr(smp.encoders, "get_encoder", fake_download)
    path = fetch(TINY, tmp_path)
    assert path == cached_weights_path(TINY, tmp_path) and [p.name for p in tmp_path.iterdir()] == [path.name]
    monkeypatch.setattr(smp.encoders, "get_encoder", real_get_encoder)
    net = build_network(TINY, weights="imagenet", weights_dir=tmp_path)
    for key, tensor in net.encoder.state_dict().items():
        assert torch.equal(tensor, downloaded[key]), key


def test_cli_arguments(tmp_path):
    args = parse_args(["fetch", "encoder=maxvit_tiny", "encoder.kwargs.img_size=256", f"weights_dir={tmp_path}"])
    assert args == dict(
        command="fetch",
        name="tu-maxvit_tiny_tf_384",
        kwargs={"img_size": 256},
        weights_dir=str(tmp_path),
        force=False,
        timeout=900.0,
        raw_name=False,
    )
    args = parse_args(["path", "encoder=custom", "encoder.name=tu-resnet34"])
    assert args["name"] == "tu-resnet34" and args["raw_name"]
    for bad in (["fetch", "encoder=custom"], ["fetch", "encoder=nope"], ["pull", "encoder=tiny"], ["fetch", "tiny"]):
        with pytest.raises(UsageError):
            parse_args(bad)


def _run_cli(*args: str, cache: Path, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    src = str(Path(poc59.__file__).resolve().parents[1])
    env.update(
        POC59_CACHE=str(cache),
        PYTHONPATH=os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p),
        HF_ENDPOINT="http://127.0.0.1:9",  # a closed port: unreachable here and on machines with network
    )
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "poc59.weights", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_path_and_offline_fetch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POC59_CACHE", str(tmp_path))
    said = command("weights", ["path", "encoder=tiny"], capsys, monkeypatch)  # the fetch below: a real process
    assert said.returncode == 0, said.stderr
    assert said.stdout.strip() == str(tmp_path.resolve() / "weights" / f"{TINY}.imagenet.safetensors")

    # -X importtime lists every module the process imported (on stderr): the hub is probed, and the unreachable
    # hub answered, before any of the slow libraries is imported (timing belongs to bench/)
    done = _run_cli("fetch", "encoder=convnext_tiny", cache=tmp_path, python_flags=("-X", "importtime"))
    assert done.returncode == 2 and done.stdout == "", done.stderr
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "poc59.core.cli" in imported, done.stderr[-2000:]
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "timm", "segmentation_models_pytorch"))
    assert not heavy, f"imported before the hub was probed: {heavy[:10]}"
    assert "unreachable" in done.stderr and "encoder.weights=/path/to/file" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())
