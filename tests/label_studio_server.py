"""A real Label Studio for the tests: the `label-studio` package (its own venv: it pins old numpy, Pillow and
pyarrow), SQLite and a throw-away data folder, on 127.0.0.1 on a free port, stopped by its pid.

The server is found through $POC59_LABEL_STUDIO (the path of its `label-studio` executable), by default
`.venv-label-studio/bin/label-studio` at the top of the checkout (`python3 -m venv .venv-label-studio &&
.venv-label-studio/bin/pip install label-studio==1.23.2`). Where it is missing the fixtures skip, naming that
command; under CI (CI=1, .ci/run installs it) they fail instead.

A user and a personal access token are made as Label Studio 1.23's documentation gives: the user by
`label-studio start --username --password` (the first user, its own organisation), the token the way the
"Account & Settings > Personal Access Token" page makes it: signed in (`/user/login/`), a POST to
`/api/token/` that answers the token once. Personal access tokens are on by default for a new organisation;
legacy tokens are off.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / ".venv-label-studio" / "bin" / "label-studio"
INSTALL = "python3 -m venv .venv-label-studio && .venv-label-studio/bin/pip install label-studio==1.23.2"
EMAIL = "conservator@example.org"
PASSWORD = "poc59-correct-horse"
START_S = 600.0  # the first start migrates a new SQLite database: about 4 minutes on a loaded 2-core CPU


@dataclass
class LabelStudioServer:
    url: str  # http://127.0.0.1:<port>
    token: str  # a personal access token of EMAIL
    data_dir: Path  # LABEL_STUDIO_BASE_DATA_DIR: the SQLite database and the uploaded files
    executable: Path
    pid: int

    @property
    def python(self) -> Path:
        """The server venv's python (label-studio-sdk's converter is the tests' reference brush RLE)."""
        return self.executable.parent / "python"


def executable() -> Path | None:
    path = Path(os.environ.get("POC59_LABEL_STUDIO") or DEFAULT)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require() -> Path:
    """The server's executable; skips (fails under CI=1) where it is missing."""
    found = executable()
    if found is None:
        why = f"no Label Studio at {os.environ.get('POC59_LABEL_STUDIO') or DEFAULT} (install it: {INSTALL}, or set POC59_LABEL_STUDIO)"
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs it")
        pytest.skip(why)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as answer:
            return answer.status == 200
    except OSError:
        return False


def personal_access_token(url: str, email: str, password: str) -> str:
    """Sign in as the web page does and create a personal access token (the Account & Settings page's button)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{url}/user/login/", timeout=30).read().decode()
    csrf = next((c.value for c in jar if c.name == "csrftoken"), None)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    form = urllib.parse.urlencode(
        {"email": email, "password": password, "csrfmiddlewaretoken": match.group(1) if match else csrf}
    ).encode()
    headers = {"Referer": f"{url}/user/login/"}
    opener.open(urllib.request.Request(f"{url}/user/login/", form, headers), timeout=30).read()
    csrf = next((c.value for c in jar if c.name == "csrftoken"), csrf)
    request = urllib.request.Request(
        f"{url}/api/token/",
        b"{}",
        {"Content-Type": "application/json", "X-CSRFToken": csrf or "", "Referer": f"{url}/"},
        method="POST",
    )
    answer = json.loads(opener.open(request, timeout=30).read())
    return answer["token"]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server this helper started (its process group: label-studio runs no other children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(20)


@contextmanager
def label_studio_at(data_dir: Path) -> Iterator[LabelStudioServer]:
    """A Label Studio on a free port of 127.0.0.1 with its data in `data_dir`, stopped when the block ends."""
    exe = require()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    }
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(exe),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--username",
            EMAIL,
            "--password",
            PASSWORD,
        ],  # fmt: skip
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as one
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (data_dir / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Label Studio did not start on {url} (exit {proc.poll()}):\n{tail}")
            time.sleep(1)
        token = personal_access_token(url, EMAIL, PASSWORD)
        yield LabelStudioServer(url, token, data_dir, exe, proc.pid)
    finally:
        _stop(proc)
        log.close()
