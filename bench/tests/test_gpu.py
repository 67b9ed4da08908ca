"""bench/gpu.py and bench/gpu_check.sh on a CPU: the one-line skip without CUDA, the measurement loop, the fit row
(the real training command, scored by its own summary.json), the budget and the out-of-memory back-off (the GPU
figures themselves need a GPU; nothing here stands in for them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from poc59.core.atomic import write_json
from poc59.core.classes import ARTEFACT

REPO = Path(__file__).resolve().parents[2]

from bench import gpu
from bench.composed import segmentation_module, train_config

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny steps gain nothing from a second thread, and on a busy 2-core machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # a fresh bench/gpu.py process: 19 s at a load of 8-10
def test_without_cuda_it_says_why_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("\n") == 1, proc.stdout
    assert proc.stdout.startswith("bench/gpu.py: no CUDA device") and "nothing measured" in proc.stdout
    assert not out.exists()  # no figures written without a GPU


@pytest.mark.slow  # every grid mode measured on a CPU: 20 s at a load of 8-10
def test_the_grid_on_a_cpu_measures_each_mode_and_reports_a_failed_setting_as_a_row():
    grid = [gpu.Setting("32-true", True, False), gpu.Setting("fp8-imaginary", True, False)]
    logged: list[str] = []
    rows = gpu.run_grid(CPU, ["tiny"], grid, batch=2, image_size=32, steps=1, warmup=1, log=logged.append)
    assert [(r["mode"], r["precision"]) for r in rows] == [
        ("train", "32-true"),
        ("infer", "32-true"),
        ("train", "fp8-imaginary"),
        ("infer", "fp8-imaginary"),
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
    with pytest.raises(SystemExit):
        gpu.main(["--fit-steps", "1"])
    assert "--fit-steps must be >= 2" in capsys.readouterr().err


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
    assert {
        k: row[k]
        for k in ("mode", "batch", "image_size", "precision", "channels_last", "compile", "steps", "warmup", "device")
    } == {
        "mode": "train",
        "batch": 2,
        "image_size": 32,
        "precision": precision,
        "channels_last": True,
        "compile": False,
        "steps": 2,
        "warmup": 1,
        "device": "cpu",
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


@pytest.mark.slow  # training steps at several batch sizes: 25 s at a load of 8-10
def test_out_of_memory_backs_off_to_the_largest_batch_that_fits(cfg):
    tried: list[int] = []
    logged: list[str] = []

    def measure_at(batch: int) -> dict:
        tried.append(batch)
        module = _module(cfg)
        module.segmenter.net = _MemoryLimit(module.segmenter.net, limit=4)
        return gpu.measure(module, CPU, "train", batch, 32, gpu.Setting("32-true", True, False), steps=1, warmup=1)

    row = gpu.largest_fitting(measure_at, 8, log=logged.append)
    assert tried == [8, 6, 4]  # 3/4 of the last batch each time
    assert row["batch"] == 4 and row["batch_requested"] == 8 and row["out_of_memory_at"] == [8, 6]
    assert row["images_per_s"] > 0 and len(logged) == 2 and "batch 8" in logged[0]
    text = gpu.table([{"encoder": "tiny", **row}])
    assert "| tiny | train | 32-true | yes | no | 4 (OOM at 8) |" in text

    def never_fits(batch: int) -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

    with pytest.raises(gpu.OutOfMemoryGaveUp) as gave_up:
        gpu.largest_fitting(never_fits, 2, log=logged.append)
    assert gave_up.value.failed == [2, 1] and "smaller --batch" in str(gave_up.value)

    def broken(batch: int) -> dict:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):  # other errors are not retried with smaller batches
        gpu.largest_fitting(broken, 8, log=logged.append)


def test_table_puts_the_seed_figure_beside_convnext_training_only():
    base = {
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": False,
        "batch": 96,
        "images_per_s": 250.0,
        "peak_memory": {"bytes": 12_340_000_000, "kind": "CUDA max allocated (this process)"},
    }
    text = gpu.table(
        [
            {"encoder": "convnext_tiny", "mode": "train", **base},
            {"encoder": "convnext_tiny", "mode": "infer", **base},
            {"encoder": "segformer_b3", "mode": "train", **base, "error": "RuntimeError: compile | failed"},
        ]
    )
    lines = text.splitlines()
    assert "seed (context)" in lines[0] and "peak GPU memory" in lines[0]
    assert lines[2].endswith("| 96 | 250.0 | 12.34 GB |  | 83.8 |") and lines[3].endswith("| 12.34 GB |  |  |")
    assert "error: RuntimeError: compile / failed" in lines[4]
    assert "83.8 images/s" in gpu.legend(384, 96, 20, 5) and "max_memory_allocated" in gpu.legend(384, 96, 20, 5)
    assert [s.compile for s in gpu.settings("bf16-mixed", full=False)] == [False, True]
    grid = gpu.settings("bf16-mixed", full=True)
    assert len(grid) == len(set(grid)) == 8 and grid[:2] == gpu.settings("bf16-mixed", full=False)


# -- the budget and a back-off that cannot run away (issue 12, item 10) ------------------------------------------


@pytest.mark.slow  # a grid run to its budget: 21 s at a load of 8-10
def test_a_row_the_budget_leaves_no_time_for_is_a_skipped_row_and_every_row_is_saved(tmp_path):
    out = tmp_path / "gpu.json"
    saved: list[int] = []

    def save(rows: list[dict]) -> None:
        write_json(out, {"rows": rows})  # as main does: after every row, atomically
        saved.append(len(json.loads(out.read_text())["rows"]))

    grid = [gpu.Setting("32-true", False, False), gpu.Setting("32-true", False, True)]
    started = time.monotonic()
    rows = gpu.run_grid(
        CPU,
        ["tiny"],
        grid,
        batch=2,
        image_size=32,
        steps=1,
        warmup=1,
        log=lambda _: None,
        fit_steps=2,
        work=tmp_path,
        budget=gpu.Budget(0.0),
        on_row=save,
    )
    assert time.monotonic() - started < 30  # nothing was built or trained
    assert [(r["mode"], r["compile"]) for r in rows] == [
        (m, c) for c in (False, True) for m in ("train", "infer", "fit")
    ]
    assert all(r["skipped"].startswith("budget: 0 s left of 0 s") and "images_per_s" not in r for r in rows)
    assert "a torch.compile row starts with 90 s or more" in rows[-1]["skipped"]
    assert saved == [1, 2, 3, 4, 5, 6]
    assert gpu.table(rows).count("skipped: budget") == 6
    assert not (tmp_path / "data").exists()  # the fit rows' data is generated only when a fit row runs


def test_timed_steps_are_cut_to_what_the_last_warmup_step_says_still_fits():
    def step() -> None:
        time.sleep(0.05)

    done, run, seconds = gpu._run_steps(step, CPU, warmup=2, steps=1000, deadline=time.monotonic() + 1.0)
    assert done == 2 and 1 <= run < 1000 and seconds < 2.0
    with pytest.raises(gpu.OverBudget, match="warm-up step took"):
        gpu._run_steps(step, CPU, warmup=3, steps=10, deadline=time.monotonic() + 0.01)
    assert gpu._run_steps(step, CPU, warmup=1, steps=3, deadline=None)[:2] == (1, 3)


def test_an_out_of_memory_error_wrapped_by_torch_compile_is_retried_smaller_with_caches_freed(cfg, monkeypatch):
    freed: list[int] = []
    monkeypatch.setattr(gpu, "free_memory", lambda: freed.append(1))
    tried: list[int] = []

    def compiled(batch: int) -> dict:
        tried.append(batch)
        if batch > 4:  # how Inductor reports an OOM while it compiles or autotunes
            try:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            except torch.OutOfMemoryError as oom:
                raise RuntimeError("backend='inductor' raised: OutOfMemoryError") from oom
        return {"batch": batch, "images_per_s": 1.0}

    row = gpu.largest_fitting(compiled, 8, log=lambda _: None)
    assert tried == [8, 6, 4] and row["batch"] == 4 and row["out_of_memory_at"] == [8, 6] and len(freed) == 2

    def never_fits(batch: int) -> dict:
        tried.append(batch)
        raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

    tried.clear()
    with pytest.raises(gpu.OutOfMemoryGaveUp) as gave_up:
        gpu.largest_fitting(never_fits, 96, log=lambda _: None)
    assert tried == [96, 72, 54, 40, 30, 22] and len(tried) == gpu.MAX_ATTEMPTS and gave_up.value.failed == tried

    tried.clear()
    with pytest.raises(gpu.OverBudget, match="out of memory at batch"):  # no retry starts after the budget
        gpu.largest_fitting(never_fits, 96, log=lambda _: None, budget=gpu.Budget(0.0))
    assert tried == [96]


@pytest.mark.slow  # a grid row through every batch size: 41 s at a load of 8-10
def test_a_failed_grid_row_from_out_of_memory_names_every_batch_tried(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(gpu, "measure", oom)
    rows = gpu.run_grid(CPU, ["tiny"], [gpu.Setting("32-true", False, False)], 4, 32, 1, 1, log=lambda _: None)
    assert [r["out_of_memory_at"] for r in rows] == [[4, 3, 2, 1]] * 2
    assert all(
        r["error"].startswith("OutOfMemoryGaveUp: out of memory at every batch tried [4, 3, 2, 1]") for r in rows
    )


# -- the fit row: the real training command beside the bare step (issue 12, item 9) ------------------------------


@pytest.mark.slow  # two real training runs (tiny and cpu_small): 80 s under the quick loop's load
def test_fit_rows_come_from_the_runs_own_summary_and_share_one_data_folder(tmp_path):
    grid = [gpu.Setting("32-true", False, False)]
    rows = gpu.run_grid(
        CPU,
        ["tiny", "cpu_small"],
        grid,
        batch=4,
        image_size=64,
        steps=1,
        warmup=1,
        log=lambda _: None,
        fit_steps=2,
        work=tmp_path,
    )
    assert [(r["encoder"], r["mode"]) for r in rows] == [
        (e, m) for e in ("tiny", "cpu_small") for m in ("train", "infer", "fit")
    ]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    fits = [r for r in rows if r["mode"] == "fit"]
    for fit, bare in zip(fits, [r for r in rows if r["mode"] == "train"]):
        summary = json.loads(Path(fit["summary"]).read_text())  # the run's own record, not a figure of the harness
        assert fit["images_per_s"] == summary["train_images_per_s"] > 0
        assert fit["images_per_s_convention"] == summary["train_images_per_s_convention"]
        assert (
            fit["peak_memory"] == summary["peak_memory"]
            and fit["precision_run"] == summary["provenance"]["precision"] == "32-true"
        )
        assert summary["encoder"] == bare["encoder_name"] and summary["epochs_run"] == 2 and summary["image_size"] == 64
        assert summary["provenance"]["batch_size_per_device"] == fit["batch"] == bare["batch"] == 4
        assert fit["steps"] == 2 and fit["timed_steps"] == 1 and fit["data"]["train_images"] >= 4 * 2
        assert fit["fit_over_bare"] == pytest.approx(fit["images_per_s"] / bare["images_per_s"])
        assert fit["passed"] is None  # the bar is judged on a GPU only
        assert not (Path(fit["summary"]).parent / "checkpoints").exists()  # removed: hundreds of MB on a GPU model
    assert fits[0]["data"]["root"] == fits[1]["data"]["root"] and len(list((tmp_path / "data").iterdir())) == 1
    assert fits[0]["data"]["preload_source"] == "decoded" and fits[1]["data"]["preload_source"] == "cache"
    text = gpu.table(rows)
    assert "x (not judged off a GPU) |" in text and gpu.bar_lines(rows) == []
    judged = [{**fits[0], "device": "cuda:0", "passed": True}]
    assert gpu.bar_lines(judged)[0].startswith("fit >= 0.9x bare: tiny 32-true") and gpu.bar_lines(judged)[0].endswith(
        "pass"
    )


@pytest.mark.slow  # a training stopped at its budget: 11 s at a load of 8-10
def test_a_fit_row_stops_at_the_budgets_end_and_is_reported_as_cut(tmp_path):
    data = gpu.fit_data(tmp_path / "data", gpu.fit_images(2, 3), 64)
    with pytest.raises(gpu.OverBudget, match="stopped at the budget's end"):
        gpu.measure_fit(
            CPU, "tiny", gpu.Setting("32-true", False, False), 2, 64, 3, tmp_path, data, deadline=time.monotonic()
        )
    marker = json.loads(next((tmp_path / "runs").glob(f"*/{gpu.DEADLINE_MARKER}")).read_text())
    assert marker["stopped_at_step"] == 1  # the callback (from the config) stopped training after its first step


def test_fit_config_is_the_composed_training_config_with_the_settings_model_block(tmp_path):
    cfg = gpu.fit_config(
        "tiny",
        gpu.Setting("32-true", False, False),
        8,
        64,
        3,
        tmp_path / "d",
        tmp_path / "c",
        tmp_path / "run",
        CPU,
        deadline=123.0,
    )
    assert cfg.encoder.weights is None and cfg.data.root == str(tmp_path / "d") and cfg.data.batch_size == 8
    assert (
        cfg.trainer.max_epochs == gpu.FIT_EPOCHS and cfg.trainer.limit_train_batches == 3 and cfg.trainer.devices == 1
    )
    assert cfg.trainer.enable_progress_bar is False and cfg.callbacks.progress_bar is None
    assert cfg.callbacks.bench_deadline.at == 123.0 and cfg.paths.run_dir == str(tmp_path / "run")
    assert cfg.module.channels_last is False and cfg.module.compile is False
    cfg = gpu.fit_config("tiny", gpu.Setting("bf16-mixed", True, True), 8, 64, 3, tmp_path, tmp_path, tmp_path, CPU)
    assert cfg.module.channels_last is True and cfg.module.compile is True and cfg.trainer.precision == "bf16-mixed"
    assert "bench_deadline" not in cfg.callbacks  # no budget, no deadline callback


def test_fit_data_is_an_artefact_folder_written_once(tmp_path):
    from poc59.data.sources import discover_pairs

    first = gpu.fit_data(tmp_path, 5, 64)
    stamp = (first / "images" / "p00000.png").stat().st_mtime_ns
    assert gpu.fit_data(tmp_path, 5, 64) == first and (first / "images" / "p00000.png").stat().st_mtime_ns == stamp
    assert len(discover_pairs(first)[0]) == 5 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert gpu.fit_images(96, 12) * (1 - gpu.FIT_VAL_FRACTION) >= 96 * 12


def test_table_of_a_results_file_prints_without_a_gpu(tmp_path, capsys):
    rows = [
        {
            "encoder": "tiny",
            "mode": "train",
            "precision": "32-true",
            "channels_last": False,
            "compile": False,
            "skipped": "budget: 3 s left of 480 s",
        }
    ]
    path = write_json(
        tmp_path / "gpu.json",
        {"rows": rows, "legend": "the legend", "complete": False, "device": {"name": "NVIDIA H200"}},
    )
    assert gpu.main(["--table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skipped: budget: 3 s left of 480 s" in out and "the legend" in out and "INCOMPLETE" in out


# -- bench/gpu_check.sh (issue 12, item 12) ---------------------------------------------------------------------


@pytest.mark.slow  # bench/gpu_check.sh end to end on a CPU: 39 s at a load of 8-10
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_without_cuda_writes_a_report_saying_so_and_runs_no_gpu_step(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OUT": str(out),
        "POC59_GPU_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
    }
    for attempt in (1, 2):  # safe to run twice
        proc = subprocess.run(
            ["bash", str(REPO / "bench" / "gpu_check.sh")],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 3, (attempt, proc.stdout[-2000:], proc.stderr[-2000:])
        report = (out / "report.md").read_text()
        steps = report.split("## Steps")[1]
        assert "PASS     environment" in steps and "no CUDA device" in steps and "FAIL" not in steps, report
        assert "SKIP     GPU tests" in steps and "SKIP     benchmark" in steps, report
        assert "RESULT   no CUDA device: no GPU step was run (exit 3" in steps, report
        assert not (out / "gpu_results.json").exists() and not (out / "gpu_tests.log").exists()  # nothing GPU ran
        assert "torch.cuda.is_available(): False" in (out / "env.md").read_text()
