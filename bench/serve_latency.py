"""Serve latency for one 2,048 x 1,536 scan on this CPU: ONNX Runtime fp32 against PyTorch eager on the same
model, the int8 model against fp32 with its validation mIoU cost, and the physical limit of the scan.

Model: the quickstart's network (cpu_small: RegNetX-400MF under the quickstart's slim FPN) trained as a
native-scale model (`data.policy=crop`, 128 px tiles, `max_side=2048`: sources and the scan at their own scale, 60 synthetic images, 2 epochs: TRAIN), then
`python -m poc59.export run_dir=... format=onnx quantize=int8 allow_int8_loss=true` (the int8 model's
validation mIoU against the fp32 model's is the card's, measured by the export itself). A scan is what
`serve` and `predict` run on it: `poc59.inference.image.predict_label_map` (128 px tiles, overlap 0.25,
8 tiles a batch, blended, argmax), one model loaded once per side (`poc59.artifacts.load.load_model`: the
checkpoint in PyTorch eager, `model.onnx` and `model.int8.onnx` through ONNX Runtime's CPU provider).
Interleaved eager, fp32, int8, eager, ... after one untimed round; medians of 2 rounds.

- `serve_onnx_fp32`: ONNX Runtime fp32 against PyTorch eager, seconds per scan (ratio = eager / ONNX).
- `serve_onnx_int8`: the int8 model against ONNX Runtime fp32 (ratio = fp32 / int8); the mIoU cost in the details.
- `serve_limit`: ONNX Runtime fp32 against the scan's physical limit: the network's FLOPs for the scan
  (torch.utils.flop_counter.FlopCounterMode over predict's path in eager: every tile's convolutions and
  matrix products, 2 FLOPs a multiply-add) over the CPU's measured peak (the best of 5 float32 2,048 x
  2,048 matrix products, torch at the same thread count: 2 n^3 / seconds).

--quick: the tiny preset's seeded network with 64 px tiles (no training, no validation cost), a 96 x 128
scan, one round (about 15 s of CPU time, most of it ONNX Runtime's quantization and imports); the int8 model calibrated on 8 random images through the same `quantize_int8`.

`python -m bench.serve_latency --int8-choices [--presets a,b] [--choices c,d] [--threads N] [--rounds R]`: whether
another network or quantization choice reaches the int8 aim (bench/README.md, "int8 on an AVX2 CPU without
VNNI"): each encoder preset in `--presets` (default: the three shipped at 384 px and the
quickstart's at 128 px) under its preset's decoder, seeded (weights do not change speed), exported as `export`
does, then fp32 and each of `--choices` (CHOICES; `all` is `quantize_int8` itself) timed per tile through ONNX
Runtime (batch BATCHES, `--threads` intra-op threads on both sides), interleaved after one untimed round, medians
of `--rounds`. One row per choice and preset: int8 ms per tile against fp32's, ratio fp32 / int8. Slow: a
384 px network takes minutes to export and calibrate on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import common
from bench.predict import model as seeded_model
from bench.predict import scan_pixels

NAME_FP32, NAME_INT8, NAME_LIMIT = "serve_onnx_fp32", "serve_onnx_int8", "serve_limit"
BAR_FP32, BAR_INT8 = 1.3, 1.8
OVERLAP, BATCH = 0.25, 8


@dataclass(frozen=True)
class Sizes:
    scan: tuple[int, int]  # (height, width)
    repeats: int


FULL = Sizes(scan=(1536, 2048), repeats=2)  # eager takes minutes a scan on this shared CPU
QUICK = Sizes(scan=(96, 128), repeats=1)

# The quickstart's network and recipe on 60 synthetic images (48 training, 12 validation), 2 epochs, one
# thread: the int8 cost is measured on a model that has learnt something, in minutes on a busy 2-core machine.
TRAIN = (
    "experiment=quickstart",
    "data.policy=crop",
    "data.max_side=2048",  # every source at its own scale, and predict tiles the whole scan (384 shrinks it to 384 x 288)
    "data.synthetic.n=60",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "threads=1",
)


def _python(args: list[str], cwd: Path, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def trained_models(scratch: Path) -> tuple[dict, dict]:
    """({side: TrainedModel} for eager, fp32 and int8 of a run trained and exported here, the int8 record)."""
    from poc59.artifacts.load import load_model

    env = {**os.environ, "POC59_CACHE": str(scratch / "cache")}
    run, out = scratch / "run", scratch / "export"
    _python(["poc59.train", *TRAIN, f"run_dir={run}"], scratch, env)
    _python(
        ["poc59.export", f"run_dir={run}", f"out={out}", "format=onnx", "quantize=int8", "allow_int8_loss=true"],
        scratch,
        env,
    )
    card = json.loads((out / "model.card.json").read_text())
    models = {
        "eager": load_model(run / "checkpoints" / "best.ckpt"),
        "fp32": load_model(out / "model.onnx"),
        "int8": load_model(out / "model.int8.onnx"),
    }
    return models, card["quantization"]["int8"]


def seeded_models(scratch: Path, tile: int) -> tuple[dict, dict]:
    """The same three sides for the tiny preset's seeded network, exported and quantized in process."""
    import onnxruntime

    from poc59.artifacts.export import quantize_int8, to_onnx
    from poc59.artifacts.exported import OnnxSegmenter
    from poc59.artifacts.trained import TrainedModel

    eager = seeded_model("tiny", 16, tile)
    example = torch.randint(0, 256, (2, 3, tile, tile), dtype=torch.uint8)
    fp32, int8 = scratch / "model.onnx", scratch / "model.int8.onnx"
    fp32.write_bytes(to_onnx(eager.segmenter, example, 18))
    rng = np.random.default_rng(0)
    quantize_int8(fp32, int8, (rng.integers(0, 256, (4, 3, tile, tile), dtype=np.uint8) for _ in range(2)))

    def onnx_side(path: Path) -> TrainedModel:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return TrainedModel(OnnxSegmenter(session), eager.card, path)

    return {"eager": eager, "fp32": onnx_side(fp32), "int8": onnx_side(int8)}, {"validation": None}


# The quantization choices `--int8-choices` compares with fp32 (quantize_static / quantize_dynamic keywords;
# "exclude_grouped": grouped and depthwise convolutions stay fp32, the kernels int8 speeds up least).
CHOICES: dict[str, dict] = {
    "all": {},  # quantize_int8, the export's own (INT8_SETTINGS)
    "matmul": {"op_types_to_quantize": ["MatMul", "Gemm"]},
    "matmul_conv": {"op_types_to_quantize": ["MatMul", "Gemm", "Conv"]},
    "matmul_dense_conv": {"op_types_to_quantize": ["MatMul", "Gemm", "Conv"], "exclude_grouped": True},
    "matmul_dense_conv_constb": {
        "op_types_to_quantize": ["MatMul", "Gemm", "Conv"],
        "exclude_grouped": True,
        "extra_options": {"MatMulConstBOnly": True},
    },
    "dense_conv": {"op_types_to_quantize": ["Conv"], "exclude_grouped": True},
    "dense_conv_full_range": {"op_types_to_quantize": ["Conv"], "exclude_grouped": True, "reduce_range": False},
    "dense_conv_s8_activations": {"op_types_to_quantize": ["Conv"], "exclude_grouped": True, "activations": "s8"},
    "dense_conv_qoperator": {"op_types_to_quantize": ["Conv"], "exclude_grouped": True, "format": "QOperator"},
    "dynamic_matmul": {"op_types_to_quantize": ["MatMul"], "dynamic": True},
}
PRESETS = {"convnext_tiny": 384, "segformer_b3": 384, "maxvit_tiny": 384, "cpu_small": 128}  # preset: tile
BATCHES = {384: 1, 128: 8}  # tiles a run: predict's batch of 8 where a tile is small, one 384 px tile else
CONF = Path(__file__).resolve().parents[1] / "conf"


def preset_network(preset: str) -> torch.nn.Module:
    """The encoder preset's network under its preset's decoder (conf/encoder, conf/decoder), seeded, 16 classes,
    in a Segmenter (uint8 in, normalisation inside) as training and export build it."""
    from omegaconf import OmegaConf

    from poc59.model.factory import build_network
    from poc59.model.segmenter import Segmenter

    enc = OmegaConf.load(CONF / "encoder" / f"{preset}.yaml")
    decoder = next(d["/decoder"] for d in enc.defaults if "/decoder" in d)
    dec = OmegaConf.load(CONF / "decoder" / f"{decoder}.yaml")
    torch.manual_seed(0)
    net = build_network(
        enc.encoder.name,
        dec.name,
        None,
        16,
        kwargs=OmegaConf.to_container(enc.encoder.kwargs),
        decoder_kwargs=OmegaConf.to_container(dec.kwargs),
    )
    return Segmenter(net, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()


def grouped_convs(path: Path) -> list[str]:
    """The names of the grouped (depthwise among them) Conv nodes of an ONNX model."""
    import onnx

    return [
        n.name
        for n in onnx.load(str(path)).graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i != 1 for a in n.attribute)
    ]


def quantize_choice(fp32: Path, out: Path, choice: str, batches: list[np.ndarray]) -> None:
    """Write `out`, the int8 model of `fp32` under CHOICES[choice] (`all`: the export's `quantize_int8`)."""
    import logging

    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from poc59.artifacts.export import INT8_SETTINGS, calibration_reader, quantize_int8

    if choice == "all":
        quantize_int8(fp32, out, batches)
        return
    c = CHOICES[choice]
    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # as quantize_int8 does
    keywords = {
        "op_types_to_quantize": c["op_types_to_quantize"],
        "nodes_to_exclude": grouped_convs(prepared) if c.get("exclude_grouped") else [],
        "per_channel": INT8_SETTINGS["per_channel"],
        "reduce_range": c.get("reduce_range", INT8_SETTINGS["reduce_range"]),
        "weight_type": QuantType.QInt8,
        "extra_options": c.get("extra_options", {}),
    }
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # per-tensor notices on the root logger
    try:
        if c.get("dynamic"):
            quantize_dynamic(str(prepared), str(out), **keywords)
        else:
            quantize_static(
                str(prepared),
                str(out),
                calibration_reader(batches),
                quant_format=QuantFormat.QOperator if c.get("format") == "QOperator" else QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if c.get("activations") == "s8" else QuantType.QUInt8,
                **keywords,
            )
    finally:
        logging.getLogger().disabled = was
        prepared.unlink(missing_ok=True)


def per_tile(sessions: dict, feed: dict[str, np.ndarray], rounds: int) -> dict[str, list[float]]:
    """Seconds per tile of each ONNX Runtime session on the same batch `feed`, interleaved over `rounds`."""
    tiles = len(next(iter(feed.values())))

    def timed(session):
        def once() -> float:
            start = time.perf_counter()
            session.run(None, feed)
            return (time.perf_counter() - start) / tiles

        return once

    return common.interleaved({side: timed(s) for side, s in sessions.items()}, rounds)


def int8_choices(presets: list[str], choices: list[str], threads: int, rounds: int, quick: bool = False) -> list[dict]:
    """Per preset, fp32 against each int8 choice per tile (see the module's --int8-choices)."""
    import onnxruntime

    from poc59.artifacts.export import INPUT, to_onnx

    image = scan_pixels(1536, 2048)
    rng = np.random.default_rng(0)
    rows = []
    for preset in presets:
        tile = 64 if quick else PRESETS.get(preset, 128)
        batch = BATCHES.get(tile, 2)
        crops = [
            image[y : y + tile, x : x + tile].transpose(2, 0, 1)[None]
            for y, x in zip(rng.integers(0, 1536 - tile, 4), rng.integers(0, 2048 - tile, 4), strict=True)
        ]
        calibration = [np.ascontiguousarray(c) for c in crops]
        tiles = np.ascontiguousarray(np.concatenate([crops[i % 4] for i in range(batch)]))
        scratch = common.scratch_dir("int8-choices-")
        try:
            example = torch.from_numpy(np.concatenate(calibration[:2]))
            files = {"fp32": scratch / "fp32.onnx"}
            files["fp32"].write_bytes(to_onnx(preset_network(preset), example, 18))
            for choice in choices:
                files[choice] = scratch / f"{choice}.onnx"
                quantize_choice(files["fp32"], files[choice], choice, calibration)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            sessions = {
                side: onnxruntime.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])
                for side, f in files.items()
            }
            logits = {side: s.run(None, {INPUT: tiles})[0] for side, s in sessions.items()}  # untimed round

            before = common.load()
            runs = per_tile(sessions, {INPUT: tiles}, rounds)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        fp32 = common.median(runs["fp32"])
        labels = logits["fp32"].argmax(1)
        for choice in choices:
            int8 = common.median(runs[choice])
            rows.append(
                common.row(
                    f"int8_choice_{preset}_{choice}",
                    f"{preset} ({tile} px tiles, batch {batch}), int8 {choice}: ONNX Runtime per tile",
                    int8 * 1000,
                    "ms",
                    fp32 * 1000,
                    "ONNX Runtime fp32, same network and tiles",
                    fp32 / int8,
                    "x",
                    f">= {BAR_INT8}x",
                    fp32 / int8 >= BAR_INT8,
                    quick,
                    {
                        "choice": CHOICES[choice],
                        "threads": threads,
                        "runs_s_per_tile": {"fp32": runs["fp32"], choice: runs[choice]},
                        "labels_agree_with_fp32": float((logits[choice].argmax(1) == labels).mean()),
                        "load_before": before,
                        "load_after": common.load(),
                        "seeded": "untrained network: speed only; the mIoU cost needs a trained run (export)",
                    },
                )
            )
    return rows


def scan_flops(model, image: np.ndarray) -> tuple[int, np.ndarray]:
    """(FLOPs of predict's path for one scan in eager (FlopCounterMode: convolutions and matrix products),
    the labels it gave)."""
    from torch.utils.flop_counter import FlopCounterMode

    from poc59.inference.image import predict_label_map

    counter = FlopCounterMode(display=False)
    with counter:
        labels = predict_label_map(model, image, OVERLAP, BATCH, False, "cpu")
    return int(counter.get_total_flops()), labels


def peak_flops(n: int = 2048, rounds: int = 5) -> float:
    """The CPU's measured float32 peak, FLOP/s: the best of `rounds` n x n matrix products (torch, its threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run(quick: bool) -> list[dict]:
    from poc59.inference.image import predict_label_map

    s = QUICK if quick else FULL
    h, w = s.scan
    torch.set_flush_denormal(True)  # as every command does
    scratch = common.scratch_dir("serve-latency-")
    try:
        models, int8 = seeded_models(scratch, 64) if quick else trained_models(scratch)
        image = scan_pixels(h, w)
        flops, eager = scan_flops(models["eager"], image)  # eager's untimed round
        labels = {
            "eager": eager,
            **{side: predict_label_map(models[side], image, OVERLAP, BATCH, False, "cpu") for side in ("fp32", "int8")},
        }
        cores: dict[str, list[float]] = {side: [] for side in models}

        def timed(side: str):
            def once() -> float:
                with common.Stopwatch() as watch:
                    predict_label_map(models[side], image, OVERLAP, BATCH, False, "cpu")
                cores[side].append(round(watch.cores, 2))
                return watch.wall

            return once

        before = common.load()
        runs = common.interleaved({side: timed(side) for side in models}, s.repeats)
        med = {side: common.median(v) for side, v in runs.items()}
        peak = peak_flops(1024 if quick else 2048)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    limit = flops / peak
    agree = {side: float((labels[side] == labels["eager"]).mean()) for side in ("fp32", "int8")}
    validation = int8.get("validation")
    cost = (
        {k: validation[k] for k in ("fp32_miou", "int8_miou", "loss_points", "num_images")}
        if validation
        else "not measured (quick: untrained network)"
    )
    shared = {
        "runs_s": runs,
        "cores_used": cores,
        "torch_threads": torch.get_num_threads(),
        "scan": [w, h],
        "load_before": before,
        "load_after": common.load(),
    }
    title = f"serve one {w:,} x {h:,} scan on CPU"
    return [
        common.row(
            NAME_FP32,
            f"{title}: ONNX Runtime fp32",
            med["fp32"],
            "s",
            med["eager"],
            "PyTorch eager, same model and path",
            med["eager"] / med["fp32"],
            "x",
            f">= {BAR_FP32}x",
            med["eager"] / med["fp32"] >= BAR_FP32,
            quick,
            {**shared, "labels_agree_with_eager": agree["fp32"]},
        ),
        common.row(
            NAME_INT8,
            f"{title}: ONNX Runtime int8 (QDQ, per-channel)",
            med["int8"],
            "s",
            med["fp32"],
            "ONNX Runtime fp32",
            med["fp32"] / med["int8"],
            "x",
            f">= {BAR_INT8}x",
            med["fp32"] / med["int8"] >= BAR_INT8,
            quick,
            {**shared, "validation_miou_cost": cost, "labels_agree_with_eager": agree["int8"]},
        ),
        common.row(
            NAME_LIMIT,
            f"{title}: ONNX Runtime fp32 against the physical limit",
            med["fp32"],
            "s",
            limit,
            f"{flops / 1e9:,.1f} GFLOP per scan / measured peak {peak / 1e9:,.1f} GFLOP/s",
            med["fp32"] / limit,
            "x",
            common.REPORTED,
            None,
            quick,
            {
                **shared,
                "scan_gflop": flops / 1e9,
                "peak_gflop_per_s": peak / 1e9,
                "peak_convention": "best of 5 float32 n x n torch.mm, 2 n^3 FLOPs, torch's thread count",
                "limit_s": limit,
                "fp32_share_of_peak": limit / med["fp32"],
                "int8_s": med["int8"],
            },
        ),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--int8-choices", action="store_true", help="the per-tile sweep of CHOICES (docstring)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="encoder presets (conf/encoder)")
    parser.add_argument("--choices", default=",".join(CHOICES), help="choices of CHOICES")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, both sides")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved timed rounds")
    args = parser.parse_args()
    if args.int8_choices:
        presets = sorted(p.stem for p in (CONF / "encoder").glob("*.yaml") if p.stem != "custom")
        unknown = sorted(set(args.presets.split(",")) - set(presets)) + sorted(
            set(args.choices.split(",")) - set(CHOICES)
        )
        if unknown:
            parser.error(
                f"unknown {', '.join(unknown)}: --presets from {', '.join(presets)}; --choices from {', '.join(CHOICES)}"
            )
        rows = int8_choices(args.presets.split(","), args.choices.split(","), args.threads, args.rounds, args.quick)
    else:
        rows = run(args.quick)
    for r in rows:
        print(json.dumps(r, indent=1, default=str))
