"""bench/gpu.py: the one-line skip without CUDA, and its measurement loop and out-of-memory back-off run on a
CPU device (the GPU figures themselves need a GPU; nothing here stands in for them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from poc59.classes import ARTEFACT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu  # noqa: E402
from bench.composed import segmentation_module, train_config  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps gain nothing from a second thread, and on a busy 2-core machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_without_cuda_it_says_why_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--output", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") == 1, proc.stdout
    assert proc.stdout.startswith("bench/gpu.py: no CUDA device") and "nothing measured" in proc.stdout
    assert not out.exists()  # no figures written without a GPU


def test_the_grid_on_a_cpu_measures_each_mode_and_reports_a_failed_setting_as_a_row():
    grid = [gpu.Setting("32-true", True, False), gpu.Setting("fp8-imaginary", True, False)]
    logged: list[str] = []
    rows = gpu.run_grid(CPU, ["tiny"], grid, batch=2, image_size=32, steps=1, warmup=1, log=logged.append)
    assert [(r["mode"], r["precision"]) for r in rows] == [
        ("train", "32-true"), ("infer", "32-true"), ("train", "fp8-imaginary"), ("infer", "fp8-imaginary"),
    ]
    for r in rows[:2]:
        assert r["encoder"] == "tiny" and r["encoder_name"] == "tu-mobilenetv3_small_050" and r["images_per_s"] > 0
        assert r["batch"] == r["batch_requested"] == 2 and r["out_of_memory_at"] == []
    for r in rows[2:]:
        assert r["error"].startswith("ValueError: precision must be one of") and "images_per_s" not in r
    assert len(logged) == 4
    text = gpu.table(rows)
    assert text.count("| tiny |") == 4 and "error: ValueError" in text


def test_unknown_encoder_preset_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--encoders", "convnext_tiny,resnet_huge"])
    assert "resnet_huge" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cfg():
    return train_config("encoder=tiny")


def _module(cfg) -> nn.Module:
    torch.manual_seed(0)
    return segmentation_module(cfg, ARTEFACT, torch.ones(ARTEFACT.num_classes))


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])  # 16-mixed: the GradScaler path
def test_training_steps_on_a_cpu_step_the_optimizer(cfg, precision):
    module = _module(cfg)
    before = _params(module)
    setting = gpu.Setting(precision, channels_last=True, compile=False)
    row = gpu.measure(module, CPU, "train", 2, 32, setting, steps=2, warmup=1)
    assert row["images_per_s"] > 0 and row["seconds"] > 0
    assert {k: row[k] for k in ("mode", "batch", "image_size", "precision", "channels_last", "compile", "steps", "warmup", "device")} == {
        "mode": "train", "batch": 2, "image_size": 32, "precision": precision, "channels_last": True, "compile": False,
        "steps": 2, "warmup": 1, "device": "cpu",
    }
    assert row["peak_memory"]["bytes"] > 0 and "resident" in row["peak_memory"]["kind"]  # a CPU says what it measured
    after = _params(module)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) == len(before), f"parameters the optimizer never changed: {sorted(set(before) - set(moved))[:5]}"
    assert module.training


def test_inference_on_a_cpu_changes_no_weight(cfg):
    module = _module(cfg)
    before = _params(module)
    row = gpu.measure(module, CPU, "infer", 2, 32, gpu.Setting("32-true", False, False), steps=2, warmup=1)
    assert row["mode"] == "infer" and row["images_per_s"] > 0 and not module.training
    assert all(torch.equal(before[k], v) for k, v in _params(module).items())


class _MemoryLimit(nn.Module):
    """Stands in for a GPU's memory: raises torch's out-of-memory error for batches above `limit`."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit = net, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (stand-in: batch {x.shape[0]} > {self.limit})")
        return self.net(x)


def test_out_of_memory_backs_off_to_the_largest_batch_that_fits(cfg):
    tried: list[int] = []
    logged: list[str] = []

    def measure_at(batch: int) -> dict:
        tried.append(batch)
        module = _module(cfg)
        module.net = _MemoryLimit(module.net, limit=4)
        return gpu.measure(module, CPU, "train", batch, 32, gpu.Setting("32-true", True, False), steps=1, warmup=1)

    row = gpu.largest_fitting(measure_at, 8, log=logged.append)
    assert tried == [8, 6, 4]  # 3/4 of the last batch each time
    assert row["batch"] == 4 and row["batch_requested"] == 8 and row["out_of_memory_at"] == [8, 6]
    assert row["images_per_s"] > 0 and len(logged) == 2 and "batch 8" in logged[0]
    text = gpu.table([{"encoder": "tiny", **row}])
    assert "| tiny | train | 32-true | yes | no | 4 (OOM at 8) |" in text

    def never_fits(batch: int) -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

    with pytest.raises(torch.OutOfMemoryError):
        gpu.largest_fitting(never_fits, 2, log=logged.append)

    def broken(batch: int) -> dict:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):  # other errors are not retried with smaller batches
        gpu.largest_fitting(broken, 8, log=logged.append)


def test_table_puts_the_seed_figure_beside_convnext_training_only():
    base = {"precision": "bf16-mixed", "channels_last": True, "compile": False, "batch": 96, "images_per_s": 250.0,
            "peak_memory": {"bytes": 12_340_000_000, "kind": "CUDA max allocated (this process)"}}
    text = gpu.table([
        {"encoder": "convnext_tiny", "mode": "train", **base},
        {"encoder": "convnext_tiny", "mode": "infer", **base},
        {"encoder": "segformer_b3", "mode": "train", **base, "error": "RuntimeError: compile | failed"},
    ])
    lines = text.splitlines()
    assert "seed (context)" in lines[0] and "peak GPU memory" in lines[0]
    assert lines[2].endswith("| 96 | 250.0 | 12.34 GB | 83.8 |") and lines[3].endswith("| 12.34 GB |  |")
    assert "error: RuntimeError: compile / failed" in lines[4]
    assert "83.8 images/s" in gpu.legend(384, 96, 20, 5) and "max_memory_allocated" in gpu.legend(384, 96, 20, 5)
    assert [s.compile for s in gpu.settings("bf16-mixed", full=False)] == [False, True]
    grid = gpu.settings("bf16-mixed", full=True)
    assert len(grid) == len(set(grid)) == 8 and grid[:2] == gpu.settings("bf16-mixed", full=False)
