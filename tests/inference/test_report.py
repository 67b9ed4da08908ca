"""The condition report (`poc59.inference.report`) as `python -m poc59.predict ... report=true` writes it: a real
tiny checkpoint (the session's trained run, with per-class validation IoUs set in its model card), generated
scans, the HTML parsed back, and the PDF printed by headless Chromium and rendered by pdftoppm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from in_process import command as in_process
from poc59.inference.report import (
    NEVER_LEARNT,
    NEVER_LEARNT_BELOW,
    NOT_MEASURED,
    OFTEN_WRONG,
    RELIABLE,
    RELIABLE_FROM,
    PdfError,
    print_pdf,
    reduce_labels,
    trust_word,
)
from poc59.predict import main

# The card's per-class validation IoUs the test sets: one class on each side of each threshold, one at 0
IOUS = {
    "Clean": 0.91,
    "Material loss": RELIABLE_FROM,
    "Peel": RELIABLE_FROM - 0.01,
    "Dust": NEVER_LEARNT_BELOW,
    "Scratch": NEVER_LEARNT_BELOW - 0.001,
    "Hair": 0.0,
    "Dirt": None,
}
STEMS = ("panel", "vase")  # in the order predict reads them (sorted)
A4_POINTS = (595.0, 842.0)  # 210 x 297 mm


def test_trust_words_follow_the_documented_thresholds():
    assert trust_word(0.0) == NEVER_LEARNT and trust_word(NEVER_LEARNT_BELOW - 1e-9) == NEVER_LEARNT
    assert trust_word(NEVER_LEARNT_BELOW) == OFTEN_WRONG and trust_word(RELIABLE_FROM - 1e-9) == OFTEN_WRONG
    assert trust_word(RELIABLE_FROM) == RELIABLE and trust_word(1.0) == RELIABLE
    assert trust_word(None) == NOT_MEASURED and trust_word(float("nan")) == NOT_MEASURED


def test_a_reduced_label_map_keeps_thin_damage_visible():
    from poc59.core.classes import ARTEFACT

    labels = np.zeros((64, 96), np.uint8)
    labels[30, :] = 9  # a one-pixel crack across the object
    labels[:8] = ARTEFACT.ignore_index  # outside the object
    reduced = reduce_labels(labels, 8, ARTEFACT)
    assert reduced.shape == (8, 12)
    assert (reduced[3] == 9).all() and (reduced[0] == ARTEFACT.ignore_index).all()
    assert (np.delete(reduced, [0, 3], axis=0) == 0).all()


class _Page(HTMLParser):
    """What a test reads of a report: the class table's rows, the plain-words card, every image source and every
    reference to another file."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.card: dict[str, str] = {}
        self.images: list[str] = []
        self.references: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self._section: list[str] = []
        self._cell: list[str] | None = None
        self._dt = ""
        self.rawdata_header = text.split("<tbody>")[0]  # the page up to the class table's rows
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "srcset", "data", "action", "poster"):
            if key in attrs:
                self.references.append((tag, key, attrs[key]))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("table", "dl"):
            self._section.append(attrs.get("class", ""))
        elif tag == "tr" and self._section[-1:] == ["classes"]:
            self.rows.append([])
        elif tag in ("td", "dt", "dd"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "tr" and self.rows and not self.rows[-1]:
            self.rows.pop()  # the header row: th cells only
        elif tag in ("table", "dl"):
            self._section.pop()
        elif tag in ("td", "dt", "dd") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            if tag == "td" and self._section[-1:] == ["classes"]:
                self.rows[-1].append(text)
            elif self._section[-1:] == ["card"]:
                if tag == "dt":
                    self._dt = text
                else:
                    self.card[self._dt] = text
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _scan(path: Path, seed: int) -> None:
    """A generated object: a warm gradient with dark lines and blotches (320 x 240 px)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([150 + x / 4, 120 + y / 4, 90 + 0 * x], -1) + rng.normal(0, 6, (240, 320, 3))
    rgb[100:104, :] = 30
    rgb[150:190, 60:140] *= 0.5
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)


def _needs(*tools: str) -> None:
    """Skip where a printing tool is missing on a developer's machine; CI (.ci/run installs them) fails instead."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"{', '.join(missing)} not installed here (apt-get install chromium poppler-utils); CI runs this")
    assert not missing, f"CI needs {', '.join(missing)} (.ci/run installs chromium and poppler-utils)"


@pytest.fixture(scope="module")
def predicted(trained_run, tmp_path_factory):
    """The trained run copied, its best.ckpt's card given `IOUS`; two generated scans predicted with
    report=true report_pdf=true: (output folder, the model card, predict's exit status)."""
    _needs("chromium", "pdfinfo", "pdftoppm")
    tmp = tmp_path_factory.mktemp("report")
    run = Path(shutil.copytree(trained_run, tmp / "run"))
    ckpt = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    validation = checkpoint["hyper_parameters"]["card"]["metrics"]["validation"]
    validation["val/IoU"] = {**validation["val/IoU"], **IOUS}
    torch.save(checkpoint, ckpt)
    scans = tmp / "scans"
    scans.mkdir()
    for seed, stem in enumerate(STEMS):
        _scan(scans / f"{stem}.png", seed)
    out = tmp / "out"
    code = main([f"ckpt={ckpt}", f"input={scans}", f"output={out}", "report=true", "report_pdf=true", "threads=1"])
    return out, checkpoint["hyper_parameters"]["card"], code


@pytest.mark.slow  # the shared trained run, two predictions, two Chromium prints
def test_the_report_table_equals_the_statistics_and_the_trust_words_the_cards_ious(predicted):
    out, card, code = predicted
    ious = card["metrics"]["validation"]["val/IoU"]
    assert code == 0
    stats = json.loads((out / "statistics.json").read_text())
    assert [Path(r["image"]).stem for r in stats["images"]] == list(STEMS)
    for row in stats["images"]:
        stem = Path(row["image"]).stem
        assert row["report"] == f"{stem}.report.html" and row["report_pdf"] == f"{stem}.report.pdf"
        page = _Page((out / row["report"]).read_text(encoding="utf-8"))
        found = {n: v for n, v in row["classes"].items() if v["pixels"] > 0}
        assert [r[0] for r in page.rows] == list(found)  # the classes found, in the class table's order
        for name, area, share, iou, word in page.rows:
            assert int(area.replace(",", "")) == found[name]["pixels"]
            percent = found[name]["percent"]
            assert share == "<0.01" if percent < 0.005 else float(share) == pytest.approx(percent, abs=0.005)
            assert word == trust_word(ious[name])
            assert iou == ("–" if ious[name] is None else f"{ious[name]:.2f}")
        never = [n for n, v in ious.items() if v is not None and v < NEVER_LEARNT_BELOW]
        assert "Hair" in never and "Scratch" in never and "Dust" not in never
        assert page.card["Never learnt"] == ", ".join(never)
        assert page.card["Not measured"] == ", ".join(n for n, v in ious.items() if v is None)
        summary = json.loads((out.parent / "run" / "summary.json").read_text())
        data = summary["provenance"]["data"]
        assert page.card["Training data"].startswith(f"{data['images']} images from {data['root']}")
        commit = card["provenance"]["git_commit"]  # None where the run was trained outside a git checkout
        assert page.card["Code version (git commit)"] == (commit or "not recorded in the model card")
        assert "checkpoint written" in page.card["Date"]


@pytest.mark.slow  # shares the module's prediction (the trained run, two Chromium prints)
def test_the_report_is_self_contained_and_recorded_with_the_batch(predicted):
    out, _, _ = predicted
    stats = json.loads((out / "statistics.json").read_text())
    for stem in STEMS:
        page = _Page((out / f"{stem}.report.html").read_text(encoding="utf-8"))
        assert len(page.images) == 3 and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
        # nothing fetched from elsewhere: the only reference that is no data: URI is the PDF beside it
        others = [r for r in page.references if not r[2].startswith("data:")]
        assert others == [("a", "href", f"{stem}.report.pdf")]
        assert not page.tags & {"script", "link", "iframe", "object", "embed"}
        assert (out / f"{stem}.report.html").stat().st_size < 3 * 2**20
        assert {f"{stem}.report.html", f"{stem}.report.pdf"} <= set(stats["outputs"])
    index = _Page((out / "index.html").read_text(encoding="utf-8"))
    links = [v for tag, key, v in index.references if key == "href"]
    assert links == [n for s in STEMS for n in (f"{s}.report.html", f"{s}.report.pdf")]
    assert "index.html" in stats["outputs"]


@pytest.mark.slow  # shares the module's prediction; pdftoppm renders two pages
def test_the_printed_report_is_one_or_two_a4_pages_and_not_blank(predicted, tmp_path):
    out, _, _ = predicted
    for stem in STEMS:
        pdf = out / f"{stem}.report.pdf"
        info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        assert int(fields["Pages"]) in (1, 2), info
        width, _, height = fields["Page size"].split()[:3]
        assert (float(width), float(height)) == pytest.approx(A4_POINTS, abs=1.0), info
        subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / stem)], check=True)
        pages = sorted(tmp_path.glob(f"{stem}-*.png"))
        assert len(pages) == int(fields["Pages"])
        first = np.asarray(Image.open(pages[0]).convert("RGB"), np.float32)
        assert first.shape[:2] == (468, 331)  # A4 at 40 dpi
        ink = (first.min(axis=-1) < 200).mean()  # text, table, pictures
        assert 0.05 < ink < 0.9 and first.std() > 20, (ink, first.std())
        colour = np.abs(first - first.mean(axis=-1, keepdims=True)).max(axis=-1) > 40
        assert colour.mean() > 0.005  # the scan's warm colours and the class swatches printed, not gray only


@pytest.mark.slow  # a predict command started as a user starts it (it imports torch), after three refusals
def test_report_pdf_needs_report_and_chromium_and_a_report_name_no_batch_recorded_is_refused(
    trained_run, tmp_path, capsys, monkeypatch
):
    """The refusals answer in this process (tests/in_process.py: the same main and arguments); the batch that
    ends in exit 3 runs as a process of its own, with a stand-in chromium first on its PATH."""
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    scans = tmp_path / "scans"
    scans.mkdir()
    _scan(scans / "vase.png", 0)
    out = tmp_path / "out"
    argv = [f"ckpt={ckpt}", f"input={scans}", f"output={out}"]
    command = [sys.executable, "-m", "poc59.predict", *argv]
    alone = in_process("predict", [*argv, "report_pdf=true"], capsys, monkeypatch)
    assert alone.returncode == 2 and "add report=true" in alone.stderr and "Traceback" not in alone.stderr
    # no chromium on PATH: refused before anything is read or written
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    missing = in_process("predict", [*argv, "report=true", "report_pdf=true"], capsys, monkeypatch)
    monkeypatch.setenv("PATH", path)
    assert missing.returncode == 2 and "apt-get install chromium" in missing.stderr, missing.stderr
    assert "drop report_pdf=true" in missing.stderr and not out.exists()
    # a user's file where a report would go is never replaced
    out.mkdir()
    (out / "vase.report.html").write_text("the conservator's own notes")
    mine = in_process("predict", [*argv, "report=true"], capsys, monkeypatch)
    assert mine.returncode == 2 and "vase.report.html exists" in mine.stderr, mine.stderr
    assert (out / "vase.report.html").read_text() == "the conservator's own notes"
    assert sorted(p.name for p in out.iterdir()) == ["vase.report.html"]
    # a Chromium that fails: the batch is done, the HTML report written, the PDF named as not printed (exit 3)
    (out / "vase.report.html").unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text("#!/bin/sh\necho 'a crash of the stand-in' >&2\nexit 1\n")
    (bin_dir / "chromium").chmod(0o755)
    failing = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    partial = subprocess.run(
        [*command, "report=true", "report_pdf=true"], capture_output=True, text=True, timeout=300, env=failing
    )
    assert partial.returncode == 3, partial.stderr
    assert "a crash of the stand-in" in partial.stderr and "not printed to PDF: vase.report.html" in partial.stdout
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["images"][0]["report_pdf"] is None and "vase.report.pdf" not in stats["outputs"]
    assert (out / "vase.report.html").is_file() and not (out / "vase.report.pdf").exists()


def test_print_pdf_without_chromium_says_how_to_get_it(tmp_path, monkeypatch):
    page = tmp_path / "r.html"
    page.write_text("<p>x</p>")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PdfError, match="apt-get install chromium"):
        print_pdf(page, tmp_path / "r.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no half-written PDF


def test_a_print_that_hangs_is_stopped_with_its_children_and_leaves_no_pdf(tmp_path, monkeypatch):
    """A Chromium that never finishes (a stand-in on PATH whose helper process hangs too, as a renderer would)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = tmp_path / "helper.pid"
    fake = bin_dir / "chromium"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {helper}\nsleep 300\n")
    fake.chmod(0o755)
    page = tmp_path / "r.html"
    page.write_text("<p>x</p>")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(PdfError, match="did not print"):
        print_pdf(page, tmp_path / "r.pdf", timeout_s=2)
    pid = int(helper.read_text())
    for _ in range(50):  # the killed helper is reaped by init
        if not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the stand-in's helper {pid} still runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "helper.pid", "r.html"]


def test_a_report_against_an_object_mask_and_a_card_without_per_class_figures():
    """The share is of the object when predict had an object mask; a card with no per-class validation IoU
    (an ensemble's) reads "not measured" for every class, and what the card lacks reads "not recorded"."""
    from poc59.core.classes import ClassTable
    from poc59.inference.report import condition_report

    classes = ClassTable.from_names(["background", "crack", "stain"])
    labels = np.full((40, 60), classes.ignore_index, np.uint8)
    labels[10:30, 10:50] = 0
    labels[20, 10:50] = 1
    counts = np.bincount(labels.reshape(-1), minlength=256)
    inside = int((labels != classes.ignore_index).sum())
    stats = {
        "image": "/scans/bowl.tif",
        "width": 60,
        "height": 40,
        "reference": "object mask",
        "reference_pixels": inside,
        "classes": {
            n: {"pixels": int(counts[c]), "percent": 100 * counts[c] / inside} for c, n in enumerate(classes.names)
        },
    }
    card = {
        "classes": classes.to_dict(),
        "network": {"name": "tu-x", "decoder": "Unet"},
        "geometry": {"policy": "crop", "image_size": 256, "max_side": None},
        "metrics": {"ensemble": "each member's own val mIoU is in provenance.ensemble.members"},
        "provenance": {"ensemble": {"combination": "mean of softmax", "members": [{}, {}, {}]}},
    }
    page = _Page(
        condition_report(
            stem="bowl",
            scan_rgb=np.full((40, 60, 3), 200, np.uint8),
            labels=labels,
            confidence=np.ones((40, 60), np.float32),
            stats=stats,
            card=card,
            settings={"tile overlap": "0.25"},
            classes=classes,
        )
    )
    assert "share of the object (%)" in page.rawdata_header
    assert [(r[0], r[1], r[4]) for r in page.rows] == [
        ("background", "760", NOT_MEASURED),
        ("crack", "40", NOT_MEASURED),
    ]
    assert page.card["Model"].startswith("an ensemble of 3 models (mean of softmax): Unet on the encoder tu-x")
    assert page.card["Training data"] == page.card["Date"] == "not recorded in the model card"
    assert page.card["Validation mIoU"] == "not recorded in the model card"
    assert page.card["Not measured"] == "background, crack, stain"
    assert page.card["Never learnt"] == "not known: the model card carries no per-class validation IoU"
