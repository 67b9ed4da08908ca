"""GPU throughput harness: training and inference images/s and peak GPU memory of the three encoder presets,
bare steps beside the real training command, within one time budget.

    python bench/gpu.py [--full] [--output PATH] [--encoders convnext_tiny,segformer_b3,maxvit_tiny]
                        [--batch 96] [--image-size 384] [--steps 20] [--warmup 5]
                        [--budget-s 480] [--fit-steps 12 | --no-fit] [--work-dir DIR]
    python bench/gpu.py --table PATH      # the table of an earlier (or a killed) run's JSON; no GPU needed

For each encoder preset (conf/encoder/) at 384 px and batch 96, or the largest batch that fits (on a CUDA
out-of-memory error the batch is cut to 3/4 and tried again, at most MAX_ATTEMPTS batches; the rows say which
batch ran and which failed), three rows per setting:
- train: images/s of bare training steps (forward, the production loss, backward, gradient clipping, AdamW,
  OneCycle: the objects poc59.train builds, bench/composed.py) on one random batch already on the GPU;
- infer: images/s of forward passes under inference_mode on that batch;
- fit: the real training path, `poc59.training.run.train` on the composed config (the pinned feed, on-device
  augmentation, metrics, loggers, checkpoints, callbacks) over a generated 384 px folder, 2 epochs of
  `--fit-steps` batches; its summary.json's `train_images_per_s` (epoch 2) and peak memory, and its ratio to
  the bare train row of the same encoder and setting. Issue 12's bar, judged on a GPU only: fit >= 0.9x bare.
Peak GPU memory is torch.cuda.max_memory_allocated. Settings: AMP (bf16-mixed where the GPU runs bf16 natively,
else 16-mixed with a GradScaler: poc59.core.device.auto_precision) with channels_last, without and with
torch.compile; `--full` adds the grid's other combinations (32-bit, and without channels_last).

Budget (`--budget-s`, default 480 s, so the whole run fits one device call): rows are ordered cheap first (every
encoder's eager rows, then the compiled ones); a row that would start with less than MIN_ROW_S left (a compiled
one: MIN_COMPILE_ROW_S, since compiling cannot be cut short) is recorded as skipped, with the reason; a
measurement cuts its timed steps to what its last warm-up step says still fits, a fit row stops training at the
budget's end, and no out-of-memory retry starts after it. The JSON is written
atomically after every row, so a run killed from outside keeps every row it finished.

Encoder weights are random (`encoder.weights=null`): throughput does not depend on their values, and ImageNet
weights need poc59's weight cache, which this harness does not assume. Without CUDA it prints one line saying
so and exits 0: nothing is measured or estimated on a CPU. `measure`, `measure_fit` and `run_grid` take any
device, so the tests run them on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import build_folder_once
from poc59.core.atomic import write_json
from poc59.core.classes import ARTEFACT, IGNORE_INDEX
from poc59.core.config import config_dir
from poc59.core.device import auto_precision, peak_memory, synchronize

if TYPE_CHECKING:
    from poc59.model.module import SegmentationModule
# Lightning, Hydra and the model stack are imported where they are used: the no-CUDA path stays a few seconds.

PRESETS = ("convnext_tiny", "segformer_b3", "maxvit_tiny")
SEED_CONTEXT = {
    "images_per_s": 83.8,
    "what": "the earlier system's reported training throughput: V100 32 GB, batch 96 (its ConvNeXt-Tiny setting), "
    "384 px, AMP, its own per-sample DataLoader; another GPU and pipeline, so context, not a baseline",
}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}
BACKOFF = 0.75  # on out-of-memory, the next batch tried is this fraction of the last
MAX_ATTEMPTS = 6  # batches tried per row: 96 72 54 40 30 22, then the row is an error (no endless back-off)
MIN_ROW_S = 15.0  # a row starts only with this much of the budget left (building a model alone takes seconds)
MIN_COMPILE_ROW_S = 90.0  # a torch.compile row: compiling cannot be cut short, so it starts only with this much left
FIT_BAR = 0.9  # issue 12: the fit row is at least 0.9x the bare training step with the same settings
FIT_EPOCHS = 2  # epoch 1 warms up (cuDNN autotuning, compilation); summary.json times epoch 2 (its convention)
FIT_VAL_FRACTION = 0.05  # validation is one batch per epoch: few images held out, so fewer generated
FIT_OVERHEAD_S = 30.0  # a fit row's cost beyond its steps: building, preload, validation, checkpoints
DEADLINE_MARKER = "bench_deadline.json"  # written into a fit row's run folder when the budget stopped it


@dataclass(frozen=True)
class Setting:
    precision: str  # bf16-mixed | 16-mixed | 32-true (Lightning's names, as in summary.json)
    channels_last: bool
    compile: bool


@dataclass
class Budget:
    """Wall-clock seconds for the whole run (monotonic clock), so it fits one device call."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.start + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class OverBudget(Exception):
    """A row that the budget does not leave time for: recorded as skipped with this reason, not as an error."""


class OutOfMemoryGaveUp(RuntimeError):
    """Every batch tried ran out of memory (down to batch 1, or MAX_ATTEMPTS batches)."""

    def __init__(self, failed: list[int], last_error: str) -> None:
        super().__init__(
            f"out of memory at every batch tried {failed} (last: {last_error}); try a smaller --batch or fewer settings"
        )
        self.failed = failed


def settings(amp: str, full: bool) -> list[Setting]:
    """AMP + channels_last without and with torch.compile; `full`: also 32-bit and contiguous (NCHW) layouts."""
    first = [Setting(amp, True, False), Setting(amp, True, True)]
    if not full:
        return first
    rest = [Setting(p, cl, c) for p in (amp, "32-true") for cl in (True, False) for c in (False, True)]
    return first + [x for x in rest if x not in first]


def random_batch(batch: int, image_size: int, num_classes: int, device: torch.device, seed: int = 0):
    """uint8 images [B,3,S,S] and uint8 labels [B,S,S] (0..C-1, about 5 % ignore) on `device`."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, num_classes, (batch, image_size, image_size), dtype=torch.uint8, generator=g)
    masks[torch.rand(masks.shape, generator=g) < 0.05] = IGNORE_INDEX
    return images.to(device), masks.to(device)


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA out-of-memory error, also when torch.compile (Dynamo/Inductor) or Lightning wrapped it."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def free_memory() -> None:
    """Between attempts and rows: drop compiled graphs (they hold their own buffers and guards on the old batch
    size), collect the failed attempt's tensors, and give cached blocks back to the allocator."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int, deadline: float | None):
    """(warm-up steps run, timed steps run, timed seconds). With a deadline (time.monotonic), the warm-up stops
    when one more step and a timed one would not fit, and the timed steps are cut to what the last warm-up step
    says fits; OverBudget when not even one fits."""
    done, last = 0, None
    for _ in range(warmup):
        t = time.perf_counter()
        step()
        synchronize(device)
        last, done = time.perf_counter() - t, done + 1
        if deadline is not None and time.monotonic() + 2 * last > deadline:
            break
    run = steps
    if deadline is not None and last is not None:
        room = deadline - time.monotonic()
        run = min(steps, int(room / last)) if last > 0 else steps
        if run < 1:
            raise OverBudget(f"budget: a warm-up step took {last:.1f} s and {max(room, 0):.0f} s were left")
    synchronize(device)
    start = time.perf_counter()
    for _ in range(run):
        step()
    synchronize(device)
    return done, run, time.perf_counter() - start


def measure(
    module: SegmentationModule,
    device: torch.device,
    mode: str,
    batch: int,
    image_size: int,
    setting: Setting,
    steps: int,
    warmup: int,
    gradient_clip: float | None = 1.0,
    deadline: float | None = None,
) -> dict:
    """Images/s of `steps` steps of `mode` after `warmup` untimed ones (compilation, autotuning), on `device`.

    train: autocast forward + the module's loss, backward (through a GradScaler under 16-mixed), gradient
    clipping, the module's optimizer and scheduler; infer: autocast forward under inference_mode. Peak memory is
    poc59.core.device.peak_memory: CUDA max allocated since this call began (a CPU reports peak RSS instead).
    `deadline` (time.monotonic) cuts the timed steps to what fits (the row says so: steps < steps_requested).
    """
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be train or infer, got {mode!r}")
    if setting.precision not in AUTOCAST:
        raise ValueError(f"precision must be one of {sorted(AUTOCAST)}, got {setting.precision!r}")
    dtype = AUTOCAST[setting.precision]
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    module = module.to(device).to(memory_format=fmt)
    if hasattr(module, "channels_last"):  # the module lays its input out itself (as training does): same layout
        module.channels_last = setting.channels_last
        module.configure_model()
    images, masks = random_batch(batch, image_size, len(module.names), device)
    images, target = images.contiguous(memory_format=fmt), masks.long()
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    if mode == "train":
        module.train()

        def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return module.loss(module(x), y)

        fwd = torch.compile(forward_loss) if setting.compile else forward_loss
        optimizer = module.optimizer_factory(params=module.parameters())
        scheduler = (
            module.scheduler_factory(optimizer=optimizer, total_steps=warmup + steps)
            if module.scheduler_factory
            else None
        )
        scaler = torch.amp.GradScaler(device.type) if setting.precision == "16-mixed" else None

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = fwd(images, target)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if gradient_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), gradient_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()

    else:
        module.eval()
        fwd = torch.compile(module) if setting.compile else module

        def step() -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                fwd(images)

    done, run, seconds = _run_steps(step, device, warmup, steps, deadline)
    return {
        "mode": mode,
        "batch": batch,
        "image_size": image_size,
        **asdict(setting),
        "images_per_s": run * batch / seconds,
        "steps": run,
        "warmup": done,
        "steps_requested": steps,
        "warmup_requested": warmup,
        "seconds": round(seconds, 3),
        "peak_memory": peak_memory(device),
        "device": str(device),
    }


def largest_fitting(
    measure_at: Callable[[int], dict],
    batch: int,
    log: Callable[[str], None] = print,
    *,
    budget: Budget | None = None,
    attempts: int = MAX_ATTEMPTS,
) -> dict:
    """`measure_at(batch)`, retried with 3/4 of the batch after each CUDA out-of-memory error (also one raised
    through torch.compile), at most `attempts` batches, down to batch 1, and none started past the budget.

    `measure_at` must build what it measures afresh (so a failed attempt's tensors can be freed).
    """
    failed: list[int] = []
    while True:
        last = ""
        try:
            row = measure_at(batch)
            break
        except Exception as err:  # only out-of-memory errors are retried; the rest re-raised
            if not is_out_of_memory(err):
                raise
            failed.append(batch)
            last = f"{type(err).__name__}: {str(err)[:200]}"  # the text only: the error's frames hold tensors
        # out of the except block: the error's frames (and their tensors) are released now
        free_memory()
        if batch == 1 or len(failed) >= attempts:
            raise OutOfMemoryGaveUp(failed, last)
        if budget is not None and budget.left() < MIN_ROW_S:
            raise OverBudget(f"budget: out of memory at batch {failed}, {max(budget.left(), 0):.0f} s left for a retry")
        batch = max(1, min(batch - 1, int(batch * BACKOFF)))
        log(f"[gpu] out of memory at batch {failed[-1]}: trying {batch}")
    row["batch_requested"] = failed[0] if failed else batch
    row["out_of_memory_at"] = failed
    return row


# -- the fit row: the real training command ----------------------------------------------------------------


def fit_images(batch: int, steps: int) -> int:
    """Pairs to generate so the training side holds `steps` full batches after the validation hold-out."""
    return math.ceil((batch * steps + 2) / (1 - FIT_VAL_FRACTION)) + 2


def _write_pair(root: Path, i: int, image_size: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng((seed, i))
    coarse = rng.integers(0, 256, (image_size // 16, image_size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((image_size, image_size), Image.BILINEAR)  # smooth: fast to encode
    blocks = rng.integers(0, ARTEFACT.num_classes, (image_size // 32, image_size // 32))
    mask = np.kron(blocks, np.ones((32, 32), dtype=np.int64)).astype(np.uint8)
    mask[:8] = IGNORE_INDEX  # a mount, as the ARTeFACT annotations have
    image.save(root / "images" / f"p{i:05d}.png", compress_level=1)
    Image.fromarray(mask, "L").save(root / "annotations" / f"p{i:05d}.png", compress_level=1)


def fit_data(parent: Path, n: int, image_size: int, seed: int = 0) -> Path:
    """An ARTeFACT-layout folder of `n` random pairs at `image_size` px (already the model's size, so preloading
    only decodes), written once in parallel and reused: every fit row (and a second run) shares it."""
    out = parent / f"fit-n{n}-s{image_size}-seed{seed}"

    def fill(tmp: Path) -> None:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PNG encoding releases the GIL
            list(pool.map(lambda i: _write_pair(tmp, i, image_size, seed), range(n)))

    return build_folder_once(out, fill, f"{n} random pairs at {image_size} px for bench/gpu.py's fit rows")


def fit_deadline(at: float, marker: str) -> Any:
    """A Lightning callback (instantiated from the config, so the real command builds it) that stops training
    at time.monotonic() `at`, the budget's end, and writes `marker` so the row is reported as cut, not measured."""
    import lightning as L

    class FitDeadline(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if time.monotonic() > at and not trainer.should_stop:
                trainer.should_stop = True
                write_json(marker, {"stopped_at_step": trainer.global_step, "reason": "bench/gpu.py budget"})

    return FitDeadline()


def fit_config(
    preset: str,
    setting: Setting,
    batch: int,
    image_size: int,
    steps: int,
    data: Path,
    cache: Path,
    run_dir: Path,
    device: torch.device,
    deadline: float | None = None,
) -> Any:
    """The composed training config (bench/composed.py: conf/train.yaml as the command composes it) for one fit
    row: `data` at `image_size`, `FIT_EPOCHS` epochs of `steps` batches, one validation batch, no progress bar,
    one device, the setting's precision, channels_last and compile (model.*)."""
    from omegaconf import open_dict

    from bench.composed import train_config

    cfg = train_config(
        f"encoder={preset}",
        "encoder.weights=null",
        "data=artefact",
        f"data.root={data}",
        f"data.image_size={image_size}",
        f"data.batch_size={batch}",
        f"data.val_fraction={FIT_VAL_FRACTION}",
        f"data.cache_dir={cache}",
        f"trainer.max_epochs={FIT_EPOCHS}",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.devices=1",
        f"trainer.precision={setting.precision}",
        "resume=never",
        run_dir=run_dir,
    )
    with open_dict(cfg):
        cfg.module.channels_last = setting.channels_last  # how the network runs, as the bare row ran it
        cfg.module.compile = setting.compile
        if deadline is not None:
            cfg.callbacks.bench_deadline = {
                "_target_": f"{__name__}.fit_deadline",
                "at": deadline,
                "marker": str(run_dir / DEADLINE_MARKER),
            }
    return cfg


def measure_fit(
    device: torch.device,
    preset: str,
    setting: Setting,
    batch: int,
    image_size: int,
    steps: int,
    work: Path,
    data: Path,
    deadline: float | None = None,
) -> dict:
    """One real training run, `poc59.training.run.train`: the row's figures are its own summary.json's."""
    from poc59.training.run import train

    run_dir = (
        work / "runs" / f"{preset}-{setting.precision}-cl{int(setting.channels_last)}-c{int(setting.compile)}-b{batch}"
    )
    shutil.rmtree(run_dir, ignore_errors=True)  # a second run of the harness measures afresh
    cfg = fit_config(preset, setting, batch, image_size, steps, data, work / "cache", run_dir, device, deadline)
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)  # summary.json's peak is this run's, not an earlier row's
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    marker = run_dir / DEADLINE_MARKER
    if marker.exists():
        raise OverBudget(f"budget: training stopped at the budget's end ({json.loads(marker.read_text())})")
    run_dir = Path(cfg.paths.run_dir)  # the folder train() used (it records it in the config it was given)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # hundreds of MB each; the summary stays
    if summary["train_images_per_s"] is None:
        raise RuntimeError(f"{summary_path}: the run timed no training step (train_images_per_s is null)")
    data_record = summary["provenance"]["data"]
    run = min(steps, data_record["train_images"] // batch)
    return {
        "mode": "fit",
        "batch": batch,
        "image_size": image_size,
        **asdict(setting),
        "images_per_s": summary["train_images_per_s"],
        "images_per_s_convention": summary["train_images_per_s_convention"],
        "steps": run,
        "timed_steps": run - 1,  # epoch 2 after its first step (summary.json's convention)
        "epochs": FIT_EPOCHS,
        "seconds": round(seconds, 3),
        "peak_memory": summary["peak_memory"],
        "device": str(device),
        "precision_run": summary["provenance"]["precision"],
        "summary": str(summary_path),
        "data": {
            k: data_record.get(k)
            for k in ("root", "images", "train_images", "val_images", "preload_seconds", "preload_source")
        },
    }


def _fit_steps(steps: int, bare: dict | None, left: float | None) -> int:
    """Fit steps that the budget leaves time for, from the bare train row's time per step (2 epochs, +50 %
    for the feed and callbacks, + FIT_OVERHEAD_S); OverBudget when not even 2 fit (epoch 2 times steps - 1)."""
    if left is None or not bare or "seconds" not in bare or not bare.get("steps"):
        return steps
    per_step = bare["seconds"] / bare["steps"]
    fits = int((left - FIT_OVERHEAD_S) / (FIT_EPOCHS * 1.5 * per_step)) if per_step > 0 else steps
    if fits < 2:
        need = FIT_OVERHEAD_S + FIT_EPOCHS * 1.5 * 2 * per_step
        raise OverBudget(f"budget: {left:.0f} s left, a fit row of 2 steps needs about {need:.0f} s")
    return min(steps, fits)


def _with_ratio(row: dict, bare: dict | None) -> dict:
    """The fit row's ratio to the bare train row of the same encoder and setting, and the bar (on a GPU only)."""
    if "images_per_s" not in row or not bare or "images_per_s" not in bare:
        return row
    ratio = row["images_per_s"] / bare["images_per_s"]
    return {
        **row,
        "bare_images_per_s": bare["images_per_s"],
        "bare_batch": bare["batch"],
        "fit_over_bare": ratio,
        "bar": f">= {FIT_BAR}x bare",
        "passed": ratio >= FIT_BAR if row["device"].startswith("cuda") else None,
    }


def run_grid(
    device: torch.device,
    presets: list[str],
    grid: list[Setting],
    batch: int,
    image_size: int,
    steps: int,
    warmup: int,
    log: Callable[[str], None] = print,
    *,
    fit_steps: int = 0,
    work: Path | None = None,
    budget: Budget | None = None,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """One row per (setting, preset, mode), cheap first: every preset's eager rows before the compiled ones.

    train / infer: `measure` on a freshly built module at the largest batch up to `batch` that fits; fit (when
    `fit_steps` > 0): `measure_fit` at the batch the train row ran, on data generated once under `work`. A setting
    that fails (e.g. torch.compile) is a row with its error; a row the budget leaves no time for is a skipped row.
    `on_row(rows)` runs after every row (the caller writes the results there).
    """
    from bench.composed import segmentation_module, train_config

    modes = ("train", "infer", "fit") if fit_steps > 0 else ("train", "infer")
    if fit_steps > 0 and work is None:
        raise ValueError("fit rows need a work folder (work=...) for their data and runs")
    deadline = budget.deadline if budget is not None else None
    configs = {p: train_config(f"encoder={p}", "encoder.weights=null") for p in presets}
    data: Path | None = None
    rows: list[dict] = []
    for setting in grid:
        for preset in presets:
            cfg = configs[preset]
            bare: dict | None = None
            for mode in modes:
                label = {"encoder": preset, "encoder_name": cfg.encoder.name, **asdict(setting), "mode": mode}
                row: dict
                try:
                    least = MIN_COMPILE_ROW_S if setting.compile else MIN_ROW_S
                    if budget is not None and budget.left() < least:
                        raise OverBudget(
                            f"budget: {max(budget.left(), 0):.0f} s left of {budget.seconds:.0f} s "
                            f"(a{' torch.compile' if setting.compile else ''} row starts with {least:.0f} s or more)"
                        )
                    log(f"[gpu] {preset} {mode} {setting} ...")
                    if mode == "fit":
                        n_fit = _fit_steps(fit_steps, bare, budget.left() if budget else None)
                        if data is None:  # generated once, for the batch asked for: every fit row shares it
                            data = fit_data(work / "data", fit_images(batch, fit_steps), image_size)

                        def measure_at(
                            b: int,
                            setting: Setting = setting,
                            preset: str = preset,
                            n: int = n_fit,
                            data: Path = data,
                        ) -> dict:
                            return measure_fit(device, preset, setting, b, image_size, n, work, data, deadline)

                        first = bare["batch"] if bare and "batch" in bare else batch
                    else:

                        def measure_at(b: int, mode: str = mode, setting: Setting = setting, cfg: Any = cfg) -> dict:
                            torch.manual_seed(0)
                            module = segmentation_module(cfg, ARTEFACT, torch.ones(ARTEFACT.num_classes))
                            return measure(
                                module,
                                device,
                                mode,
                                b,
                                image_size,
                                setting,
                                steps,
                                warmup,
                                gradient_clip=cfg.trainer.gradient_clip_val,
                                deadline=deadline,
                            )

                        first = batch
                    row = {**label, **largest_fitting(measure_at, first, log, budget=budget)}
                except OverBudget as skip:
                    row = {**label, "skipped": str(skip)}
                except OutOfMemoryGaveUp as err:
                    row = {**label, "error": f"{type(err).__name__}: {err}", "out_of_memory_at": err.failed}
                except Exception as err:  # noqa: BLE001  (one failed setting, e.g. a compile error, is a row)
                    row = {**label, "error": f"{type(err).__name__}: {err}"}
                if mode == "train":
                    bare = row
                elif mode == "fit":
                    row = _with_ratio(row, bare)
                rows.append(row)
                free_memory()  # compiled graphs of one measurement are not reused by the next
                if on_row is not None:
                    on_row(rows)
    return rows


# -- the report ---------------------------------------------------------------------------------------------


def _gb(row: dict) -> str:
    return f"{row['peak_memory']['bytes'] / 1e9:.2f} GB"


def _ratio(row: dict) -> str:
    if "fit_over_bare" not in row:
        return ""
    verdict = {True: "pass", False: "FAIL", None: "not judged off a GPU"}[row.get("passed")]
    return f"{row['fit_over_bare']:.2f}x ({verdict})"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (encoder, mode, setting); fit rows with their ratio to the bare train row; the seed's
    figure beside ConvNeXt-Tiny training, for context."""
    lines = [
        (
            "| encoder | mode | precision | channels_last | torch.compile | batch | images/s | peak GPU memory "
            f"| fit / bare (bar >= {FIT_BAR}x) | seed (context) |"
        ),
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['encoder']} | {r['mode']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} |"
        if "error" in r or "skipped" in r:
            what = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"{head} | {what[:120].replace('|', '/')} | | | |")
            continue
        batch = f"{r['batch']}" + (f" (OOM at {r['out_of_memory_at'][0]})" if r.get("out_of_memory_at") else "")
        seed = (
            f"{SEED_CONTEXT['images_per_s']}"
            if r["encoder"] == "convnext_tiny" and r["mode"] in ("train", "fit")
            else ""
        )
        lines.append(f"{head} {batch} | {r['images_per_s']:.1f} | {_gb(r)} | {_ratio(r)} | {seed} |")
    return "\n".join(lines)


def bar_lines(rows: list[dict]) -> list[str]:
    """One line per fit row judged on a GPU: issue 12's bar, fit >= FIT_BAR x bare."""
    out = []
    for r in rows:
        if r.get("mode") == "fit" and r.get("passed") is not None:
            out.append(
                f"fit >= {FIT_BAR}x bare: {r['encoder']} {r['precision']} channels_last={r['channels_last']} "
                f"compile={r['compile']}: {r['images_per_s']:.1f} / {r['bare_images_per_s']:.1f} images/s = "
                f"{r['fit_over_bare']:.2f}x {'pass' if r['passed'] else 'FAIL'}"
            )
    return out


def legend(image_size: int, batch: int, steps: int, warmup: int, fit_steps: int = 0) -> str:
    fit = (
        f" fit: poc59.training.run.train on the composed config (feed, augmentation, metrics, loggers, callbacks), "
        f"{FIT_EPOCHS} epochs of {fit_steps} batches of a generated {image_size} px set; images/s is its summary.json's "
        f"train_images_per_s (epoch 2 after its first step); fit / bare: over the train row of the same encoder and "
        f"setting, bar >= {FIT_BAR}x (judged on a GPU only)."
        if fit_steps
        else ""
    )
    return (
        f"images/s: images per second over {steps} timed steps after {warmup} untimed ones (fewer where the budget "
        f"cut them: the JSON says), {image_size} px, random uint8 batches already on the GPU (the model's throughput; "
        "data loading excluded). train: forward + DiceFocal loss + backward + clipping + AdamW + OneCycle; infer: "
        f"forward under inference_mode.{fit} Peak GPU memory: torch.cuda.max_memory_allocated during the measurement "
        f"(tensors; the caching allocator reserves more). batch: the one that ran ({batch} unless it did not fit). "
        f"Seed (context): {SEED_CONTEXT['images_per_s']} images/s is {SEED_CONTEXT['what']}. Encoder weights random "
        "(encoder.weights=null; throughput does not depend on them)."
    )


def print_report(report: dict) -> None:
    """The table, the bar lines and the legend of a results file (also of a killed run's partial one)."""
    print(table(report["rows"]))
    for line in bar_lines(report["rows"]):
        print(line)
    print()
    print(report["legend"])
    done = (
        "complete"
        if report.get("complete")
        else "INCOMPLETE (stopped before the last row: the rows above are all it measured)"
    )
    print(f"\n{report['device']['name']}; {len(report['rows'])} rows, {done}")


def no_cuda_reason() -> str | None:
    """One line saying why this machine cannot run the harness, or None if it can."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    return f"bench/gpu.py: no CUDA device (torch {torch.__version__}, {build} build, torch.cuda.is_available() is False): nothing measured"


def device_record(device: torch.device) -> dict:
    return {
        "name": torch.cuda.get_device_name(device),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "total_memory_bytes": torch.cuda.get_device_properties(device).total_memory,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full", action="store_true", help="the whole grid: AMP and 32-bit, channels_last or not, compile or not"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "gpu_results.json")
    parser.add_argument("--encoders", default=",".join(PRESETS), help="comma-separated encoder presets (conf/encoder/)")
    parser.add_argument("--batch", type=int, default=96, help="batch tried first (cut by 1/4 on out-of-memory)")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="wall-clock seconds in all; later rows are skipped rows"
    )
    parser.add_argument(
        "--fit-steps", type=int, default=12, help=f"batches per epoch of a fit row ({FIT_EPOCHS} epochs)"
    )
    parser.add_argument("--no-fit", action="store_true", help="bare train and infer rows only")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="fit rows' data, preload cache and runs (default: $POC59_CACHE/bench/gpu)",
    )
    parser.add_argument(
        "--table", type=Path, default=None, metavar="JSON", help="print the table of a results file and exit"
    )
    args = parser.parse_args(argv)
    if args.table is not None:
        if not args.table.exists():
            parser.error(f"--table {args.table}: no such file (bench/gpu.py writes it with --output)")
        print_report(json.loads(args.table.read_text()))
        return 0
    presets = [e for e in args.encoders.split(",") if e]
    known = sorted(f.stem for f in (config_dir() / "encoder").glob("*.yaml"))
    if set(presets) - set(known):
        parser.error(f"unknown encoder preset(s) {sorted(set(presets) - set(known))}; conf/encoder/ has {known}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    if not args.no_fit and args.fit_steps < 2:
        parser.error(
            f"--fit-steps must be >= 2 (summary.json times epoch 2 after its first step), got {args.fit_steps}"
        )
    reason = no_cuda_reason()
    if reason:
        print(reason)
        return 0

    budget = Budget(args.budget_s)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are random: never wait on a model hub
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as trainer.benchmark=true: every batch has the same shape
    fit_steps = 0 if args.no_fit else args.fit_steps
    if args.work_dir is None:
        from bench.common import bench_dir

        args.work_dir = bench_dir() / "gpu"
    started = dt.datetime.now(dt.timezone.utc)
    grid = settings(auto_precision(), args.full)  # AMP: bf16-mixed where native, else 16-mixed
    report = {
        "started": started.isoformat(timespec="seconds"),
        "complete": False,
        "device": device_record(device),
        "image_size": args.image_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "fit_steps": fit_steps,
        "budget_s": args.budget_s,
        "weights": "random (encoder.weights=null): throughput does not depend on the weights' values",
        "seed_context": SEED_CONTEXT,
        "legend": legend(args.image_size, args.batch, args.steps, args.warmup, fit_steps),
        "rows": [],
    }

    def save(rows: list[dict]) -> None:
        write_json(args.output, {**report, "rows": rows, "elapsed_s": round(budget.seconds - budget.left(), 1)})

    save([])
    rows = run_grid(
        device,
        presets,
        grid,
        args.batch,
        args.image_size,
        args.steps,
        args.warmup,
        fit_steps=fit_steps,
        work=args.work_dir,
        budget=budget,
        on_row=save,
    )
    report.update(complete=True, rows=rows, elapsed_s=round(budget.seconds - budget.left(), 1))
    write_json(args.output, report)
    print()
    print_report(report)
    print(f"results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
