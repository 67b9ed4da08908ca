"""`python -m poc59.serve` as a user runs it: a subprocess on 127.0.0.1, driven by headless Chromium (the Debian
`chromium`, through Playwright) and by Gradio's own client."""

from __future__ import annotations

import io
import json
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tifffile
from gradio_client import Client, handle_file
from PIL import Image

from poc59.predict import main as predict
from serving.server import Server, make_scan, png_header_only

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 180_000  # a prediction on a loaded 2-core CPU, with the browser and the server sharing it
RSS_GROWTH_MB = 300  # the bound: the server's peak RSS under load over its RSS after one request


@pytest.fixture(scope="module")
def server(server_factory, onnx_model) -> Server:
    return server_factory(onnx_model, "max_upload_mb=1", "max_pixels=2000000")


@pytest.fixture(scope="module")
def predicted(onnx_model, tmp_path_factory) -> tuple[Path, Path]:
    """(a generated scan, predict's output folder for it, pyramids included)."""
    folder = tmp_path_factory.mktemp("page")
    scan = make_scan(folder / "folio.png")
    assert predict([f"ckpt={onnx_model}", f"input={scan}", f"output={folder / 'out'}", "pyramid=true"]) == 0
    return scan, folder / "out"


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_the_page_in_chromium_predicts_toggles_a_class_and_downloads_predicts_maps(server, predicted, tmp_path):
    from playwright.sync_api import sync_playwright

    scan, out = predicted
    labels = np.asarray(Image.open(out / "folio_labels.png"))
    row = json.loads((out / "statistics.json").read_text())["images"][0]
    names = list(row["classes"])
    damage = sorted((v["pixels"], n) for n, v in row["classes"].items() if n != names[0] and v["pixels"] > 0)
    hidden = damage[-1][1]  # the largest damage class: its pixels must change when it is toggled
    where = labels == names.index(hidden)
    pixels = np.asarray(Image.open(scan).convert("RGB"))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(server.url, timeout=WAIT_MS)
            page.locator("#scan input[type=file]").set_input_files(str(scan))
            page.locator("#scan").get_by_text("folio.png").first.wait_for(timeout=WAIT_MS)
            page.click("#run")
            page.locator("#class-table").wait_for(timeout=WAIT_MS)
            assert "folio.png: 400 x 300 px" in page.locator("#status").inner_text()
            table = page.locator("#class-table tbody tr").all_inner_texts()
            assert any(hidden in r and f"{row['classes'][hidden]['pixels']:,}" in r for r in table), table

            def overlay(previous: str | None = None) -> tuple[str, np.ndarray]:
                img = page.locator("#overlay img")
                if previous is not None:  # the toggle's answer replaces the picture
                    page.wait_for_function(
                        "prev => document.querySelector('#overlay img')?.src !== prev", arg=previous, timeout=WAIT_MS
                    )
                src = img.get_attribute("src")
                return src, _png(page.request.get(src).body())

            src, shown = overlay()
            assert not np.array_equal(shown[where], pixels[where])  # drawn in its colour
            page.locator("#toggles label", has_text=hidden).first.click()
            src, without = overlay(src)
            assert np.array_equal(without[where], pixels[where])  # off: the scan itself
            assert np.array_equal(without[~where], shown[~where])  # the other classes untouched
            page.locator("#toggles label", has_text=hidden).first.click()
            src, again = overlay(src)
            assert np.array_equal(again, shown)

            files = {}
            for key in ("classes", "confidence", "statistics", "report"):
                with page.expect_download(timeout=WAIT_MS) as download:
                    page.click(f"#download-{key}")
                files[key] = tmp_path / download.value.suggested_filename
                download.value.save_as(files[key])
        finally:
            browser.close()

    assert np.array_equal(np.asarray(Image.open(files["classes"])), labels)
    assert np.array_equal(
        np.asarray(Image.open(files["confidence"])), tifffile.imread(out / "folio_confidence.tif", key=0)
    )
    assert json.loads(files["statistics"].read_text())["image"]["classes"] == row["classes"]
    report = files["report"].read_text()
    assert "http://" not in report and "file:" not in report  # self-contained
    areas = re.findall(r'<tr data-class="([^"]+)">.*?<td class="num">([\d,]+)</td>', report)
    assert {name: int(pixels.replace(",", "")) for name, pixels in areas} == {
        name: v["pixels"] for name, v in row["classes"].items() if v["pixels"] > 0
    }


def _request(client: Client, path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    result = client.predict(handle_file(str(path)), "", 0.25, 0, api_name="/predict")
    return result[0], time.perf_counter() - start


@pytest.mark.slow
def test_the_api_answers_30_requests_4_at_a_time_none_lost_rss_bounded(server, tmp_path):
    scans = [make_scan(tmp_path / f"scan{i:02d}.png", seed=i) for i in range(30)]
    client = Client(server.url, verbose=False)
    status, _ = _request(client, scans[0])  # warm: the first request's buffers are the baseline
    assert "**scan00.png**: 400 x 300 px" in status
    process = psutil.Process(server.pid)
    baseline = process.memory_info().rss
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(process.memory_info().rss)
            time.sleep(0.1)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda path: _request(client, path), scans))
    finally:
        done.set()
        watcher.join()
    assert [s.split(":")[0] for s, _ in answers] == [f"**scan{i:02d}.png**" for i in range(30)]
    latencies = sorted(t for _, t in answers)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    growth = (max(peak) - baseline) / 2**20
    print(
        f"30 requests, 4 at a time: p50 {p50:.2f} s, p95 {p95:.2f} s; RSS {baseline / 2**20:.0f} MB + {growth:.0f} MB"
    )
    assert growth < RSS_GROWTH_MB
    assert server.alive()


@pytest.mark.slow
def test_each_hostile_upload_is_answered_and_the_server_serves_on(server, tmp_path):
    client = Client(server.url, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n" * 10)
    corrupt = tmp_path / "cut.png"
    corrupt.write_bytes(make_scan(tmp_path / "whole.png").read_bytes()[:3000])
    hostile = {
        text: "notes.png: cannot be predicted",
        png_header_only(tmp_path / "bomb.png", 100_000, 100_000): "its max_pixels",
        corrupt: "cut.png: cannot be predicted",
    }
    good = make_scan(tmp_path / "good.png")
    for path, words in hostile.items():
        status, _ = _request(client, path)
        assert status.startswith("**Not predicted.**") and words in status, status
        assert server.alive() and "**good.png**: 400 x 300 px" in _request(client, good)[0]
    large = tmp_path / "large.png"
    large.write_bytes(np.random.default_rng(0).bytes(2 * 2**20))
    with pytest.raises(Exception, match="(?i)size"):  # Gradio refuses the upload itself (max_file_size)
        _request(client, large)
    assert server.alive() and "**good.png**: 400 x 300 px" in _request(client, good)[0]
