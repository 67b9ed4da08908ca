"""A screenshot of the serve page for the docs: `python scripts/screenshots/serve.py <model> <scan> [out.png]`.

Starts `python -m poc59.serve model=<model>` on a free port of 127.0.0.1, opens the page in headless
Chromium (the Debian `chromium`, through Playwright), uploads the scan, waits for the damage, and saves the
whole page as a PNG (default docs/images/serve.png); the server is stopped by its pid afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
WAIT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(model: Path, scan: Path, out: Path) -> Path:
    """Serve `model`, predict `scan` in the page, save the page to `out`."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        with log.open("w") as sink:
            server = subprocess.Popen(
                [sys.executable, "-m", "poc59.serve", f"model={model}", f"port={port}"],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + WAIT_S
            while "Running on local URL" not in log.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/", timeout=WAIT_S * 1000)
                page.locator("#scan input[type=file]").set_input_files(str(scan))
                page.locator("#scan").get_by_text(scan.name).first.wait_for(timeout=WAIT_S * 1000)
                page.click("#run")
                page.locator("#class-table").wait_for(timeout=WAIT_S * 1000)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            os.kill(server.pid, signal.SIGTERM)  # SIGINT is ignored in a process started in the background
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:  # never leave a server behind
                server.kill()
                server.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model.onnx, best.ckpt or a run folder")
    parser.add_argument("scan", type=Path, help="the scan to show")
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/images/serve.png"))
    args = parser.parse_args()
    print(screenshot(args.model, args.scan.resolve(), args.out))


if __name__ == "__main__":
    main()
