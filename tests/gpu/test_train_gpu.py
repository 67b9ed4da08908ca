"""The training command on one CUDA GPU: each encoder preset at 384 px in AMP, the whole set on the device, 1-GPU
DDP over NCCL, and no host sync in a steady-state training step (issue 12, items 8 and 11)."""

from __future__ import annotations

import json
import math
import subprocess
import warnings

import pytest
import torch

from poc59.core.device import auto_precision
from poc59.model.module import SegmentationModule
from poc59.training.run import train

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest.py says why)


@pytest.mark.parametrize("encoder", ["convnext_tiny", "segformer_b3", "maxvit_tiny"])
def test_one_amp_training_step_of_each_encoder_at_384(encoder, gpu_cfg, set_384, tmp_path):
    cfg = gpu_cfg(
        tmp_path / "run",
        f"encoder={encoder}",
        "encoder.weights=null",
        f"data.root={set_384}",
        "data.image_size=384",
        "data.batch_size=2",
        "data.val_fraction=0.25",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    )
    assert cfg.trainer.precision == auto_precision() in ("bf16-mixed", "16-mixed")  # AMP, from the config's auto
    summary = train(cfg)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["image_size"] == 384 and on_disk["epochs_run"] == 1
    assert (
        on_disk["provenance"]["precision"] == cfg.trainer.precision and on_disk["provenance"]["encoder_weights"] is None
    )
    assert on_disk["peak_memory"]["kind"].startswith("CUDA") and on_disk["peak_memory"]["bytes"] > 0
    assert summary["val/mIoU"] is not None and not math.isnan(summary["val/mIoU"])


def test_the_whole_set_on_the_device_trains(gpu_cfg, set_128, tmp_path):
    cfg = gpu_cfg(
        tmp_path / "run",
        "encoder=tiny",
        f"data.root={set_128}",
        "data.image_size=128",
        "data.on_device=true",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
    )
    summary = train(cfg)
    assert (tmp_path / "run" / "summary.json").exists() and summary["epochs_run"] == 2
    assert summary["train_images_per_s"] > 0 and summary["val/mIoU"] is not None


def test_one_gpu_ddp_over_nccl_writes_its_summary(gpu_argv, set_128, tmp_path):
    """NCCL refuses collectives on CPU tensors: whatever runs after `fit` (the baseline, the summary) must not."""
    run = tmp_path / "run"
    proc = subprocess.run(
        gpu_argv(
            run,
            "encoder=tiny",
            f"data.root={set_128}",
            "data.image_size=128",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=2",
            "++trainer.strategy=ddp",
        ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=nccl" in proc.stdout + proc.stderr, (
        "Lightning did not report NCCL: " + proc.stderr[-2000:]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["provenance"]["devices"] == 1 and summary["baseline_val/mIoU"] is not None


def _syncs(records: list[warnings.WarningMessage]) -> list[str]:
    """Where each synchronizing CUDA call came from (set_sync_debug_mode('warn') raises one warning per call)."""
    return [f"{w.filename}:{w.lineno}" for w in records if "synchroniz" in str(w.message)]


def test_a_steady_state_training_step_makes_no_host_sync(gpu_cfg, set_128, tmp_path, monkeypatch):
    """Counted with torch.cuda.set_sync_debug_mode('warn') on the real training path: inside the module's
    training_step (forward, loss, metric update, logging) none; over the whole step (+ backward, clipping,
    optimizer, scheduler, the callbacks' batch-end hooks) none beyond the GradScaler's inf check under 16-mixed.
    Steps 3-6 of an epoch: no logging step (log_every_n_steps=10) and after the throughput callback's first-step sync."""
    warm = 2
    records: list[warnings.WarningMessage] = []  # the list catch_warnings records into, once training starts
    whole: list[list[str]] = []
    module_step: list[list[str]] = []
    mark: dict[str, int] = {}
    start, end, step = (
        SegmentationModule.on_train_batch_start,
        SegmentationModule.on_train_batch_end,
        SegmentationModule.training_step,
    )

    def on_start(self, batch, batch_idx):
        out = start(self, batch, batch_idx)
        if batch_idx >= warm:
            torch.cuda.synchronize()
            mark["start"] = len(records)
            torch.cuda.set_sync_debug_mode("warn")
        return out

    def training_step(self, batch, batch_idx):
        first = len(records)
        loss = step(self, batch, batch_idx)
        if batch_idx >= warm:
            module_step.append(_syncs(records[first:]))
        return loss

    def on_end(self, outputs, batch, batch_idx):
        if batch_idx >= warm:
            torch.cuda.set_sync_debug_mode("default")
            whole.append(_syncs(records[mark["start"] :]))
        return end(self, outputs, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "on_train_batch_start", on_start)
    monkeypatch.setattr(SegmentationModule, "training_step", training_step)
    monkeypatch.setattr(SegmentationModule, "on_train_batch_end", on_end)
    cfg = gpu_cfg(
        tmp_path / "run",
        "encoder=tiny",
        f"data.root={set_128}",
        "data.image_size=128",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=10",
    )
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")  # every synchronizing call, not the first from each line
            train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(whole) == len(module_step) == 4, (whole, module_step)
    assert module_step == [[]] * 4, f"host syncs inside SegmentationModule.training_step, per step: {module_step}"
    allowed = 1 if cfg.trainer.precision == "16-mixed" else 0  # GradScaler.step reads found_inf on the host
    assert all(len(s) <= allowed for s in whole), f"host syncs per training step (at most {allowed}): {whole}"
