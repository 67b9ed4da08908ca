"""`python -m poc59.export`: a checkpoint to ONNX and TorchScript, checked against PyTorch, with a model card.

    python -m poc59.export run_dir=outputs/runs/<name>                # its best.ckpt -> <run>/export/
    python -m poc59.export ckpt=model.ckpt out=exported format=onnx   # onnx | torchscript | both

The exported graph is poc59.artifacts.trained.Segmenter: uint8 RGB [B, 3, H, W] (0-255) in,
float32 logits [B, C, H, W] out, normalisation inside; batch, height and width
are dynamic (H and W multiples of the encoder's input multiple). Beside the model,
`model.card.json` holds what the graph cannot: classes, palette, normalisation,
geometry, network, the run's metrics, provenance and the parity check.

Options: opset=18 (9 to 20 with exporter=trace, 18 to 23 with dynamo), check=true
(parity against the PyTorch model at the training size and a non-square size: it
passes when at least min_agreement=0.999 of the pixels get the same label and the
largest logits difference is at most tolerance=1e-3 times the largest logit's
magnitude), exporter=trace|dynamo. `trace` is torch.onnx's TorchScript-based exporter
(dynamo=False): seconds for every preset. `dynamo` is torch.export's (needs
onnxscript): measured on 2 CPU cores it takes about 1 CPU minute for MiT-B3
and did not finish in 6 for MaxViT, so it is opt-in.

quantize=int8 adds model.int8.onnx (needs run_dir= or a checkpoint in its run folder): ONNX
Runtime's static quantization (QDQ, per-channel int8 weights) calibrated on calibration_images=64
of the run's training images (split.json), scored against the fp32 ONNX model on the run's
validation images; it is refused (exit 2, nothing written) when it loses more than
int8_tolerance=1 mIoU point, unless allow_int8_loss=true.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from poc59.core.cli import DONE, PARTIAL, PARTIAL_NOTE, Command, Key, Paths, run_command
from poc59.core.logs import print_titled, results_console

log = logging.getLogger("poc59.export")


def print_parity(card: dict[str, Any], console: Console) -> None:
    from poc59.artifacts.export import SUFFIXES, passes

    parity_record = card.get("parity")
    if not parity_record:
        console.print("Parity check skipped (check=false).")
        return
    entry = next(e for e in parity_record.values() if isinstance(e, dict))
    tolerance, agreement = entry["tolerance"], entry["min_agreement"]
    table = Table(
        title=f"Export parity against the PyTorch model (CPU, float32; labels agreeing >= {100 * agreement:g} %, "
        f"logits difference <= {tolerance:g} x the largest logit)"
    )
    for column in ("format", "input BxCxHxW", "max |logits diff|", "relative", "labels agreeing", "ok"):
        table.add_column(column)
    for fmt in SUFFIXES:
        for row in parity_record.get(fmt, {}).get("sizes", []):
            table.add_row(
                fmt,
                "x".join(map(str, row["input_shape"])),
                f"{row['max_abs_diff']:.2e}",
                f"{row['max_rel_diff']:.2e}",
                f"{100 * row['label_agreement']:.3f} %",
                "yes" if passes(row, tolerance, agreement) else "NO",
            )
    print_titled(console, table)
    console.print(f"({parity_record['convention']})")


def print_int8(card: dict[str, Any], console: Console) -> None:
    """The int8 model's validation cost against the fp32 model, when the export made one."""
    int8 = (card.get("quantization") or {}).get("int8")
    if not int8:
        return
    v = int8["validation"]
    console.print(
        f"int8 ({int8['format']}, per-channel, {int8['data']['calibrated_on']} calibration images): validation "
        f"mIoU {100 * v['int8_miou']:.2f} % against fp32 {100 * v['fp32_miou']:.2f} % on {v['num_images']} images "
        f"({'loses' if v['loss_points'] > 0 else 'gains'} {abs(v['loss_points']):.2f} points; it may lose "
        f"{int8['tolerance_points']:g}: int8_tolerance)",
        highlight=False,
    )


CLI = Command(
    prog="python -m poc59.export",
    summary="A checkpoint to ONNX and TorchScript (uint8 images in, logits out, normalisation inside), checked "
    "against PyTorch, with a model card beside it.",
    examples=(
        "python -m poc59.export run_dir=outputs/runs/<name>                # its best.ckpt -> <run>/export/",
        "python -m poc59.export ckpt=model.ckpt out=exported format=onnx   # onnx | torchscript | both",
        "python -m poc59.export sweep=outputs/sweeps/<cv>                  # the fold ensemble as one model",
    ),
    keys=(
        Key("ckpt", Paths, "the checkpoint to export; [a.ckpt,b.ckpt]: their ensemble, as one graph"),
        Key("run_dir", str, "or a run folder: its checkpoints/best.ckpt"),
        Key("run_dirs", list, "or an ensemble of these runs' best.ckpt (the folds of a cross-validation)"),
        Key("sweep", str, "or an ensemble of the best.ckpt of every finished run of this sweep"),
        Key("out", str, "output folder (default: <run>/export, or <checkpoint name>-export beside it)"),
        Key("format", str, "onnx | torchscript | both"),
        Key("opset", int, "ONNX opset: 9 to 20 with exporter=trace, 18 to 23 with exporter=dynamo"),
        Key("check", bool, "parity against the PyTorch model at the training size and a non-square size"),
        Key(
            "tolerance",
            float,
            "largest logits difference the parity check accepts, relative to the largest logit's magnitude",
        ),
        Key("min_agreement", float, "share of pixels whose exported label must equal PyTorch's (0 to 1)"),
        Key("exporter", str, "trace (torch.onnx, seconds) | dynamo (torch.export: minutes, needs onnxscript)"),
        Key("quantize", str, "none | int8: also model.int8.onnx, calibrated on the run's training images"),
        Key("calibration_images", int, "training images int8 calibration sees (a seeded sample of split.json's)"),
        Key("int8_tolerance", float, "validation mIoU points the int8 model may lose against the fp32 model"),
        Key("allow_int8_loss", bool, "write the int8 model even when it loses more than int8_tolerance"),
    ),
    notes=f"Exit 0 done, 2 a bad setting or model, 1 a bug; {PARTIAL_NOTE}: the parity check failed (the files "
    "are written, the failing format named).",
    fills="poc59.artifacts.export:export_model",
)
USER_ERRORS = (
    "poc59.artifacts.export:ExportError",
    "poc59.artifacts.trained:ModelLoadError",
    "poc59.evaluation.run:EvaluateError",  # the run's data, read for quantize=int8
)


def _export(options: dict[str, Any]) -> int:
    from poc59.artifacts.export import export_model
    from poc59.evaluation.calibration import open_run_images

    exported = export_model(**options, run_images=open_run_images)
    card, console = exported.card, results_console()
    print_parity(card, console)
    print_int8(card, console)
    for path in exported.paths():  # the paths a script reads, one a line
        console.print(str(path), soft_wrap=True, highlight=False)
    failed = [fmt for fmt, entry in (card["parity"] or {}).items() if isinstance(entry, dict) and not entry["passed"]]
    if failed:
        log.error(
            "Parity beyond tolerance for %s: the exported files are written but differ from the checkpoint",
            ", ".join(failed),
        )
        return PARTIAL
    return DONE


def main(argv: list[str] | None = None) -> int:
    return run_command(CLI, argv, _export, USER_ERRORS, log)


if __name__ == "__main__":
    sys.exit(main())
