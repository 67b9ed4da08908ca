"""Export a checkpoint as ONNX and/or TorchScript with a model card and a parity check: `export_model(...)`.

uint8 images in, float32 logits out, normalisation inside the graph; the card beside the file carries what
predict and evaluate need. `python -m poc59.export` is its command.

`quantize=int8` adds `model.int8.onnx`: ONNX Runtime's static quantization (QDQ, per-channel weights),
calibrated on the run's training images, with its validation mIoU against the fp32 model's recorded in the
card; an int8 model that loses more than `int8_tolerance` mIoU points is refused (nothing written) unless
`allow_int8_loss`. The run's images come from the caller (`RunImages`): this package knows no data.

Speed: on CPUs without VNNI (this project's AMD EPYC, AVX2 only) int8 is smaller but not 1.8x faster (issue
32's aim). Measured 2026-12-07 per tile, bench/README.md "int8 on an AVX2 CPU without VNNI": ONNX Runtime's
u8 x s8 kernels alone reach at most ~1.9x fp32 (a lone MatMul or 3x3 Conv, 1 thread; 1.1-1.8x at 2 threads),
and every network also spends 14-47 % of its fp32 time where int8 gains nothing (depthwise and grouped
convolutions aside: LayerNorm, GELU, softmax, transposes, resizing), which caps it at 1.3-1.7x before the
quantize/dequantize steps are paid. Measured: the ConvNeXt-Tiny, MiT-B3 and MaxViT-Tiny U-Nets at 384 px
0.9-1.6x (ConvNeXt's best, 1.63x, near its own ceiling of 1.67x), the quickstart's RegNetX-400MF FPN 0.8-1.3x, whichever choice (all ops, MatMul only, MatMul and
dense convolutions, dynamic, QOperator, s8 activations, per-tensor or full-range weights; a graph optimization
level below ONNX Runtime's default only slows fp32 down more). No choice beat the defaults below by more than
the noise for every network, so they stay the accurate ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from poc59.analysis.scores import scores
from poc59.artifacts.ensemble import ensemble_name, load_ensemble, members_of
from poc59.artifacts.exported import INSTALL_HINT, INT8_SUFFIX, OnnxSegmenter, card_path, jit_load
from poc59.artifacts.load import locate_checkpoint
from poc59.artifacts.trained import TrainedModel, is_runs_best, load_checkpoint, scored_this
from poc59.core.atomic import write_bytes, write_json
from poc59.core.provenance import git_commit
from poc59.core.publish import temporary
from poc59.metrics import registry
from poc59.model.factory import count_parameters

log = logging.getLogger("poc59.export")


__all__ = ["ExportError", "RunImages", "calibration_reader", "export_model", "quantize_int8"]


SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


FORMATS = {"onnx": ("onnx",), "torchscript": ("torchscript",), "both": ("onnx", "torchscript")}


EXPORTERS = ("trace", "dynamo")


INPUT, OUTPUT = "images", "logits"


PARITY_CONVENTION = (
    "passed = label agreement (share of pixels whose argmax class is the same) >= min_agreement at every size, and "
    "max |exported - PyTorch| over all float32 logits <= tolerance x max |PyTorch logits| (relative: float32 "
    "rounding grows with the logits' scale); seeded uniform-noise uint8 images, CPU"
)

# What users get from an exported model is its labels (argmax) and, through softmax, its probabilities: parity is
# judged on those, not on an absolute logits difference, which float32 rounding alone exceeds once logits are
# large (a tiny model agreeing on 100 % of labels differed by 3.8e-4). A wrong graph (a missing normalisation,
# a transposed or wrongly resized tensor) changes labels wholesale and logits by their own magnitude.
DEFAULT_TOLERANCE = 1e-3
DEFAULT_MIN_AGREEMENT = 0.999

# ONNX opsets each exporter writes (torch.onnx's own range for it: the TorchScript-based exporter up to 20,
# torch.export's from 18).
OPSETS = {"trace": (9, 20), "dynamo": (18, 23)}


QUANTIZE = ("none", "int8")

# Calibration sets each activation's int8 range from its min and max over these images (ONNX Runtime's MinMax):
# 64 training images at the training size cover a run's classes and colours; more seldom moves the ranges.
DEFAULT_CALIBRATION_IMAGES = 64

# The int8 model's validation mIoU may be this many points (of 100) below the fp32 model's: under twice the
# spread of the quickstart's val/mIoU over seeds and thread counts (about 10.9 % to 11.5 %, README Quickstart),
# so an int8 model within it scores like another fp32 run of the same recipe; a larger loss points at the
# calibration or at a network int8 does not suit.
DEFAULT_INT8_TOLERANCE = 1.0

# QDQ: the format ONNX Runtime recommends; its CPU provider fuses each QuantizeLinear/DequantizeLinear pair
# around a Conv into one integer kernel at load, and the same file runs on the other providers. Per-channel
# weight scales: one scale per output channel keeps convolutions whose channels differ in range (depthwise,
# grouped) accurate. Reduced range (7-bit weights): without AVX-512 VNNI (laptops, this project's AMD EPYC
# with AVX2 only) ONNX Runtime multiplies u8 x s8 with VPMADDUBSW, whose 16-bit sums saturate on 8-bit
# weights; on random weights the labels agreed with fp32 on 95 % of pixels with it, 86 % without.
INT8_SETTINGS = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "per_channel": True,
    "reduce_range": True,
    "activations": "uint8 (asymmetric)",
    "weights": "int8 (symmetric)",
    "calibration_method": "MinMax",
}

INT8_CONVENTION = (
    "mIoU of the fp32 and the int8 ONNX models on the run's validation images (split.json), fed as training "
    "validation feeds them, same convention as val/mIoU (poc59.metrics); loss_points = 100 x (fp32 - int8)"
)


class RunImages(Protocol):
    """A run's images for an int8 export (the caller's: poc59.evaluation.calibration opens them)."""

    def calibration(self, n: int) -> Iterator[np.ndarray]:
        """uint8 [B, 3, H, W] batches of `n` of the run's training images, as training validation feeds them."""

    def statistics(self, segmenter: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every registered statistic of each validation image ({key: [N, *shape]}) as `segmenter` labels it."""

    def describe(self) -> dict[str, Any]:
        """What the calibration and scoring used (split file, image counts), for the card."""


class Exported(NamedTuple):
    """What an export wrote: the folder, and the model card (whose `files` name the model files in it)."""

    folder: Path
    card: dict[str, Any]

    def paths(self) -> list[Path]:
        """Every file written: the model files, then the card."""
        return [self.folder / name for name in self.card["files"].values()] + [card_path(self.folder / "model")]


class ExportError(ValueError):
    """Bad arguments or a missing dependency (the message names the fix)."""


def unsupported_advice(err: Exception, network: str, opset: int, exporter: str) -> str:
    """The refusal of an operator `exporter` cannot write at `opset`: the opset that has it when the exporter
    writes that one (torch names it: "added in version N"), else the other exporter."""
    found = re.search(r"added in version (\d+)", str(err))
    high = OPSETS[exporter][1]
    if found and opset < int(found.group(1)) <= high:
        fix = f"pass opset={found.group(1)} (exporter={exporter} writes up to {high})"
    else:
        low, top = OPSETS["dynamo"]
        fix = f"pass exporter=dynamo opset={max(low, min(opset, top))} (it writes opsets {low} to {top})"
    return (
        f"opset={opset}: {network} uses an operator exporter={exporter} cannot write at ONNX opset {opset} "
        f"({str(err).splitlines()[0][:200]}); {fix}"
    )


def to_onnx(segmenter: torch.nn.Module, example: torch.Tensor, opset: int, exporter: str = "trace") -> bytes:
    """ONNX bytes with dynamic batch, height and width."""
    if exporter == "dynamo":
        dynamic = torch.export.Dim.DYNAMIC
        program = torch.onnx.export(
            segmenter,
            (example,),
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={INPUT: {0: dynamic, 2: dynamic, 3: dynamic}},
            external_data=False,
        )
        return program.model_proto.SerializeToString()
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on Python values and the exporter's deprecation notice
        torch.onnx.export(
            segmenter,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: axes, OUTPUT: axes},
        )
    return buffer.getvalue()


def to_torchscript(segmenter: torch.nn.Module, example: torch.Tensor) -> bytes:
    """A traced TorchScript module (sizes flow through the trace; the parity check proves it at another size)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still saves and loads
        torch.jit.save(torch.jit.trace(segmenter, example, check_trace=False), buffer)
    return buffer.getvalue()


def parity_inputs(image_size: int, multiple: int, seed: int = 0) -> list[torch.Tensor]:
    """Two batches: the training size (batch 2) and a non-square valid size (batch 1, one multiple wider)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, image_size, image_size), (1, 3, image_size, image_size + multiple)]
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen) for shape in shapes]


def parity(expected: list[torch.Tensor], exported: Any, inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Per input: the max absolute logits difference of `exported` against the PyTorch logits, that difference
    relative to the largest PyTorch logit magnitude, and the label agreement."""
    rows = []
    with torch.no_grad():
        for images, want in zip(inputs, expected, strict=True):
            got = exported(images)
            if got.shape != want.shape:
                raise ExportError(
                    f"exported model returns {tuple(got.shape)} for {tuple(images.shape)}, PyTorch {tuple(want.shape)}"
                )
            diff = float((got - want).abs().max())
            scale = float(want.abs().max())
            rows.append(
                {
                    "input_shape": list(images.shape),
                    "max_abs_diff": diff,
                    "max_abs_logit": scale,
                    "max_rel_diff": diff / scale if scale > 0 else diff,
                    "label_agreement": float((got.argmax(1) == want.argmax(1)).float().mean()),
                }
            )
    return rows


def passes(row: dict[str, Any], tolerance: float, min_agreement: float) -> bool:
    """Whether one parity row (see `parity`) is within `tolerance` (relative) and `min_agreement` (labels)."""
    return row["max_rel_diff"] <= tolerance and row["label_agreement"] >= min_agreement


def _load_exported(fmt: str, path: Path) -> Any:
    """The exported file as users run it, on CPU (no card needed yet)."""
    if fmt == "onnx":
        import onnxruntime

        return OnnxSegmenter(onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    return jit_load(path, "cpu")


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over uint8 batches (its base class is imported with onnxruntime)."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch)}


def calibration_reader(batches: Iterable[np.ndarray]) -> Any:
    """An ONNX Runtime CalibrationDataReader feeding the exported model's input the uint8 `batches` in turn."""
    from onnxruntime.quantization import CalibrationDataReader

    return type("Reader", (_Calibration, CalibrationDataReader), {})(batches)


def quantize_int8(fp32: Path, out: Path, batches: Iterable[np.ndarray]) -> None:
    """Write `out`, the int8 model of the fp32 ONNX model `fp32`, calibrated on `batches` (INT8_SETTINGS)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = calibration_reader(batches)
    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    # ONNX Runtime's own pre-processing (constant folding, shapes) before quantizing, as its guide advises;
    # symbolic shape inference is skipped: height and width are dynamic and it gains nothing for convolutions
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # per-tensor notices on the root logger
    try:
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=INT8_SETTINGS["per_channel"],
            reduce_range=INT8_SETTINGS["reduce_range"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().disabled = was
        prepared.unlink(missing_ok=True)


def int8_cost(fp32: dict[str, torch.Tensor], int8: dict[str, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """The validation scores of both models from their per-image statistics (`RunImages.statistics`): the
    headline metric (mIoU) of each, the points the int8 model loses, and each class's IoU for both."""
    head = registry.headline().key
    got = {
        name: scores({k: v.sum(0) for k, v in stats.items()}, names) for name, stats in (("fp32", fp32), ("int8", int8))
    }
    return {
        f"fp32_{head}": got["fp32"][head],
        f"int8_{head}": got["int8"][head],
        "loss_points": 100 * (got["fp32"][head] - got["int8"][head]),
        "per_class_iou": {n: {p: got[p]["per_class"][n].get("iou") for p in got} for n in names},
        "num_images": int(next(iter(fp32.values())).shape[0]),
        "convention": INT8_CONVENTION,
    }


def _quantized(
    model: TrainedModel,
    fp32: Path,
    images: RunImages,
    calibration_images: int,
    tolerance: float,
    allow_loss: bool,
) -> dict[str, Any]:
    """Quantize `fp32` beside itself (model.int8.onnx), score both, and refuse a loss beyond `tolerance`."""
    int8 = fp32.with_name(fp32.stem + INT8_SUFFIX)
    log.info("Quantizing %s to int8, calibrated on %d training images", fp32.name, calibration_images)
    quantize_int8(fp32, int8, images.calibration(calibration_images))
    log.info("Scoring the fp32 and the int8 model on the validation images")
    stats = [images.statistics(_load_exported("onnx", path)) for path in (fp32, int8)]
    cost = int8_cost(*stats, list(model.classes.names))
    head = registry.headline()
    record = {
        "file": int8.name,
        **INT8_SETTINGS,
        "calibration_images": calibration_images,
        "data": images.describe(),
        "validation": cost,
        "tolerance_points": tolerance,
        "allow_int8_loss": allow_loss,
    }
    if cost["loss_points"] > tolerance:
        found = (
            f"quantize=int8: the int8 model's validation {head.name} is {100 * cost[f'int8_{head.key}']:.2f} % "
            f"against the fp32 model's {100 * cost[f'fp32_{head.key}']:.2f} % ({cost['loss_points']:.2f} points "
            f"lost, more than int8_tolerance={tolerance:g})"
        )
        if not allow_loss:
            raise ExportError(
                f"{found}; nothing was written. Export without it (quantize=none), or keep it with its loss: "
                "add allow_int8_loss=true (or a larger int8_tolerance=)"
            )
        log.warning("%s: written as asked (allow_int8_loss=true; the card records it)", found)
    return record


def run_metrics(model: TrainedModel, run: Path | None) -> dict[str, Any]:
    """The run's scores of this very checkpoint: summary.json's registered metrics at the best epoch (when
    this is the run's best, `best_checkpoint`) and the evaluations that scored this file (their recorded
    checkpoint identity), each with every registered split metric and its interval."""
    out: dict[str, Any] = {}
    if run is None:
        return out
    summary_file = run / "summary.json"
    if summary_file.is_file():
        s = json.loads(summary_file.read_text())
        if is_runs_best(model, run, s):
            keys = (
                "monitor",
                *(f"val/{m.name}" for m in registry.METRICS.values()),  # the registered metrics (poc59.metrics)
                f"baseline_val/{registry.headline().name}",
                "all_clean_baseline_val/mIoU",  # its name in summaries written before 2026-12-03
                "metric_convention",
                "best_epoch",
                "epochs_run",
            )
            out["training"] = {"file": str(summary_file), **{k: s[k] for k in keys if k in s}}
    evaluations = []
    for file in sorted((run / "evaluation").glob("*/metrics.json")):
        m = json.loads(file.read_text())
        if scored_this(m, model.source, model.extra.get("epoch")):
            keys = ("split", "mode", "num_images", "metric_convention", "miou_legacy_convention")
            keys += tuple(k for m in registry.split_metrics() for k in (m.key, f"{m.key}_ci"))  # poc59.metrics
            evaluations.append({"file": str(file), **{k: m[k] for k in keys if k in m}})
    if evaluations:
        out["evaluation"] = evaluations
    return out


def model_card(
    model: TrainedModel,
    run: Path | None,
    files: dict[str, str],
    opset: int | None,
    exporter: str,
    checks: dict[str, Any] | None,
) -> dict[str, Any]:
    """The model's ModelCard (poc59.artifacts.card) with what an exported file adds: its files, input and
    output, the run's metrics of this very checkpoint, where it came from, the export and its parity."""
    c = model.classes.num_classes
    card = model.card.with_metrics(**run_metrics(model, run))
    card = card.with_provenance(poc59=metadata.version("poc59"), commit=git_commit(), torch=torch.__version__)
    return {
        **card.to_dict(),
        "files": files,
        "input": {
            "name": INPUT,
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0, 255],
            "dynamic": ["batch", "height", "width"],
            "multiple_of": card.input_multiple,
            "normalization": "inside the model: (x - 255 * mean) / (255 * std), mean and std below on the 0-1 scale",
        },
        "output": {
            "name": OUTPUT,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": c,
            "meaning": f"logits of the {c} classes (argmax = class id; softmax over dim 1 = probabilities)",
        },
        "tile_size": model.image_size,
        "encoder": {
            "name": model.network["name"],
            "decoder": model.network.get("decoder"),
            "family": card.family,
            "parameters": count_parameters(model.segmenter),
        },
        "source": _source(model, run),
        "export": {
            "opset": opset,
            "onnx_exporter": exporter if opset is not None else None,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "parity": checks,
    }


def _source(model: TrainedModel, run: Path | None) -> dict[str, Any]:
    """The checkpoint exported (its hash, epoch, run), or an ensemble's members (provenance.ensemble)."""
    if "ensemble" in model.card.provenance:
        files = [m["checkpoint"] for m in model.card.provenance["ensemble"]["members"]]
        return {"ensemble": files, "sha256": [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]}
    return {
        "checkpoint": str(model.source),
        "sha256": hashlib.sha256(model.source.read_bytes()).hexdigest(),
        "epoch": model.extra.get("epoch"),
        "global_step": model.extra.get("global_step"),
        "run_dir": str(run) if run else None,
    }


def _require(formats: tuple[str, ...], exporter: str) -> None:
    """Fail before any work when an optional package is missing."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else []) if "onnx" in formats else []
    for module in needed:
        try:
            __import__(module)
        except ImportError:
            raise ExportError(f"format=onnx needs {module}, part of the export extra: {INSTALL_HINT}") from None


def locate(ckpt: str | Path | None, run_dir: str | Path | None) -> tuple[Path, Path | None]:
    """(checkpoint, run folder or None) from ckpt= or run_dir= (-> its checkpoints/best.ckpt)."""
    if ckpt is None and run_dir is None:
        raise ExportError(
            "name what to export: ckpt=<file.ckpt> or run_dir=<run folder> (uses its checkpoints/best.ckpt)"
        )
    return locate_checkpoint(run_dir, ckpt, ExportError)


def export_model(
    ckpt: str | Path | list | None = None,
    run_dir: str | Path | None = None,
    run_dirs: list | None = None,
    sweep: str | Path | None = None,
    out: str | Path | None = None,
    format: str = "both",  # noqa: A002 (the command-line key)
    opset: int = 18,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    exporter: str = "trace",
    quantize: str = "none",
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    int8_tolerance: float = DEFAULT_INT8_TOLERANCE,
    allow_int8_loss: bool = False,
    run_images: Callable[[TrainedModel, Path], RunImages] | None = None,
) -> Exported:
    """Export one checkpoint, or an ensemble (ckpt=[...], run_dirs=[...], sweep=: poc59.artifacts.ensemble) as
    one graph; writes model.onnx / model.pt and model.card.json into `out`.

    Parity (`check`) passes when, at the training size and a non-square size, the exported labels agree with
    PyTorch's on at least `min_agreement` of the pixels and the largest logits difference is at most
    `tolerance` times the largest logit magnitude (PARITY_CONVENTION).

    `quantize="int8"` also writes model.int8.onnx (`quantize_int8`), calibrated on `calibration_images` of the
    run's training images and scored against the fp32 model on its validation images, both given by
    `run_images(model, run folder)`; a loss beyond `int8_tolerance` mIoU points raises ExportError unless
    `allow_int8_loss`. Every file is built in a temporary folder beside `out` and moved in when all are
    written (the card last): a refused or failed export leaves `out` as it was."""
    if format not in FORMATS:
        raise ExportError(f"format={format}: choose one of {', '.join(FORMATS)}")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter={exporter}: choose one of {', '.join(EXPORTERS)}")
    if not tolerance >= 0:  # NaN too: nothing would ever pass, or fail
        raise ExportError(
            f"tolerance={tolerance}: the largest logits difference accepted, relative to the largest logit "
            f"magnitude: a number >= 0 (default {DEFAULT_TOLERANCE:g})"
        )
    if not 0 <= min_agreement <= 1:
        raise ExportError(
            f"min_agreement={min_agreement}: the share of pixels whose label must agree, between 0 and 1 "
            f"(default {DEFAULT_MIN_AGREEMENT:g})"
        )
    low, high = OPSETS[exporter]
    if "onnx" in FORMATS[format] and not low <= opset <= high:
        raise ExportError(
            f"opset={opset}: exporter={exporter} writes ONNX opsets {low} to {high}; pass opset= in that range "
            "(default 18)"
        )
    formats = FORMATS[format]
    _check_quantize(quantize, formats, calibration_images, int8_tolerance, ckpt, run_dirs, sweep)
    _require(formats, exporter)
    torch.set_flush_denormal(True)  # as training did: the same arithmetic, and 3-10x faster on CPU
    members = members_of(ckpt, run_dirs, sweep)
    if members is None:
        ckpt_path, run = locate(ckpt, run_dir)
        model = load_checkpoint(ckpt_path, "cpu")
        run = run or model.run_dir
        default = run / "export" if run else ckpt_path.parent / f"{ckpt_path.stem}-export"
    else:
        model, ckpt_path, run = load_ensemble(members, "cpu"), members[0], None
        default = Path(os.path.commonpath([m.parent for m in members])) / f"{ensemble_name(members)}-export"
    if quantize == "int8":
        _check_run(run, ckpt_path)
        if run_images is None:
            raise TypeError("quantize=int8 needs run_images: the caller opens the run's images")
    folder = Path(out).expanduser().resolve() if out else default
    segmenter = model.segmenter.eval()
    inputs = parity_inputs(model.image_size, model.card.input_multiple)
    example = inputs[1][:1].expand(2, -1, -1, -1).contiguous()  # non-square, batch 2: nothing to specialise on
    with torch.no_grad():
        expected = [segmenter(images) for images in inputs] if check else []

    files, checks = {}, {}
    stage = temporary(folder)
    try:
        for fmt in formats:
            path = stage / f"model{SUFFIXES[fmt]}"
            log.info("Exporting %s to %s", ckpt_path, folder / path.name)
            try:
                data = (
                    to_onnx(segmenter, example, opset, exporter)
                    if fmt == "onnx"
                    else to_torchscript(segmenter, example)
                )
            except torch.onnx.errors.UnsupportedOperatorError as err:  # other exporter errors are bugs (exit 1)
                raise ExportError(unsupported_advice(err, model.network["name"], opset, exporter)) from None
            write_bytes(path, data)
            files[fmt] = path.name
            if check:
                rows = parity(expected, _load_exported(fmt, path), inputs)
                checks[fmt] = {
                    "sizes": rows,
                    "max_abs_diff": max(r["max_abs_diff"] for r in rows),
                    "max_rel_diff": max(r["max_rel_diff"] for r in rows),
                    "label_agreement": min(r["label_agreement"] for r in rows),
                    "tolerance": tolerance,
                    "min_agreement": min_agreement,
                    "passed": all(passes(r, tolerance, min_agreement) for r in rows),
                }
        quantization = None
        if quantize == "int8":
            images = run_images(model, run)
            quantization = _quantized(
                model, stage / files["onnx"], images, calibration_images, int8_tolerance, allow_int8_loss
            )
            files["onnx_int8"] = quantization["file"]
        parity_record = {**checks, "convention": PARITY_CONVENTION} if check else None
        card = model_card(model, run, files, opset if "onnx" in formats else None, exporter, parity_record)
        card["quantization"] = {"int8": quantization} if quantization else None
        write_json(card_path(stage / "model"), card)
        _move_in(stage, folder, [*files.values(), card_path(stage / "model").name])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Exported(folder, card)


def _move_in(stage: Path, folder: Path, names: list[str]) -> None:
    """Move the files `names` (the card last) from `stage` into `folder`, each replacing its namesake at
    once; an int8 model of an earlier export goes too when this one has none (its card would not be this one)."""
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / f"model{INT8_SUFFIX}"
    if f"model{INT8_SUFFIX}" not in names and stale.is_file():
        stale.unlink()
    for name in names:
        os.replace(stage / name, folder / name)


def _check_quantize(
    quantize: str,
    formats: tuple[str, ...],
    calibration_images: int,
    tolerance: float,
    ckpt: Any,
    run_dirs: list | None,
    sweep: Any,
) -> None:
    """Refuse int8 settings that cannot work, before any model or image is read."""
    if quantize not in QUANTIZE:
        raise ExportError(f"quantize={quantize}: choose one of {', '.join(QUANTIZE)} (default none)")
    if quantize == "none":
        return
    if "onnx" not in formats:
        raise ExportError("quantize=int8 quantizes the ONNX model: add format=onnx (or format=both)")
    if isinstance(ckpt, list) or run_dirs is not None or sweep is not None:
        raise ExportError(
            "quantize=int8 is calibrated on one run's training images: export an ensemble without it "
            "(quantize=none), or quantize one run (run_dir=<run folder>)"
        )
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise ExportError(
            f"calibration_images={calibration_images}: the number of training images int8 calibration sees, "
            f"a whole number >= 1 (default {DEFAULT_CALIBRATION_IMAGES})"
        )
    if not tolerance >= 0:  # NaN too
        raise ExportError(
            f"int8_tolerance={tolerance}: the validation mIoU points the int8 model may lose against the fp32 "
            f"model, a number >= 0 (default {DEFAULT_INT8_TOLERANCE:g})"
        )


def _check_run(run: Path | None, ckpt: Path) -> None:
    """int8 calibration and scoring read the run's images: the checkpoint must sit in its run folder with its split.json."""
    if run is None:
        raise ExportError(
            f"quantize=int8: {ckpt} is not inside a run folder, so its training and validation images are "
            "unknown: pass run_dir=<the run folder that trained it>, or export without quantize=int8"
        )
    if not (run / "split.json").is_file():
        raise ExportError(
            f"quantize=int8: {run / 'split.json'} not found: the run's record of its training and validation "
            "images, which int8 calibration and scoring read. Restore it from a copy of the run, or export "
            "without quantize=int8"
        )
