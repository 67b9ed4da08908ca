"""A real IIIF Image API server for the tests: Debian's iipsrv (package iipimage-server, IIIF Image API 2,
level 1, JPEG) behind lighttpd (FastCGI), both on 127.0.0.1 on free ports, serving the files of one folder.

`iipsrv_at(root, **env)` starts one (env: iipsrv's settings, e.g. MAX_CVT=64 caps the size of one answer)
and stops both processes by their pids however the block ends; the `iipsrv` fixture is one for a test.
Where the packages are missing the fixture skips, naming the command that installs them; under CI (CI=1,
.ci/run installs them) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

IIPSRV = Path("/usr/lib/iipimage-server/iipsrv.fcgi")
INSTALL = "apt-get install -y iipimage-server lighttpd"


@dataclass
class Iipsrv:
    root: Path  # the folder it serves
    url: str  # http://127.0.0.1:<port>/fcgi-bin/iipsrv.fcgi

    def info(self, name: str) -> str:
        """The info.json URL of the file `name` in `root`."""
        return f"{self.url}?IIIF={name}/info.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def missing() -> str | None:
    """Why no server can start here, or None."""
    if not IIPSRV.exists() or not shutil.which("lighttpd"):
        return f"iipsrv or lighttpd is not installed ({INSTALL})"
    return None


def _answers(server: Iipsrv) -> bool:
    """True once iipsrv answers through lighttpd (a 503 is lighttpd alone: iipsrv not listening yet)."""
    try:
        with urllib.request.urlopen(f"{server.url}?IIIF=none.tif/info.json", timeout=2):
            return True
    except urllib.error.HTTPError as err:
        return err.code != 503  # iipsrv's own refusal of a file that does not exist
    except OSError:
        return False


@contextmanager
def iipsrv_at(root: Path, state: Path, **env: str) -> Iterator[Iipsrv]:
    """iipsrv serving `root` (its logs and lighttpd's config in `state`), stopped when the block ends."""
    fcgi, http = _free_port(), _free_port()
    conf = state / "lighttpd.conf"
    conf.write_text(
        f'server.document-root = "{root}"\n'
        'server.bind = "127.0.0.1"\n'
        f"server.port = {http}\n"
        f'server.errorlog = "{state / "lighttpd.log"}"\n'
        'server.modules = ("mod_fastcgi")\n'
        'fastcgi.server = ("/fcgi-bin/iipsrv.fcgi" => '
        f'(("host" => "127.0.0.1", "port" => {fcgi}, "check-local" => "disable")))\n'
    )
    settings = {"LOGFILE": str(state / "iipsrv.log"), "VERBOSITY": "1", "FILESYSTEM_PREFIX": f"{root}/"} | env
    started: list[subprocess.Popen] = []
    try:
        started.append(
            subprocess.Popen(
                [str(IIPSRV), "--bind", f"127.0.0.1:{fcgi}"],
                env=os.environ | settings,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        started.append(
            subprocess.Popen(["lighttpd", "-D", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
        server = Iipsrv(root, f"http://127.0.0.1:{http}/fcgi-bin/iipsrv.fcgi")
        deadline = time.monotonic() + 20
        while not _answers(server):  # up when lighttpd hands a request to iipsrv and iipsrv answers
            dead = [p.args[0] for p in started if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                log = (state / "lighttpd.log").read_text() if (state / "lighttpd.log").exists() else ""
                raise RuntimeError(f"iipsrv / lighttpd did not start ({dead or 'time-out'}): {log[-2000:]}")
            time.sleep(0.1)
        yield server
    finally:
        for proc in reversed(started):
            _stop(proc)


def require() -> None:
    """Skip the calling test where no server can start (fail under CI, which installs the packages)."""
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def iipsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Iipsrv]:
    """A running iipsrv serving a fresh folder (`.root`, where a test writes its pyramidal TIFFs)."""
    require()
    root, state = tmp_path_factory.mktemp("iipsrv_root"), tmp_path_factory.mktemp("iipsrv_state")
    with iipsrv_at(root, state, JPEG_QUALITY="100") as server:
        yield server
