"""int8 export (`python -m poc59.export ... quantize=int8`): the int8 model beside the fp32 one, calibrated on the
run's training images, its validation mIoU against the fp32 model's in the card, a loss beyond the tolerance
refused with nothing written, and the settings checked before anything is read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from omegaconf import OmegaConf
from PIL import Image

from poc59.artifacts.load import load_model
from poc59.evaluation.run import evaluate_run
from poc59.export import main
from poc59.inference.image import predict_label_map


@pytest.fixture(scope="module")
def int8_export(trained_run, tmp_path_factory):
    """The session's tiny run exported with quantize=int8 (its defaults) through the command line."""
    out = tmp_path_factory.mktemp("int8") / "exported"
    assert main([f"run_dir={trained_run}", f"out={out}", "format=onnx", "quantize=int8"]) == 0
    return trained_run, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_int8_model_is_written_beside_the_fp32_one_with_its_validation_cost(int8_export, tmp_path):
    run, out = int8_export
    assert sorted(p.name for p in out.iterdir()) == ["model.card.json", "model.int8.onnx", "model.onnx"]
    assert not list(out.parent.glob(".exported.tmp-*"))  # the staging folder is gone
    card = json.loads((out / "model.card.json").read_text())
    assert card["files"] == {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx"}

    # a real static int8 model: QDQ nodes around int8 weights, a fraction of the fp32 file
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size

    q = card["quantization"]["int8"]
    split = json.loads((run / "split.json").read_text())
    assert q["format"] == "QDQ" and q["per_channel"] is True and q["calibration_images"] == 64
    assert q["data"]["calibrated_on"] == min(64, len(split["train"])) == 24  # the run has 24 training images
    assert q["data"]["split_file"] == str(run / "split.json") and q["tolerance_points"] == 1.0
    v = q["validation"]
    assert v["num_images"] == q["data"]["validation_images"] == len(split["val"])
    # the fp32 model's validation mIoU is the run's own val/mIoU: same images, same convention
    summary = json.loads((run / "summary.json").read_text())
    assert v["fp32_miou"] == pytest.approx(summary["val/mIoU"], abs=1e-9)
    assert v["loss_points"] == pytest.approx(100 * (v["fp32_miou"] - v["int8_miou"]))
    # the int8 model loads through its card (model.int8.onnx -> model.card.json) and evaluate scores it alike
    assert load_model(out / "model.int8.onnx").extra["format"] == "onnx_int8"
    scored = evaluate_run(run_dir=run, ckpt=out / "model.int8.onnx", out=tmp_path / "ev", pictures=False, resamples=1)
    assert scored["miou"] == pytest.approx(v["int8_miou"], abs=1e-12)
    assert set(v["per_class_iou"]) == set(card["classes"]["names"])

    # exported again without int8: the earlier int8 model goes (the new card does not describe it)
    assert main([f"run_dir={run}", f"out={out}", "format=onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.card.json", "model.onnx"]


def _self_labelled(run: Path, tmp: Path) -> Path:
    """A copy of `run` and its data whose validation masks are the fp32 model's own labels (predict's path):
    the fp32 model scores near 100 % there, so any label the int8 model changes is a real, measured loss."""
    cfg = OmegaConf.load(run / "config.yaml")
    data = Path(shutil.copytree(cfg.data.root, tmp / "data"))
    copy = Path(shutil.copytree(run, tmp / "run"))
    cfg.data.root, cfg.data.synthetic = str(data), None
    OmegaConf.save(cfg, copy / "config.yaml")
    model = load_model(copy / "checkpoints" / "best.ckpt")
    for sample in json.loads((copy / "split.json").read_text())["val"]:
        image = np.asarray(Image.open(next((data / "images").glob(f"{sample}.*"))).convert("RGB"))
        Image.fromarray(predict_label_map(model, image, device="cpu"), "L").save(data / "annotations" / f"{sample}.png")
    return copy


@pytest.mark.slow
def test_an_int8_loss_beyond_the_tolerance_is_refused_with_nothing_written(trained_run, tmp_path, caplog):
    run = _self_labelled(trained_run, tmp_path)
    first = tmp_path / "first"
    assert main([f"run_dir={run}", f"out={first}", "quantize=int8", "int8_tolerance=0", "allow_int8_loss=true"]) == 0
    v = json.loads((first / "model.card.json").read_text())["quantization"]["int8"]["validation"]
    assert v["fp32_miou"] > 0.5 and v["loss_points"] > 0, v  # int8 changed some of the fp32 model's labels
    assert "written as asked (allow_int8_loss=true" in caplog.text

    # an earlier export in the folder: a refusal leaves it exactly as it was, and no staging folder behind
    out = Path(shutil.copytree(first, tmp_path / "out"))
    before = _snapshot(out)
    tolerance = v["loss_points"] / 2
    caplog.clear()
    assert main([f"run_dir={run}", f"out={out}", "quantize=int8", f"int8_tolerance={tolerance}"]) == 2
    said = caplog.messages[-1]
    assert said.startswith("quantize=int8: the int8 model's validation mIoU is ") and "nothing was written" in said
    assert f"int8_tolerance={tolerance:g}" in said and "add allow_int8_loss=true" in said
    assert "Traceback" not in caplog.text
    assert _snapshot(out) == before and not list(tmp_path.glob(".out.tmp-*"))

    # the advice, pasted
    assert (
        main([f"run_dir={run}", f"out={out}", "quantize=int8", f"int8_tolerance={tolerance}", "allow_int8_loss=true"])
        == 0
    )
    q = json.loads((out / "model.card.json").read_text())["quantization"]["int8"]
    assert q["allow_int8_loss"] is True and q["validation"]["loss_points"] > q["tolerance_points"] == tolerance


def test_int8_settings_are_refused_before_anything_is_read(trained_run, tmp_path, caplog):
    out = tmp_path / "x"
    cases = {
        "quantize=int4": "quantize=int4: choose one of none, int8",
        "format=torchscript quantize=int8": "quantize=int8 quantizes the ONNX model: add format=onnx",
        "quantize=int8 calibration_images=0": "calibration_images=0: the number of training images int8 calibration",
        "quantize=int8 int8_tolerance=-1": "int8_tolerance=-1.0: the validation mIoU points the int8 model may lose",
        f"quantize=int8 run_dirs=[{trained_run},{trained_run}]": "quantize=int8 is calibrated on one run's training",
    }
    for args, message in cases.items():
        assert main([f"run_dir={trained_run}", f"out={out}", *args.split()]) == 2, args
        assert message in caplog.messages[-1], (args, caplog.messages[-1])
    # a checkpoint outside its run folder: no images to calibrate on; its run folder (the advice) is
    loose = Path(shutil.copy(trained_run / "checkpoints" / "best.ckpt", tmp_path / "best.ckpt"))
    assert main([f"ckpt={loose}", f"out={out}", "quantize=int8"]) == 2
    assert "is not inside a run folder" in caplog.messages[-1] and "pass run_dir=<" in caplog.messages[-1]
    no_split = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (no_split / "split.json").unlink()
    assert main([f"run_dir={no_split}", f"out={out}", "quantize=int8"]) == 2
    assert "split.json not found" in caplog.messages[-1] and "Traceback" not in caplog.text
    assert not out.exists() and not list(tmp_path.glob(".x.tmp-*"))
