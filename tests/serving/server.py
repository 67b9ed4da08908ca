"""The serve tests' helpers: generated scans, and the real server (`python -m poc59.serve`) started as a
subprocess on a free port of 127.0.0.1 and stopped by its pid."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

START_S = 300  # the server's start on a loaded 2-core CPU: torch, ONNX Runtime and Gradio imported, the model loaded


def make_scan(path: Path, size: tuple[int, int] = (400, 300), seed: int = 0) -> Path:
    """A generated RGB scan: smooth colour fields with noise (so the tiny model finds several classes)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (h // 50 + 2, w // 50 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    pixels = np.clip(smooth + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `python -m poc59.serve` subprocess."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.kill(self.process.pid, signal.SIGTERM)  # SIGINT is ignored by a process started in the background
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def start(model: Path, folder: Path, *args: str, host: str = "127.0.0.1", port: int | None = None) -> Server:
    """`python -m poc59.serve model=<model> port=<free> threads=1 <args>`, returned once the page answers."""
    port = port or free_port()
    log = folder / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "poc59.serve", f"model={model}", f"port={port}", f"host={host}", "threads=1", *args]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    server = Server(process, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + START_S
    while "Running on local URL" not in log.read_text():
        if not server.alive() or time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"the server did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return server


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height and whose data is a few bytes: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + head + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path
