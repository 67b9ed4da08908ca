"""GPU throughput harness: training and inference images/s and peak GPU memory of the three encoder presets.

    python bench/gpu.py [--full] [--output PATH] [--encoders convnext_tiny,segformer_b3,maxvit_tiny]
                        [--batch 96] [--image-size 384] [--steps 20] [--warmup 5]

For each encoder preset (conf/encoder/) at 384 px and batch 96, or the largest batch that fits (on a CUDA
out-of-memory error the batch is cut to 3/4 and tried again; the rows say which batch ran and which failed):
images/s of training steps (forward, the production loss, backward, gradient clipping, AdamW, OneCycle: the
objects poc59.train builds, bench/composed.py) and of inference (forward under inference_mode), and the peak
GPU memory (torch.cuda.max_memory_allocated). Settings: AMP (bf16-mixed where the GPU supports bf16, else
16-mixed with a GradScaler: poc59's precision convention) with channels_last, without and with torch.compile;
`--full` adds the grid's other combinations (32-bit, and without channels_last).

Batches are random uint8 images and labels (5 % ignore) already on the GPU, as the feed delivers them with
`data.on_device=true`: the figures are the model's; the data layer has its own benchmarks (bench/run.py).
Encoder weights are random (`encoder.weights=null`): throughput does not depend on their values, and ImageNet
weights need poc59's weight cache, which this harness does not assume.

Writes JSON (bench/gpu_results.json or --output) and prints a Markdown table with the earlier system's
reported figure beside it for context. Without CUDA it prints one line saying so and exits 0: nothing is
measured or estimated on a CPU. The measurement loop (`measure`) takes any device, so the tests run it on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from poc59.atomic import write_json  # noqa: E402
from poc59.classes import ARTEFACT, IGNORE_INDEX  # noqa: E402
from poc59.config import auto_precision, config_dir  # noqa: E402

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


@dataclass(frozen=True)
class Setting:
    precision: str  # bf16-mixed | 16-mixed | 32-true (Lightning's names, as in summary.json)
    channels_last: bool
    compile: bool


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> dict:
    """Images/s of `steps` steps of `mode` after `warmup` untimed ones (compilation, autotuning), on `device`.

    train: autocast forward + the module's loss, backward (through a GradScaler under 16-mixed), gradient
    clipping, the module's optimizer and scheduler; infer: autocast forward under inference_mode. Peak memory is
    poc59.throughput.peak_memory: CUDA max allocated since this call began (a CPU reports peak RSS instead).
    """
    from poc59.throughput import peak_memory

    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be train or infer, got {mode!r}")
    if setting.precision not in AUTOCAST:
        raise ValueError(f"precision must be one of {sorted(AUTOCAST)}, got {setting.precision!r}")
    dtype = AUTOCAST[setting.precision]
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    module = module.to(device).to(memory_format=fmt)
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
        scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=warmup + steps) if module.scheduler_factory else None
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
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                fwd(images)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "batch": batch,
        "image_size": image_size,
        **asdict(setting),
        "images_per_s": steps * batch / seconds,
        "steps": steps,
        "warmup": warmup,
        "seconds": round(seconds, 3),
        "peak_memory": peak_memory(device),
        "device": str(device),
    }


def largest_fitting(measure_at: Callable[[int], dict], batch: int, log: Callable[[str], None] = print) -> dict:
    """`measure_at(batch)`, retried with 3/4 of the batch after each CUDA out-of-memory error, down to batch 1.

    `measure_at` must build what it measures afresh (so a failed attempt's tensors can be freed).
    """
    failed: list[int] = []
    while True:
        try:
            row = measure_at(batch)
            break
        except torch.OutOfMemoryError:
            failed.append(batch)
            if batch == 1:
                raise
        # out of the except block: the error's frames (and their tensors) are released now
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch = max(1, min(batch - 1, int(batch * BACKOFF)))
        log(f"[gpu] out of memory at batch {failed[-1]}: trying {batch}")
    row["batch_requested"] = failed[0] if failed else batch
    row["out_of_memory_at"] = failed
    return row


def _gb(row: dict) -> str:
    return f"{row['peak_memory']['bytes'] / 1e9:.2f} GB"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (encoder, mode, setting); the seed's figure beside ConvNeXt-Tiny training, for context."""
    lines = [
        "| encoder | mode | precision | channels_last | torch.compile | batch | images/s | peak GPU memory | seed (context) |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['encoder']} | {r['mode']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} |"
        if "error" in r:
            lines.append(f"{head} | | error: {r['error'][:120].replace('|', '/')} | | |")
            continue
        batch = f"{r['batch']}" + (f" (OOM at {r['out_of_memory_at'][0]})" if r.get("out_of_memory_at") else "")
        seed = f"{SEED_CONTEXT['images_per_s']}" if r["encoder"] == "convnext_tiny" and r["mode"] == "train" else ""
        lines.append(f"{head} {batch} | {r['images_per_s']:.1f} | {_gb(r)} | {seed} |")
    return "\n".join(lines)


def legend(image_size: int, batch: int, steps: int, warmup: int) -> str:
    return (
        f"images/s: images per second over {steps} timed steps after {warmup} untimed ones, {image_size} px, random "
        "uint8 batches already on the GPU (the model's throughput; data loading excluded). train: forward + DiceFocal "
        "loss + backward + clipping + AdamW + OneCycle; infer: forward under inference_mode. Peak GPU memory: "
        "torch.cuda.max_memory_allocated during the measurement (tensors; the caching allocator reserves more). "
        f"batch: the one that ran ({batch} unless it did not fit). Seed (context): {SEED_CONTEXT['images_per_s']} images/s "
        f"is {SEED_CONTEXT['what']}. Encoder weights random (encoder.weights=null; throughput does not depend on them)."
    )


def run_grid(
    device: torch.device, presets: list[str], grid: list[Setting], batch: int, image_size: int, steps: int, warmup: int,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """One row per (preset, setting, mode): `measure` on a freshly built module at the largest batch up to `batch`
    that fits; a setting that fails otherwise (e.g. torch.compile) is a row with its error."""
    from bench.composed import segmentation_module, train_config

    rows: list[dict] = []
    for preset in presets:
        cfg = train_config(f"encoder={preset}", "encoder.weights=null")
        for setting in grid:
            for mode in ("train", "infer"):
                label = {"encoder": preset, "encoder_name": cfg.encoder.name, **asdict(setting), "mode": mode}
                log(f"[gpu] {preset} {mode} {setting} ...")

                def measure_at(b: int, mode: str = mode, setting: Setting = setting) -> dict:
                    torch.manual_seed(0)
                    module = segmentation_module(cfg, ARTEFACT, torch.ones(ARTEFACT.num_classes))
                    return measure(
                        module, device, mode, b, image_size, setting, steps, warmup,
                        gradient_clip=cfg.trainer.gradient_clip_val,
                    )

                try:
                    rows.append({**label, **largest_fitting(measure_at, batch, log)})
                except Exception as err:  # noqa: BLE001  (one failed setting, e.g. a compile error, is a row)
                    rows.append({**label, "error": f"{type(err).__name__}: {err}"})
                torch._dynamo.reset()  # compiled graphs of one measurement are not reused by the next
    return rows


def no_cuda_reason() -> str | None:
    """One line saying why this machine cannot run the harness, or None if it can."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
    return f"bench/gpu.py: no CUDA device (torch {torch.__version__}, {build} build, torch.cuda.is_available() is False): nothing measured"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole grid: AMP and 32-bit, channels_last or not, compile or not")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "gpu_results.json")
    parser.add_argument("--encoders", default=",".join(PRESETS), help="comma-separated encoder presets (conf/encoder/)")
    parser.add_argument("--batch", type=int, default=96, help="batch tried first (cut by 1/4 on out-of-memory)")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    args = parser.parse_args(argv)
    presets = [e for e in args.encoders.split(",") if e]
    known = sorted(f.stem for f in (config_dir() / "encoder").glob("*.yaml"))
    if set(presets) - set(known):
        parser.error(f"unknown encoder preset(s) {sorted(set(presets) - set(known))}; conf/encoder/ has {known}")
    reason = no_cuda_reason()
    if reason:
        print(reason)
        return 0

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True  # as trainer.benchmark=true: every batch has the same shape
    started = dt.datetime.now(dt.timezone.utc)
    grid = settings(auto_precision(), args.full)  # AMP: bf16-mixed where supported, else 16-mixed
    rows = run_grid(device, presets, grid, args.batch, args.image_size, args.steps, args.warmup)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "device": {
            "name": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "total_memory_bytes": torch.cuda.get_device_properties(device).total_memory,
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "image_size": args.image_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "weights": "random (encoder.weights=null): throughput does not depend on the weights' values",
        "seed_context": SEED_CONTEXT,
        "legend": legend(args.image_size, args.batch, args.steps, args.warmup),
        "rows": rows,
    }
    write_json(args.output, report)
    print()
    print(table(rows))
    print()
    print(report["legend"])
    print(f"\n{report['device']['name']}; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
