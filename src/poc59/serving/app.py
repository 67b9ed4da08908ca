"""The page a conservator opens: a scan in, the damage it holds out (Gradio Blocks over one `Engine`).

The page: a scan dropped (any format predict reads) or a IIIF info.json URL pasted; the tile overlap and a
minimum region size (defaults: predict's overlap 0.25, and 0 = every region kept, so the maps are
predict's); then the scan with the damage overlay and one toggle per damage class found (the class
table's colours), the confidence map, the table of the classes found (area in pixels and in % of the
object, the model's validation IoU and its trust word), and four downloads: the class map, the confidence
map, the statistics and the condition report. A request the server does not predict (not an image, too
large, a decompression bomb, corrupt, over its time or memory budget) is answered in the page's status
line; the server goes on serving.

The API (Gradio's client, `gradio_client.Client(url).predict(...)`) has two endpoints: `/predict`
(scan file, IIIF URL, overlap, min_region) and `/overlay` (result key, shown classes).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from poc59.inference.scans import IMAGE_SUFFIXES
from poc59.serving.engine import Engine
from poc59.serving.limits import Limits, RequestRefused

log = logging.getLogger(__name__)

__all__ = ["CONFIDENCE_NOTE", "build_app", "launch"]

CONFIDENCE_NOTE = "white: the model is sure of the class it chose; dark: unsure (probability of the chosen class)"
DOWNLOADS = (
    ("classes", "Class map (PNG)"),
    ("confidence", "Confidence map (PNG)"),
    ("statistics", "Statistics (JSON)"),
)
DOWNLOADS += (("report", "Condition report (HTML)"),)


def _percent(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.2f}" if p >= 0.005 else "<0.01"


def _iou(iou: float | None) -> str:
    return "not measured" if iou is None else f"{iou:.2f}"


def class_table_html(engine: Engine, rows: list[dict[str, Any]]) -> str:
    """The classes found as an HTML table: colour, class, pixels, % of the object, validation IoU, trust."""
    if not rows:
        return "<p>No damage found.</p>"
    head = "".join(
        f"<th>{h}</th>" for h in ("", "class", "pixels", "% of the object", "validation IoU", "how far to trust it")
    )
    body = "".join(
        "<tr>"
        f'<td><span style="display:inline-block;width:1em;height:1em;background:{html.escape(r["colour"])};'
        'border:1px solid #000"></span></td>'
        f"<td>{html.escape(r['class'])}</td><td>{r['pixels']:,}</td><td>{_percent(r['percent'])}</td>"
        f"<td>{_iou(r['iou'])}</td><td>{html.escape(r['trust'])}</td>"
        "</tr>"
        for r in rows
    )
    return f'<table id="class-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def build_app(engine: Engine, limits: Limits) -> gr.Blocks:
    """The page over `engine`, its queue bounded by `limits` (`concurrency` at a time, `queue_size` waiting)."""
    model = engine.model
    title = f"poc59: damage in a scan ({Path(model.source).name})"

    def predict(upload: str | None, url: str | None, overlap: float, min_region: float) -> tuple:
        try:
            served = engine.predict(engine.source_of(upload, url), float(overlap), int(min_region or 0))
        except RequestRefused as refused:
            log.warning("request not predicted: %s", refused)
            return _refused(f"**Not predicted.** {refused}")
        except Exception:  # a bug: logged with its traceback, the page told, the server serving on
            log.exception("request failed")
            return _refused("**Not predicted: an error in the server** (logged there). The server goes on serving.")
        present = served.present(engine.classes)
        status = (
            f"**{html.escape(served.name)}**: {served.statistics['width']} x {served.statistics['height']} px, "
            f"predicted in {served.seconds:.1f} s; {len(present)} damage class(es) found."
        )
        return (
            status,
            engine.overlay(served.key, present),
            served.confidence,
            class_table_html(engine, engine.table(served)),
            gr.update(choices=present, value=present, visible=bool(present)),
            *(gr.update(value=str(served.files[k]), visible=True) for k, _ in DOWNLOADS),
            served.key,
        )

    def overlay(key: str | None, shown: list[str] | None) -> Any:
        if not key:
            return None
        try:
            return engine.overlay(key, list(shown or []))
        except RequestRefused as refused:
            gr.Warning(str(refused))
            return gr.update()

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(
            f"# Damage in a scan\nModel: `{Path(model.source).name}` ({model.classes.num_classes} classes). "
            f"Drop a scan ({', '.join(IMAGE_SUFFIXES)}; at most {limits.max_upload_mb:g} MB and "
            f"{limits.max_pixels / 1e6:g} megapixels) or paste a IIIF image's info.json address."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Scan", file_types=list(IMAGE_SUFFIXES), type="filepath", elem_id="scan")
                url = gr.Textbox(label="or a IIIF info.json URL", placeholder="https://.../info.json", elem_id="url")
                with gr.Accordion("Settings", open=False):
                    overlap = gr.Slider(0, 0.75, value=0.25, step=0.05, label="Tile overlap", elem_id="overlap")
                    min_region = gr.Number(
                        value=0,
                        minimum=0,
                        precision=0,
                        label="Minimum region size (pixels; smaller damage regions count as clean; 0: keep all)",
                        elem_id="min-region",
                    )
                run = gr.Button("Find damage", variant="primary", elem_id="run")
                status = gr.Markdown("Waiting for a scan.", elem_id="status")
                downloads = [gr.DownloadButton(label, visible=False, elem_id=f"download-{k}") for k, label in DOWNLOADS]
            with gr.Column(scale=2):
                shown = gr.CheckboxGroup([], label="Damage shown (one toggle per class)", elem_id="toggles")
                picture = gr.Image(label="Scan with damage", type="numpy", format="png", elem_id="overlay")
                table = gr.HTML(elem_id="classes")
                confidence = gr.Image(
                    label=f"Confidence ({CONFIDENCE_NOTE})", type="numpy", format="png", elem_id="confidence"
                )
        key = gr.State(None)
        run.click(
            predict,
            [upload, url, overlap, min_region],
            [status, picture, confidence, table, shown, *downloads, key],
            api_name="predict",
        )
        shown.input(overlay, [key, shown], picture, api_name="overlay")
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.queue_size)
    return app


def _refused(message: str) -> tuple:
    """The page's outputs for a request not predicted: the message, every result cleared."""
    hidden = [gr.update(value=None, visible=False) for _ in DOWNLOADS]
    return (message, None, None, "", gr.update(choices=[], value=[], visible=False), *hidden, None)


def toggle_css(engine: Engine) -> str:
    """Each class's toggle in the class's colour (its check box and a bar beside its name)."""
    rules = []
    for name, colour in zip(engine.classes.names, engine.classes.palette):
        selector = f'#toggles input[name="{name.replace(chr(34), "")}"]'
        rules.append(f"{selector} {{ accent-color: {colour}; outline: 3px solid {colour}; }}")
    return "\n".join(rules)


def launch(app: gr.Blocks, engine: Engine, host: str, port: int, limits: Limits) -> None:
    """Serve the page on host:port until interrupted (blocks)."""
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts fetched
    app.launch(
        server_name=host,
        server_port=port,
        max_file_size=limits.upload_bytes,
        share=False,
        ssr_mode=False,
        show_error=False,
        theme=theme,
        footer_links=["api"],
        css=toggle_css(engine),
    )
