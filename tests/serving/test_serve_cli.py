"""`python -m poc59.serve` start-up: a bad model, setting or port exits 2 with one message before the port opens;
the advice it prints works; another host than 127.0.0.1 is said in the log."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from poc59.serve import main
from serving.server import free_port


def _serve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "poc59.serve", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def _refused(result: subprocess.CompletedProcess, words: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Running on" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and words in errors[0], result.stderr
    return errors[0]


def test_a_missing_or_foreign_model_exits_2_before_the_port_opens(tmp_path):
    port = free_port()
    missing = _serve(f"model={tmp_path / 'nothing.onnx'}", f"port={port}", cwd=tmp_path)
    _refused(missing, "nothing.onnx: no such file or folder. Name an exported model")
    (tmp_path / "notes.txt").write_text("hello")
    _refused(_serve(f"model={tmp_path / 'notes.txt'}", f"port={port}", cwd=tmp_path), "not a poc59 model file")
    with socket.socket() as probe:  # nothing listens there: the refusals never opened the port
        probe.bind(("127.0.0.1", port))


def test_bad_settings_exit_2_naming_the_key(tmp_path, caplog):
    assert main([f"model={tmp_path}", "max_upload_mb=0"]) == 2
    assert "max_upload_mb=0.0: must be positive" in caplog.text
    assert main([f"model={tmp_path}", "port=70000"]) == 2
    assert "port=70000: a TCP port is 1 to 65535" in caplog.text
    assert main([f"model={tmp_path}", "prot=7860"]) == 2
    assert "did you mean port=?" in caplog.text


@pytest.mark.slow
def test_a_port_in_use_names_a_free_one_that_works_and_another_host_is_said(onnx_model, tmp_path, server_factory):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        line = _refused(_serve(f"model={onnx_model}", f"port={port}", "host=0.0.0.0", cwd=tmp_path), "listens on")
    advice = re.search(r"e\.g\. port=(\d+) \(free now\)", line)
    assert advice, line
    server = server_factory(onnx_model, host="0.0.0.0", port=int(advice.group(1)))  # the advice, as pasted
    log = server.log.read_text()
    assert f"listening on 0.0.0.0:{advice.group(1)}: every machine that can reach this one" in log
    assert server.alive()
