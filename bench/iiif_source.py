"""predict's IIIF input: the seconds to get a scan's pixels from an Image API 3 service on 127.0.0.1 against
opening the same scan on local disk.

The scan: 6,000 x 4,000 (24 MP; --quick 1,200 x 900), smooth gradients with noise, stored as a PNG. A
static Image API server (http.server, its own thread) answers its info.json and, for
`full/{w},{h}/0/default.png`, the same PNG's bytes, so the comparison holds the pixels, the codec and the
disk fixed and measures what the IIIF source adds: HTTP, the info.json, the size check, the copy.

- `iiif_source`: `IiifImage.open().whole()` with a fresh client (no cache), against `open_scan(png).whole()`,
  interleaved A B A B, medians. Reported, no bar.
"""

from __future__ import annotations

import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common

NAME = "iiif_source"


FULL = common.ScanSizes(height=4_000, width=6_000, repeats=3)
QUICK = common.ScanSizes(height=900, width=1_200, repeats=1)


def write_scan(path: Path, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.ogrid[0:height, 0:width]
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = (x * 255 // width).astype(np.uint8)
    pixels[..., 1] = (y * 255 // height).astype(np.uint8)
    pixels[..., 2] = ((x + y) % 256).astype(np.uint8)
    pixels += rng.integers(0, 8, pixels.shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)


def serve(png: Path, width: int, height: int) -> tuple[ThreadingHTTPServer, str]:
    """A static Image API 3 service of `png` at /scan: its info.json and the full image at its size."""
    body = png.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}/scan"
            if self.path == "/scan/info.json":
                data, kind = (
                    json.dumps(
                        {
                            "@context": "http://iiif.io/api/image/3/context.json",
                            "id": base,
                            "type": "ImageService3",
                            "protocol": "http://iiif.io/api/image",
                            "profile": "level2",
                            "width": width,
                            "height": height,
                        }
                    ).encode(),
                    "application/json",
                )
            elif self.path == f"/scan/full/{width},{height}/0/default.png":
                data, kind = body, "image/png"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/scan/info.json"


def run(quick: bool) -> list[dict]:
    from poc59.inference.iiif_source import IiifClient, iiif_inputs
    from poc59.inference.scans import open_scan

    s = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="iiif-source-", dir=common.bench_dir()) as tmp:
        png = Path(tmp) / "scan.png"
        write_scan(png, s.height, s.width)
        httpd, info = serve(png, s.width, s.height)
        try:

            def remote() -> float:
                with common.Stopwatch() as sw:
                    (image,) = iiif_inputs(info, IiifClient())
                    pixels = image.open().whole()
                assert pixels.shape == (s.height, s.width, 3)
                return sw.wall

            def local() -> float:
                with common.Stopwatch() as sw:
                    scan = open_scan(png)
                    scan.whole()
                    scan.close()
                return sw.wall

            before = common.load()
            runs = common.interleaved({"iiif": remote, "disk": local}, s.repeats)
        finally:
            httpd.shutdown()
            httpd.server_close()
    ours, base = common.median(runs["iiif"]), common.median(runs["disk"])
    size = f"{s.width:,} x {s.height:,} ({s.width * s.height / 1e6:,.0f} MP)"
    return [
        common.row(
            NAME,
            f"predict input=<info.json>: a {size} PNG scan's pixels from an Image API 3 service on 127.0.0.1",
            ours,
            "s",
            base,
            "the same PNG opened on local disk (open_scan)",
            ours / base,
            "x",
            common.REPORTED,
            None,
            quick,
            {"runs_s": runs, "load_before": before, "load_after": common.load()},
        )
    ]
