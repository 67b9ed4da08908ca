"""W&B's offline run file is complete when poc59 hands control back: `run.finish()` alone returns before
wandb-core has written the transaction log (.wandb), so a reader (or `wandb sync`) right after could find
only its 7-byte header. Seen in the suite under load; here `add` is called several times in a row, each
file read at once."""

from __future__ import annotations

import json

import pytest

from poc59.tracking.wandb_tracker import add
from wandb_offline import offline_runs, read_run, records


@pytest.mark.slow  # eight W&B runs, a service started for each
def test_each_run_file_is_written_to_its_exit_record_when_add_returns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    kept = tmp_path / "metrics.json"
    kept.write_text(json.dumps({"miou": 0.5}))
    entry = {"id": "flush0001", "project": "poc59-test", "dir": str(tmp_path / "run"), "mode": "offline"}
    (tmp_path / "run").mkdir()
    for attempt in range(8):
        before = set(offline_runs(tmp_path / "run"))
        add(entry, {"eval/val/miou": 0.25 + attempt}, [kept], "evaluation/val")
        (new,) = [f for f in offline_runs(tmp_path / "run") if f not in before]
        kinds = [r.WhichOneof("record_type") for r in records(new)]
        assert kinds[-1:] == ["exit"], f"attempt {attempt}: {new} holds only {kinds}"
        run = read_run(new)
        assert run["id"] == entry["id"] and run["summary"]["eval/val/miou"] == pytest.approx(0.25 + attempt)
        assert "evaluation/val/metrics.json" in run["files"]
