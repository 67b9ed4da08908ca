"""IIIF inputs for predict (poc59.inference.iiif_source) against a real HTTP server: a tiny Image API 2 / 3
server written here (http.server on 127.0.0.1, regions and sizes cut with Pillow) for the protocol and its
faults, and predict end to end from its info.json and manifests."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import CRACKFOREST
from iipsrv_server import iipsrv, iipsrv_at, require  # noqa: F401  (iipsrv: the fixture)
from poc59.inference.iiif_source import IiifClient, IiifError, IiifImage, iiif_inputs
from poc59.inference.run import UsageError, find_inputs
from poc59.predict import main
from tests.inference.test_predict_cli import ckpt  # noqa: F401  (the module's trained tiny crop model)

W, H = 96, 80


def scan_pixels(seed: int = 0) -> np.ndarray:
    """A smooth RGB test scan with a few dark 'cracks' (so a model sees structure), uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 2 + 40, y * 2 + 60, (x + y) + 30], -1).astype(np.int16)
    base += rng.integers(-10, 10, base.shape, dtype=np.int16)
    base[20:22, 10:80] = 15
    base[30:70, 50:52] = 20
    return np.clip(base, 0, 255).astype(np.uint8)


class ImageServer:
    """An Image API server on 127.0.0.1: /iiif3/<name>/... and /iiif2/<name>/... serve `images[name]`,
    /docs/<name> serves `docs[name]` (manifests). `faults[path]` is a list of what to do for the next requests
    of that path ("404", "500", "garbage", "close", "slow"), the last one repeated; `requests` counts paths."""

    def __init__(self, images: dict[str, np.ndarray]) -> None:
        self.images = images
        self.docs: dict[str, dict] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: Counter[str] = Counter()
        self.lie: dict[str, tuple[int, int]] = {}  # name -> the size info.json claims
        self.profile: dict[str, dict] = {}  # name -> extra info.json fields (maxWidth, tiles, profile...)
        self.slow_s = 1.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.requests[self.path] += 1
                plan = server.faults.get(self.path)
                if plan:
                    action = plan.pop(0) if len(plan) > 1 else plan[0]
                    if action == "close":
                        self.close_connection = True
                        return
                    if action == "slow":
                        time.sleep(server.slow_s)
                    elif action in ("404", "500"):
                        self.send_error(int(action))
                        return
                    elif action == "garbage":
                        return self.answer(b"\x00garbage\xff" * 10, "application/octet-stream")
                try:
                    body, kind = server.route(self.path)
                except KeyError:
                    self.send_error(404)
                    return
                self.answer(body, kind)

            def answer(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def info(self, version: int, name: str) -> str:
        return f"{self.url}/iiif{version}/{name}/info.json"

    def route(self, path: str) -> tuple[bytes, str]:
        parts = path.strip("/").split("/")
        if parts[0] == "docs":
            return json.dumps(self.docs[parts[1]]).encode(), "application/json"
        version, name = int(parts[0].removeprefix("iiif")), parts[1]
        image = self.images[name]
        if parts[2] == "info.json":
            return json.dumps(self._info(version, name, image)).encode(), "application/json"
        region, size, _rotation, quality = parts[2:6]
        img = Image.fromarray(image)
        if region != "full":
            x, y, w, h = map(int, region.split(","))
            img = img.crop((x, y, x + w, y + h))
        if size not in ("max", "full"):
            w, h = size.split(",")
            width = int(w) if w else round(img.width * int(h) / img.height)
            height = int(h) if h else round(img.height * width / img.width)
            if name not in self.lie:  # a lying server sends the image it has, whatever size was asked
                img = img.resize((width, height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        fmt = quality.rsplit(".", 1)[1]
        img.save(out, "PNG" if fmt == "png" else "JPEG")
        return out.getvalue(), f"image/{'png' if fmt == 'png' else 'jpeg'}"

    def _info(self, version: int, name: str, image: np.ndarray) -> dict:
        width, height = self.lie.get(name, (image.shape[1], image.shape[0]))
        base = f"{self.url}/iiif{version}/{name}"
        if version == 3:
            doc = {
                "@context": "http://iiif.io/api/image/3/context.json",
                "id": base,
                "type": "ImageService3",
                "protocol": "http://iiif.io/api/image",
                "profile": "level2",
                "width": width,
                "height": height,
            }
        else:
            doc = {
                "@context": "http://iiif.io/api/image/2/context.json",
                "@id": base,
                "protocol": "http://iiif.io/api/image",
                "profile": ["http://iiif.io/api/image/2/level2.json"],
                "width": width,
                "height": height,
            }
        return doc | self.profile.get(name, {})


@pytest.fixture
def server():
    srv = ImageServer({"scan": scan_pixels(0), "other": scan_pixels(1)})
    try:
        yield srv
    finally:
        srv.close()


def fast_client() -> IiifClient:
    return IiifClient(timeout_s=0.5, retries=2, backoff_s=0.01)


def test_image_api_3_whole_image_at_native_size_as_png(server):
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    scan = image.open()
    assert (scan.width, scan.height) == (W, H) and np.array_equal(scan.whole(), scan_pixels(0))
    assert server.requests[f"/iiif3/scan/full/{W},{H}/0/default.png"] == 1
    ref = image.scan_ref()
    assert ref.service["id"] == f"{server.url}/iiif3/scan" and ref.service["type"] == "ImageService3"


def test_image_api_2_asks_full_width_comma(server):
    (image,) = iiif_inputs(server.info(2, "scan"), fast_client())
    assert np.array_equal(image.open().whole(), scan_pixels(0))
    assert server.requests[f"/iiif2/scan/full/{W},/0/default.png"] == 1
    assert image.scan_ref().service["type"] == "ImageService2"


def test_jpeg_when_the_service_offers_no_png(server):
    server.profile["scan"] = {"profile": "level1"}
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    assert image.open().whole().shape == (H, W, 3)
    assert server.requests[f"/iiif3/scan/full/{W},{H}/0/default.jpg"] == 1


@pytest.mark.parametrize("limits", [{"maxWidth": 40}, {"maxArea": 1600}])
def test_tiles_at_native_scale_when_the_service_limits_the_size(server, limits):
    server.profile["scan"] = limits | {"tiles": [{"width": 32, "height": 32, "scaleFactors": [1, 2]}]}
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    assert np.array_equal(image.open().whole(), scan_pixels(0))  # stitched exactly
    asked = [p for p in server.requests if "/default." in p]
    assert "/iiif3/scan/64,64,32,16/32,/0/default.png" in asked and len(asked) == 3 * 3
    assert not any("/full/" in p for p in asked)


def test_a_404_is_named_with_its_url_and_not_retried(server):
    with pytest.raises(IiifError, match=r"/iiif3/missing/info.json: HTTP 404") as err:
        iiif_inputs(server.info(3, "missing"), fast_client())[0].open()
    assert "check the URL" in str(err.value)
    assert server.requests["/iiif3/missing/info.json"] == 1


def test_a_500_then_success_is_retried(server):
    server.faults["/iiif3/scan/info.json"] = ["500", "ok"]
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    assert np.array_equal(image.open().whole(), scan_pixels(0))
    assert server.requests["/iiif3/scan/info.json"] == 2


def test_a_500_forever_is_named_after_the_retries(server):
    path = f"/iiif3/scan/full/{W},{H}/0/default.png"
    server.faults[path] = ["500"]
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    with pytest.raises(IiifError, match=r"default.png: HTTP 500 .*3 tries"):
        image.open()
    assert server.requests[path] == 3  # the first try and 2 retries, no more


def test_a_closed_connection_is_retried_then_named(server):
    server.faults["/iiif3/scan/info.json"] = ["close"]
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    with pytest.raises(IiifError, match=r"info.json: connection failed .*3 tries"):
        image.open()
    assert server.requests["/iiif3/scan/info.json"] == 3


def test_a_slow_server_times_out(server):
    server.faults["/iiif3/scan/info.json"] = ["slow"]
    client = IiifClient(timeout_s=0.2, retries=1, backoff_s=0.01)
    (image,) = iiif_inputs(server.info(3, "scan"), client)
    started = time.perf_counter()
    with pytest.raises(IiifError, match=r"info.json: no answer within 0.2 s, 2 tries"):
        image.open()
    assert time.perf_counter() - started < server.slow_s * 2


@pytest.mark.parametrize(
    ("path", "message"),
    [("/iiif3/scan/info.json", "not JSON"), (f"/iiif3/scan/full/{W},{H}/0/default.png", "not an image")],
)
def test_garbage_is_named(server, path, message):
    server.faults[path] = ["garbage"]
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    with pytest.raises(IiifError, match=message):
        image.open()
    assert server.requests[path] == 1  # garbage is an answer: asking again would get the same


def test_an_info_json_that_lies_about_the_size_is_named(server):
    server.lie["scan"] = (W + 10, H)
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    with pytest.raises(IiifError, match=rf"sent {W} x {H} pixels for {W + 10} x {H} asked; its info.json .*info.json"):
        image.open()


def test_an_image_over_the_pixel_limit_is_refused_before_its_pixels_are_fetched(server, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", W * H - 1)
    (image,) = iiif_inputs(server.info(3, "scan"), fast_client())
    with pytest.raises(IiifError, match="decompression-bomb limit .* pass allow_large_images=true"):
        image.open()
    assert not [p for p in server.requests if "/default." in p]
    assert np.array_equal(image.open(allow_large_images=True).whole(), scan_pixels(0))  # the advice works


def manifest3(server: ImageServer, names: list[str]) -> dict:
    canvases = []
    for i, name in enumerate(names):
        base = f"{server.url}/iiif3/{name}"
        body = {
            "id": f"{base}/full/max/0/default.jpg",
            "type": "Image",
            "service": [{"id": base, "type": "ImageService3", "profile": "level2"}],
        }
        anno = {"id": f"{server.url}/a{i}", "type": "Annotation", "motivation": "painting", "body": body}
        page = {"id": f"{server.url}/p{i}", "type": "AnnotationPage", "items": [anno]}
        canvases.append({"id": f"{server.url}/c{i}", "type": "Canvas", "width": W, "height": H, "items": [page]})
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "type": "Manifest", "items": canvases}


def manifest2(server: ImageServer, names: list[str]) -> dict:
    canvases = [
        {
            "@type": "sc:Canvas",
            "images": [{"resource": {"service": {"@id": f"{server.url}/iiif2/{n}", "profile": "level2"}}}],
        }
        for n in names
    ]
    return {"@type": "sc:Manifest", "sequences": [{"canvases": canvases}]}


@pytest.mark.parametrize("make", [manifest3, manifest2])
def test_a_manifest_lists_every_canvas_image(server, make, tmp_path):
    server.docs["m.json"] = make(server, ["scan", "other"])
    images = iiif_inputs(f"{server.url}/docs/m.json", fast_client())
    assert [i.stem for i in images] == ["scan", "other"]
    assert np.array_equal(images[1].open().whole(), scan_pixels(1))
    local = tmp_path / "m.json"  # the same manifest as a file
    local.write_text(json.dumps(server.docs["m.json"]))
    assert [i.url for i in iiif_inputs(str(local), fast_client())] == [i.url for i in images]


def test_a_manifest_with_no_images_is_named(server):
    server.docs["empty.json"] = manifest3(server, [])
    with pytest.raises(UsageError, match=r"/docs/empty.json: a manifest with no images"):
        find_inputs(f"{server.url}/docs/empty.json")


def test_a_file_of_urls_with_comments_and_unique_stems(server, tmp_path):
    listing = tmp_path / "scans.txt"
    listing.write_text(f"# two services of one image\n{server.info(3, 'scan')}\n\n{server.info(2, 'scan')}\n")
    images = find_inputs(str(listing), fast_client())
    assert [i.stem for i in images] == ["scan", "scan_2"]
    assert all(isinstance(i, IiifImage) for i in images)


def test_predict_from_info_json_equals_predict_from_the_file(server, trained_run, tmp_path):
    """The same labels, pixel for pixel; nothing fetched twice; statistics.json records the source URL, and
    the IIIF manifest written references the service the scan came from."""
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(scan_pixels(0)).save(scans / "scan.png")
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={scans}", f"output={tmp_path / 'disk'}", "threads=1"]) == 0
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{server.info(3, 'scan')}\n{server.info(3, 'scan')}\n")  # twice: predicted once
    out = tmp_path / "iiif"
    assert main([f"ckpt={best}", f"input={listing}", f"output={out}", "threads=1"]) == 0
    disk = np.asarray(Image.open(tmp_path / "disk" / "scan_labels.png"))
    assert np.array_equal(np.asarray(Image.open(out / "scan_labels.png")), disk)
    assert all(n == 1 for n in server.requests.values()) and len(server.requests) == 2
    (row,) = json.loads((out / "statistics.json").read_text())["images"]
    assert row["source"] == server.info(3, "scan") and row["image"] == server.info(3, "scan")
    manifest = json.loads((out / "scan.manifest.json").read_text())
    assert f"{server.url}/iiif3/scan" in json.dumps(manifest)


def test_predict_goes_on_past_a_failing_url_and_lists_it(server, trained_run, tmp_path):
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{server.info(3, 'missing')}\n{server.info(2, 'other')}\n")
    out = tmp_path / "out"
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={listing}", f"output={out}", "threads=1"]) == 2
    stats = json.loads((out / "statistics.json").read_text())
    assert [r["image"] for r in stats["images"]] == [server.info(2, "other")]
    (failed,) = stats["failed"]
    assert failed["image"] == server.info(3, "missing") and "HTTP 404" in failed["reason"]
    assert (out / "other_labels.png").exists() and not (out / "missing_labels.png").exists()


def test_a_file_of_urls_goes_on_past_manifests_it_cannot_read_and_lists_them(server, trained_run, tmp_path):
    server.docs["empty.json"] = manifest3(server, [])
    server.docs["m.json"] = manifest3(server, ["other"])
    server.faults["/docs/gone.json"] = ["500"]
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(f"{server.url}/docs/{n}" for n in ("empty.json", "gone.json", "m.json")))
    out = tmp_path / "out"
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={listing}", f"output={out}", "threads=1"]) == 2
    stats = json.loads((out / "statistics.json").read_text())
    assert [r["image"] for r in stats["images"]] == [server.info(3, "other")]
    reasons = {f["image"]: f["reason"] for f in stats["failed"]}
    assert "a manifest with no images" in reasons[f"{server.url}/docs/empty.json"]
    assert "HTTP 500" in reasons[f"{server.url}/docs/gone.json"]


def test_a_file_of_urls_none_readable_is_exit_2_naming_each_before_anything_is_written(
    server, trained_run, tmp_path, caplog
):
    server.docs["empty.json"] = manifest2(server, [])
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{server.url}/docs/empty.json\n{server.url}/docs/nothing.json\n")
    out = tmp_path / "out"
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={listing}", f"output={out}", "threads=1"]) == 2
    assert "none of its entries can be read" in caplog.text and "empty.json: a manifest with no images" in caplog.text
    assert "nothing.json: HTTP 404" in caplog.text and not out.exists()


def test_an_unreachable_manifest_alone_is_exit_2_naming_it_before_anything_is_written(
    server, trained_run, tmp_path, caplog
):
    server.faults["/docs/gone.json"] = ["500"]
    out = tmp_path / "out"
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={server.url}/docs/gone.json", f"output={out}", "threads=1"]) == 2
    assert f"{server.url}/docs/gone.json: HTTP 500" in caplog.text and "Traceback" not in caplog.text
    assert not out.exists()


def write_pyramid(path: Path, pixels: np.ndarray) -> None:
    """A tiled pyramidal TIFF (levels 1, 1/2, 1/4 as successive pages), the layout iipsrv serves."""
    img = Image.fromarray(pixels)
    with tifffile.TiffWriter(path) as tif:
        for factor in (1, 2, 4):
            level = img.resize((img.width // factor, img.height // factor), Image.Resampling.LANCZOS)
            tif.write(np.asarray(level), tile=(16, 16), photometric="rgb")


def test_predict_from_a_real_iipsrv_equals_predict_from_the_file_it_serves(iipsrv, trained_run, tmp_path):  # noqa: F811
    """iipsrv (Image API 2, JPEG only) serves a pyramidal TIFF of the scan: the pixels fetched are that scan at
    its size (JPEG-close), and predict from its info.json labels exactly as predict from the JPEG it serves."""
    write_pyramid(iipsrv.root / "scan.tif", scan_pixels(0))
    scans = tmp_path / "scans"
    scans.mkdir()
    served = IiifClient().get(f"{iipsrv.url}?IIIF=scan.tif/full/{W},/0/default.jpg")
    (scans / "scan.jpg").write_bytes(served)
    pixels = np.asarray(Image.open(scans / "scan.jpg").convert("RGB"))
    assert pixels.shape == (H, W, 3) and np.abs(pixels.astype(int) - scan_pixels(0)).mean() < 4
    best = trained_run / "checkpoints" / "best.ckpt"
    assert main([f"ckpt={best}", f"input={scans}", f"output={tmp_path / 'disk'}", "threads=1"]) == 0
    out = tmp_path / "iiif"
    assert main([f"ckpt={best}", f"input={iipsrv.info('scan.tif')}", f"output={out}", "threads=1"]) == 0
    disk = np.asarray(Image.open(tmp_path / "disk" / "scan_labels.png"))
    assert np.array_equal(np.asarray(Image.open(out / "scan_labels.png")), disk)
    (row,) = json.loads((out / "statistics.json").read_text())["images"]
    assert row["source"] == iipsrv.info("scan.tif") and (row["width"], row["height"]) == (W, H)
    service = json.loads((out / "scan.manifest.json").read_text())["items"][0]["items"][0]["items"][0]["body"]
    assert service["service"][0]["id"] == f"{iipsrv.url}?IIIF=scan.tif"


def test_tiles_from_a_real_iipsrv_that_caps_its_answers(tmp_path):
    """iipsrv with MAX_CVT=64 (its info.json says maxWidth 64) is asked for its 16 px tiles at native scale."""
    require()
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    write_pyramid(root / "scan.tif", scan_pixels(0))
    with iipsrv_at(root, state, MAX_CVT="64", JPEG_QUALITY="100") as server:
        client = IiifClient()
        (image,) = iiif_inputs(server.info("scan.tif"), client)
        pixels = image.open().whole()
    assert pixels.shape == (H, W, 3) and np.abs(pixels.astype(int) - scan_pixels(0)).mean() < 4
    asked = [u for u in client.requests if "/default." in u]
    assert len(asked) == (W // 16) * (H // 16) and f"{server.url}?IIIF=scan.tif/80,64,16,16/16,/0/default.jpg" in asked


@pytest.mark.slow  # trains test_predict_cli's crop model, then predicts twice: 28 s at a load of 8-10
def test_a_native_scale_model_predicts_a_tiled_service_as_the_file(ckpt, server, tmp_path, caplog):  # noqa: F811
    """A crop (sliding-window) model reads the size from info.json and the pixels from 256 px tiles: the
    labels equal predict's from the same pixels on disk; a memory budget the whole image exceeds is named."""
    photo = np.asarray(Image.open(CRACKFOREST / "images" / "001.jpg").convert("RGB"))
    server.images["photo"] = photo
    server.profile["photo"] = {"maxWidth": 256, "tiles": [{"width": 256, "scaleFactors": [1]}]}
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(photo).save(scans / "photo.png")
    assert main([f"ckpt={ckpt}", f"input={scans}", f"output={tmp_path / 'disk'}", "threads=1"]) == 0
    out = tmp_path / "iiif"
    assert (
        main([f"ckpt={ckpt}", f"input={server.info(3, 'photo')}", f"output={out}", "threads=1", "max_memory_mb=1"]) == 0
    )
    assert f"{server.info(3, 'photo')}: held whole" in caplog.text
    disk = np.asarray(Image.open(tmp_path / "disk" / "photo_labels.png"))
    assert np.array_equal(np.asarray(Image.open(out / "photo_labels.png")), disk)
    tiles = [p for p in server.requests if p.startswith("/iiif3/photo/") and "/default." in p]
    assert tiles and not any("/full/" in p for p in tiles) and all(n == 1 for n in server.requests.values())
