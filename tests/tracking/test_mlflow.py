"""logger=mlflow against a real MLflow: a server on 127.0.0.1 with a SQLite backend (read back through its
REST API and MLflow's client), and the default SQLite store without a server. One poc59 run is one MLflow
run, however often it is started: a resume, a rerun and a DDP run each leave exactly one."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from helpers import SMALL, TINY_RUN, make_cfg, make_folder
from in_process import command
from poc59.comparison.run import compare
from poc59.core.config import SettingError
from poc59.training.run import train

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "screenshots"))
import mirador  # noqa: E402  (scripts/screenshots/mirador.py: the DevTools driver the Mirador test and the docs use)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with a SQLite backend and a local artifact store, as a team would run it on a login node."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # without MLflow's job runner (huey consumer processes for its GenAI jobs, which poc59 never submits):
        # the tracking API and the UI are the same server, less a dozen seconds of CPU starting the consumers
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _rest(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _runs(url: str, experiment: str = "poc59") -> list[dict]:
    eid = _rest(url, f"experiments/get-by-name?experiment_name={experiment}")["experiment"]["experiment_id"]
    return _rest(url, "runs/search", {"experiment_ids": [eid], "max_results": 100}).get("runs", [])


def _train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "poc59.train", *TINY_RUN, f"run_dir={run_dir}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=run_dir.parent)


@pytest.fixture(scope="module")
def server_run(server, tmp_path_factory) -> Path:
    """A 2-epoch run tracked on the server by the real command: the server's one run of experiment `poc59`.
    The first test resumes and evaluates it; the UI test only shows it (as it is before or after that)."""
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    first = _train(run_dir, "trainer.max_epochs=2", *_tracked(server))
    assert first.returncode == 0, first.stderr[-3000:]
    return run_dir


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_a_tracked_run_on_a_server_has_its_config_per_class_metrics_and_records(
    server, server_run, tmp_path, capsys, monkeypatch
):
    run_dir = server_run
    tracked = _tracked(server)
    (run,) = _runs(server)
    record = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert record == {
        "tracking_uri": server,
        "experiment_id": run["info"]["experiment_id"],
        "run_id": run["info"]["run_id"],
    }
    rid = record["run_id"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    config = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    assert params["data.image_size"] == "64" == str(config["data"]["image_size"])
    assert params["encoder.name"] == config["encoder"]["name"] and params["trainer.max_epochs"] == "2"
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    split = json.loads((run_dir / "split.json").read_text())
    assert tags["poc59.split_fingerprint"] == split["fingerprint"] and tags["poc59.run_dir"] == str(run_dir)
    assert tags["poc59.encoder"] == config["encoder"]["name"] and tags["mlflow.runName"] == "run"

    summary = json.loads((run_dir / "summary.json").read_text())
    history = _rest(server, f"metrics/get-history?run_id={rid}&metric_key=val/mIoU")["metrics"]
    assert [m["value"] for m in history] == pytest.approx([h["mIoU"] for h in summary["history"]])
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    best = summary["history"][summary["best_epoch"]]
    for name, iou in best["IoU"].items():  # every class by name, as the CSV has them
        assert metrics[f"best/val/IoU/{name}"] == pytest.approx(iou) if iou is not None else True
    assert metrics["best/val/mIoU"] == pytest.approx(summary["val/mIoU"])
    assert "val/IoU/Burn marks" in metrics  # a class name with a space, as MLflow accepts it
    client = MlflowClient(server)
    kept = {a.path for a in client.list_artifacts(rid, "run")}
    assert kept >= {"run/summary.json", "run/class_weights.json", "run/split.json", "run/model_card.json"}
    back = Path(client.download_artifacts(rid, "run/model_card.json", str(tmp_path / "back")))
    assert json.loads(back.read_text()) == json.loads((run_dir / "model_card.json").read_text())

    again = _train(run_dir, "trainer.max_epochs=3", *tracked)  # resumes from last.ckpt: the same MLflow run
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = _runs(server)
    assert run["info"]["run_id"] == rid and run["info"]["status"] == "FINISHED"
    history = _rest(server, f"metrics/get-history?run_id={rid}&metric_key=val/mIoU")["metrics"]
    assert len(history) == 3 and sorted(m["step"] for m in history) == sorted(set(m["step"] for m in history))
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["poc59.changed_on_resume"] == "trainer.max_epochs"  # MLflow keeps a param's first value

    # evaluate adds its figures to the run through tracking.json: what is checked is the server's run, so the
    # command answers in this process (its own process is tested in tests/test_command_output.py)
    evaluated = command("evaluate", [f"run_dir={run_dir}", "bootstrap.resamples=50"], capsys, monkeypatch)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics_json = json.loads((run_dir / "evaluation" / "val" / "metrics.json").read_text())
    (run,) = _runs(server)
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["eval/val/miou"] == pytest.approx(metrics_json["miou"])
    assert metrics["eval/val/miou_ci_low"] == pytest.approx(metrics_json["miou_ci"][0])
    added = {a.path for a in client.list_artifacts(rid, "evaluation/val")}
    assert "evaluation/val/metrics.json" in added and any(p.endswith(".png") for p in added)


@pytest.mark.slow  # the module's tracked run and a browser
def test_the_mlflow_ui_shows_the_run(server, server_run):
    """The README's screenshot, taken with headless Chromium (Debian's package; .ci/run installs it)."""
    chromium = mirador.chromium_binary()
    if chromium is None and not os.environ.get("CI"):
        pytest.skip("no chromium here (apt-get install chromium); CI installs it and runs this test")
    assert chromium, "CI needs chromium for the MLflow UI screenshot (.ci/run installs it)"
    record = json.loads((server_run / "tracking.json").read_text())["mlflow"]
    page = f"{server}/#/experiments/{record['experiment_id']}/runs/{record['run_id']}"
    with _browser(1400, 1100, limit_s=BROWSER_LIMIT_S) as browser:
        shown = _page_text(browser, page, record["run_id"])
        shot = browser.screenshot()
        # MLflow answers a run it does not have with a page of its own ("Page Not Found Run ID <id> does not
        # exist"), which names the id too: the check below must tell that page from the run's
        missing = "0" * 32
        not_found = _page_text(browser, page.replace(record["run_id"], missing), missing)
    from PIL import Image

    with Image.open(io.BytesIO(shot)) as img:
        assert img.size == (1400, 1100)
        colours = img.convert("L").resize((140, 110)).getcolors(maxcolors=140 * 110)
    assert colours is not None and len(colours) > 20  # a rendered page, not a blank one
    assert _shows_run(shown, record["run_id"]), shown[:3000]
    assert missing in not_found and not _shows_run(not_found, missing), not_found[:3000]


def test_a_page_that_never_answers_ends_the_browser_within_its_limit():
    """The bound the UI test relies on: a page whose script never returns (so the DevTools pipe never answers
    and a read on it would block for ever) ends in the browser's limit, every Chromium process gone."""
    if mirador.chromium_binary() is None:
        pytest.skip("no chromium here (apt-get install chromium)")
    started = time.monotonic()
    with pytest.raises(BrowserTimeout, match="2 s"):
        with _browser(800, 600, limit_s=2) as browser:
            processes = browser.processes()
            browser.open("data:text/html,<p>stuck</p><script>for (;;) {}</script>")
            browser.wait_for("false", timeout=60)  # polls until the page's script takes the renderer for good
    assert time.monotonic() - started < 30  # the limit, Chromium's start and its end; not wait_for's 60 s
    assert processes and not [p for p in processes if _alive(p)]


BROWSER_LIMIT_S = 120
"""The most one browser may take (start, both pages, the screenshot): a wedged Chromium is killed then."""


class BrowserTimeout(AssertionError):
    """Chromium outlived its limit and was killed, every process it started with it."""


class _Watched(mirador.Chromium):
    """mirador's DevTools driver whose every process (the browser and the zygotes, renderers and utilities it
    starts) is killed when `limit_s` is up: a read on the DevTools pipe then ends (the pipe closes) instead of
    waiting on a browser that never answers."""

    def __init__(self, width: int, height: int, limit_s: float) -> None:
        super().__init__(width, height)
        self._root = psutil.Process(self._proc.pid)
        self.killed = threading.Event()
        self._timer = threading.Timer(limit_s, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def processes(self) -> list[psutil.Process]:
        """The browser's processes now: it and all its descendants."""
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _kill(self) -> None:
        self.killed.set()
        for process in reversed(self.processes()):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        self._timer.cancel()
        super().close()  # ends Chromium's whole process group


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def _browser(width: int, height: int, limit_s: float) -> Iterator[_Watched]:
    """Headless Chromium over the DevTools pipe (scripts/screenshots/mirador.py, as the Mirador test drives it),
    killed with all its processes after `limit_s`: BrowserTimeout then, instead of a test that never ends."""
    browser = _Watched(width, height, limit_s)
    try:
        yield browser
    except mirador.ViewerError as error:
        if browser.killed.is_set():
            raise BrowserTimeout(f"chromium did not finish within its {limit_s:g} s and was killed") from error
        raise
    finally:
        browser.close()


def _page_text(browser: mirador.Chromium, page: str, run_id: str) -> str:
    """The words MLflow's UI shows at `page` once its scripts have shown either the run (its id and a metric)
    or MLflow's own "not found" page naming the id: polled, not a fixed wait."""
    browser.open(page)
    settled = (
        f"(() => {{ const t = document.body ? document.body.innerText : ''; return t.includes('{run_id}')"
        " && (t.includes('val/mIoU') || /not found|does not exist/i.test(t)); })()"
    )
    browser.wait_for(settled, timeout=90, what=f"run {run_id} or MLflow's page saying it does not exist")
    return " ".join(browser.evaluate("document.body.innerText").split())


def _shows_run(text: str, run_id: str) -> bool:
    """The run's own page: its id and a metric poc59 logged (val/mIoU), no "not found" page."""
    lowered = text.lower()
    return run_id in text and "val/mIoU" in text and "not found" not in lowered and "does not exist" not in lowered


def _tracked(server: str) -> tuple[str, ...]:
    return ("logger=mlflow", f"logger.mlflow.tracking_uri={server}")


def _client(outputs: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_the_default_store_is_sqlite_in_the_outputs_folder_and_a_refused_start_opens_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = tmp_path / "outputs"
    tracked = (*SMALL, "logger=mlflow", "trainer.max_epochs=1", f"paths.output_dir={outputs}")
    with pytest.raises(SettingError, match="optimizer.lr"):
        train(make_cfg(tmp_path, *tracked, "optimizer.lr=0"))
    assert not (tmp_path / "run" / "tracking.json").exists() and not (outputs / "mlflow.db").exists()

    relative = make_cfg(tmp_path, *tracked[:-1], "paths.output_dir=outputs")  # as the default config writes it
    train(relative)
    record = json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow"]
    assert record["tracking_uri"] == f"sqlite:///{outputs / 'mlflow.db'}"  # absolute: evaluate finds it from anywhere
    train(make_cfg(tmp_path, *tracked))  # a rerun of the finished run: nothing trained, no second MLflow run
    (run,) = _client(outputs).search_runs([record["experiment_id"]])
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["data.image_size"] == "64" and "best/val/mIoU" in run.data.metrics
    assert (outputs / "mlartifacts").is_dir()  # artifacts beside the store, not in the current folder's mlruns

    compare(runs=[tmp_path / "run"], out=tmp_path / "cmp", evaluate=False)  # compare adds its report to the run
    client = _client(outputs)
    added = {a.path for a in client.list_artifacts(record["run_id"], "comparison/cmp")}
    assert {"comparison/cmp/comparison.md", "comparison/cmp/per_class_iou.png"} <= added
    assert client.get_run(record["run_id"]).data.metrics["compare/cmp/best"] == 1.0
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow  # whole training runs, seconds to a minute each
def test_a_ddp_run_is_one_mlflow_run_with_every_epoch(tmp_path):
    """Two gloo processes: only rank 0 opens and logs the run."""
    data = make_folder(tmp_path / "data", n=8, copies=1, size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = REPO / "tests" / "training" / "ddp_train_check.py"
    ddp = [
        "encoder=tiny", "data=artefact", f"data.root={data}", "data.val_fraction=0.25", "data.image_size=32",
        "data.batch_size=2", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.devices=2",
        "+trainer.strategy=ddp", "trainer.enable_progress_bar=false", "logger=mlflow",
        f"logger.mlflow.tracking_uri={store}",
    ]  # fmt: skip
    run = subprocess.run([sys.executable, str(script), str(out), *ddp], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    record = json.loads((out / "run" / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(store)
    (found,) = client.search_runs([record["experiment_id"]])
    assert found.info.run_id == record["run_id"]
    summary = json.loads((out / "run" / "summary.json").read_text())
    history = client.get_metric_history(record["run_id"], "val/mIoU")
    assert [m.value for m in history] == pytest.approx([h["mIoU"] for h in summary["history"]])
    assert found.data.params["trainer.devices"] == "2"
