"""Predict's IIIF manifest as a conservator sees it: Mirador 4 in headless Chromium, and a screenshot for the docs.

    python scripts/screenshots/mirador.py ckpt=<model> scan=<image> out=docs/images/mirador.png

predicts the scan (served by Debian's iipsrv on 127.0.0.1, as an institution's IIIF server would serve it:
`apt-get install iipimage-server lighttpd`), opens the manifest predict wrote in Mirador with the annotation
panel open and every region outlined, and saves the screenshot (whole or not at all). Exit 2, naming it, when
iipsrv, chromium or npm is missing; scripts/screenshots/all.py calls it for docs/images/mirador.png. The test
tests/inference/test_mirador.py drives the same pieces and checks what Mirador shows.

The pieces:
- `mirador_bundle()`: Mirador's own prebuilt browser bundle (dist/mirador.min.js, React included) from the
  npm package mirador@4.0.0, fetched once with `npm pack` (the package's tarball alone, no dependencies to
  install, no build) and kept in ~/.cache/poc59/ (or $POC59_CACHE);
- `static_site(folder)`: the folder over HTTP on 127.0.0.1 (a free port), for the page, the bundle and
  predict's outputs (their IDs are their URLs there: predict's `iiif_base_url=`);
- `viewer_page(...)`: the HTML page that opens one manifest in Mirador;
- `Chromium`: Debian's chromium driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`:
  no port, no websocket library, nothing but the standard library).
"""

from __future__ import annotations

import base64
import fcntl
import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MIRADOR_VERSION = "4.0.0"
BUNDLE = "mirador.min.js"
CHROMIUM = ("chromium", "chromium-browser")


class ViewerError(RuntimeError):
    """Mirador or Chromium could not be brought up, or the page never reached the state waited for."""


def cache_folder() -> Path:
    """Where fetched viewer bundles are kept: $POC59_CACHE, else ~/.cache/poc59."""
    return Path(os.environ.get("POC59_CACHE") or Path.home() / ".cache" / "poc59")


def mirador_bundle(cache: Path | None = None) -> Path:
    """The path of Mirador's browser bundle (mirador.min.js of the npm package mirador@MIRADOR_VERSION),
    fetched with `npm pack` into the cache the first time. ViewerError when npm is missing or fails."""
    folder = (cache or cache_folder()) / f"mirador-{MIRADOR_VERSION}"
    bundle = folder / BUNDLE
    if bundle.is_file():
        return bundle
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerError(f"npm is not installed: it fetches mirador@{MIRADOR_VERSION} (apt-get install npm)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        done = subprocess.run(
            [npm, "pack", f"mirador@{MIRADOR_VERSION}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp,
        )
        tarballs = list(Path(tmp).glob("mirador-*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise ViewerError(f"npm pack mirador@{MIRADOR_VERSION} failed: {done.stderr.strip()[-2000:]}")
        with tarfile.open(tarballs[0]) as tar:
            for name, target in ((f"package/dist/{BUNDLE}", BUNDLE), ("package/LICENSE", "LICENSE")):
                member = tar.extractfile(name)
                if member is None:
                    raise ViewerError(f"mirador@{MIRADOR_VERSION}'s tarball holds no {name}")
                staged = Path(tmp) / target
                staged.write_bytes(member.read())
                os.replace(staged, folder / target)  # the bundle appears whole or not at all
    return bundle


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass


@contextmanager
def static_site(folder: Path) -> Iterator[str]:
    """`folder` served over HTTP on 127.0.0.1 (a free port) while the block runs; yields its URL, ending in /."""
    handler = lambda *args, **kw: _QuietFiles(*args, directory=str(folder), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def viewer_page(folder: Path, manifest_url: str, highlight: bool = True, name: str = "mirador.html") -> str:
    """Write into `folder` (served by `static_site`) a page opening `manifest_url` in Mirador, one window, its
    annotation panel open (`highlight`: every annotation outlined on the canvas), and Mirador's bundle beside
    it. Returns the page's file name."""
    shutil.copyfile(mirador_bundle(), folder / BUNDLE)
    config = {
        "id": "viewer",
        "windows": [{"manifestId": manifest_url, "highlightAllAnnotations": highlight}],
        "window": {
            "sideBarOpen": True,
            "defaultSideBarPanel": "annotations",
            "allowClose": False,
            "allowMaximize": False,
        },
        "workspaceControlPanel": {"enabled": False},
        "thumbnailNavigation": {"defaultPosition": "off"},
    }
    (folder / name).write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Mirador</title>\n"
        "<style>html, body, #viewer { margin: 0; width: 100%; height: 100%; }</style></head>\n"
        f"<body><div id='viewer'></div><script src='{BUNDLE}'></script>\n"
        f"<script>window.miradorInstance = Mirador.viewer({json.dumps(config)});</script></body></html>\n"
    )
    return name


def chromium_binary() -> str | None:
    """Debian's chromium, or None where it is not installed."""
    return next((found for name in CHROMIUM if (found := shutil.which(name))), None)


def _high_fd(fd: int) -> int:
    """A copy of `fd` numbered 10 or above (closing `fd`): the child's 3 and 4 are dup2'd from these."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Chromium:
    """Headless Chromium (one page) driven through the DevTools protocol over `--remote-debugging-pipe`:
    requests go to the browser's fd 3, answers and events come from its fd 4, each a JSON text ended by NUL."""

    def __init__(self, width: int = 1400, height: int = 900, binary: str | None = None) -> None:
        binary = binary or chromium_binary()
        if binary is None:
            raise ViewerError("chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="poc59-chromium-")
        to_browser_r, self._to_browser = (_high_fd(fd) for fd in os.pipe())
        self._from_browser, from_browser_w = (_high_fd(fd) for fd in os.pipe())

        def pipes() -> None:  # in the child, before exec: the protocol's fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=pipes,
            start_new_session=True,  # its zygotes, renderers and utilities in its group: close() ends them all
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id, self._pending = 0, b""
        try:
            page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.send(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
        except BaseException:
            self.close()
            raise

    def send(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """One protocol command (on the page once attached); its result, or ViewerError with its error."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if getattr(self, "_session", None):
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise ViewerError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._pending:
            left = deadline - time.monotonic()
            # a wedged page never writes: wait for the pipe no longer than the deadline, never in a bare read
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise ViewerError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise ViewerError("chromium closed its DevTools pipe (it exited)")
            self._pending += chunk
        text, self._pending = self._pending.split(b"\0", 1)
        return json.loads(text)

    def open(self, url: str) -> None:
        """Navigate the page to `url`."""
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise ViewerError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value. ViewerError naming `what` on time-out."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression, timeout=max(deadline - time.monotonic(), 0.1))  # a wedged page too
            if value:
                return value
            if time.monotonic() > deadline:
                raise ViewerError(f"the page never showed {what or expression} within {timeout:g} s")
            time.sleep(0.25)

    def screenshot(self) -> bytes:
        """The page as it is now, PNG."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        """Close the browser and every process it started (its own process group, nothing else) and the pipes."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # the group's leader's pid: children a wedged browser left
        except ProcessLookupError:
            pass
        self._proc.wait(10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PANEL_TEXT = "document.querySelector('#viewer') ? document.querySelector('#viewer').innerText : ''"
"""The text Mirador shows (its windows and panels), as a JavaScript expression."""

DRAWN = (
    "(() => { const c = [...document.querySelectorAll('.openseadragon-canvas canvas')];"
    " return c.length > 0 && c.every(e => e.width > 0); })()"
)
"""True once OpenSeadragon has a drawing canvas, as a JavaScript expression."""


def annotations_listed(names: list[str]) -> str:
    """A JavaScript expression, truthy once the annotation panel lists an entry naming each of `names`."""
    return (
        "(() => { const t = " + PANEL_TEXT + "; return " + json.dumps(names) + ".every(n => t.includes(n)) && t; })()"
    )


def show(
    chromium: Chromium, page_url: str, names: list[str], settle_s: float = 3.0, timeout: float = 90
) -> tuple[bytes, str]:
    """Open `page_url` (a `viewer_page`), wait until the canvas is drawn and the annotation panel names every
    class in `names`, let the tiles settle, and return (the screenshot, the panel's text)."""
    chromium.open(page_url)
    chromium.wait_for(DRAWN, timeout, "Mirador's canvas")
    text = chromium.wait_for(annotations_listed(names), timeout, f"annotations naming {names}")
    time.sleep(settle_s)  # OpenSeadragon fades tiles in; the layer and the scan's tiles are drawn by then
    return chromium.screenshot(), text


def main(argv: list[str]) -> int:
    """ckpt=<model> scan=<image> out=<png>: predict the scan served by iipsrv, screenshot Mirador showing it."""
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    if not {"ckpt", "scan", "out"} <= args.keys():
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    checkout = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(checkout / "tests")]
    import numpy as np
    from PIL import Image

    from iipsrv_server import iipsrv_at, missing
    from poc59.core.atomic import write_bytes
    from poc59.predict import main as predict

    if missing():
        print(missing(), file=sys.stderr)
        return 2
    try:  # what the screenshot needs and this machine may lack: exit 2, naming it
        mirador_bundle()
        chromium = Chromium()
    except ViewerError as err:
        print(err, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="poc59-mirador-") as tmp, chromium:
        tmp = Path(tmp)
        root, state, site = tmp / "iipsrv", tmp / "state", tmp / "site"
        for folder in (root, state, site):
            folder.mkdir()
        pixels = np.asarray(Image.open(args["scan"]).convert("RGB"))
        _pyramid(root / "scan.tif", pixels)
        with iipsrv_at(root, state, CORS="*") as server, static_site(site) as url:
            maps = site / "maps"
            code = predict(
                [
                    f"ckpt={args['ckpt']}",
                    f"input={server.info('scan.tif')}",
                    f"output={maps}",
                    f"iiif_base_url={url}maps/",
                ]
            )
            if code != 0:
                return code
            row = json.loads((maps / "statistics.json").read_text())["images"][0]
            names = sorted(row["iiif"]["classes"])
            page = viewer_page(site, f"{url}maps/{row['iiif']['manifest']}")
            shot, _ = show(chromium, url + page, names)
        write_bytes(args["out"], shot)
    print(args["out"])
    return 0


def _pyramid(path: Path, pixels: Any) -> None:
    """A tiled pyramidal TIFF of RGB uint8 pixels (every level down to 256 px), the layout iipsrv serves."""
    import numpy as np
    import tifffile
    from PIL import Image

    img = Image.fromarray(pixels)
    with tifffile.TiffWriter(path, bigtiff=pixels.size > 2**31) as tif:
        while True:
            tif.write(np.asarray(img), tile=(256, 256), photometric="rgb", compression="deflate")
            if max(img.size) <= 256:
                break
            img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BOX)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
