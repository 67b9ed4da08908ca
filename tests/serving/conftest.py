"""The serve tests' fixtures: the session's trained run exported to ONNX, and servers started per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from serving.server import Server, start


@pytest.fixture(scope="session")
def onnx_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared trained run's best checkpoint exported to ONNX (`python -m poc59.export`, in-process)."""
    from poc59.export import main

    out = tmp_path_factory.mktemp("serve-export")
    assert main([f"run_dir={trained_run}", f"out={out}", "format=onnx", "check=false"]) == 0
    return out / "model.onnx"


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """start(model, *args) for this module; every server it started is stopped (by its pid) at the end."""
    started: list[Server] = []
    folder = tmp_path_factory.mktemp("serve")

    def factory(model: Path, *args: str, host: str = "127.0.0.1", port: int | None = None) -> Server:
        started.append(start(model, folder, *args, host=host, port=port))
        return started[-1]

    yield factory
    for server in started:
        server.stop()
