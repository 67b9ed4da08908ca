"""The training geometry at prediction: resize/pad round trips to the original size, crop slides; all exact TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import write_pair
from inference.standins import Constant, LocalConv, model
from poc59.data.decoding import load_pair
from poc59.data.sources import discover_pairs
from poc59.inference.image import (
    ArrayImage,
    logit_bands,
    predict_label_map,
    row_upsampler,
)
from poc59.inference.tiling import predict_logits


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


class Recorder(LocalConv):
    """LocalConv that keeps the inputs it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return super().forward(x)


@pytest.mark.parametrize("policy", ["resize", "pad"])
@pytest.mark.parametrize("shape", [(50, 90), (90, 50), (33, 33)])
def test_resize_and_pad_see_the_training_canvas_and_return_the_original_size(tmp_path, policy, shape):
    image = _rgb(*shape)
    write_pair(tmp_path, "a", image, np.zeros(shape, np.uint8))
    canvas, _, (ch, cw) = load_pair(discover_pairs(tmp_path)[0][0], 32, 2, 255, policy)  # what training fed the model
    net = Recorder()
    m = model(net, policy, 32, classes=3)
    bands = [(y, b.clone()) for y, b in logit_bands(m, ArrayImage(image), band_rows=16)]  # kept: copies
    (seen,) = net.seen
    assert torch.equal(seen[0], torch.from_numpy(canvas).permute(2, 0, 1))
    logits = torch.cat([b for _, b in bands], dim=1)
    assert logits.shape == (3, *shape) and [y for y, _ in bands] == list(range(0, shape[0], 16))
    # = bilinear upsampling of the content's logits (never nearest on labels)
    with torch.no_grad():
        content = net(seen)[0, :, :ch, :cw]
    expect = F.interpolate(content[None], size=shape, mode="bilinear", align_corners=False)[0]
    assert torch.allclose(logits, expect, atol=1e-5)
    labels = predict_label_map(m, image)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert np.array_equal(labels, expect.argmax(0).numpy())


def test_row_upsampler_is_bilinear_interpolation_band_by_band():
    logits = torch.randn(4, 7, 11, generator=torch.Generator().manual_seed(0))
    up = row_upsampler(logits, 50, 37)
    whole = F.interpolate(logits[None], size=(50, 37), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(torch.cat([up(0, 13), up(13, 50)], dim=1), whole, atol=1e-6)


@pytest.mark.parametrize("policy", ["resize", "pad", "crop"])
def test_flip_tta_is_exactly_symmetric_for_every_geometry(policy):
    m = model(LocalConv(seed=5), policy, 32)
    image = _rgb(45, 77, seed=2)
    a = torch.cat([b.clone() for _, b in logit_bands(m, ArrayImage(image), tta=True)], dim=1)
    b = torch.cat(
        [b.clone() for _, b in logit_bands(m, ArrayImage(np.ascontiguousarray(image[:, ::-1])), tta=True)], dim=1
    )
    assert torch.equal(b, a.flip(-1))
    assert np.array_equal(
        predict_label_map(m, image[:, ::-1].copy(), tta=True), predict_label_map(m, image, tta=True)[:, ::-1]
    )


def test_crop_models_slide_over_the_full_image_at_native_scale():
    net = LocalConv()
    m = model(net, "crop", 32)
    image = _rgb(70, 100)
    expect = predict_logits(net, torch.from_numpy(image).permute(2, 0, 1), tile=32, overlap=0.25).argmax(0)
    assert np.array_equal(predict_label_map(m, image, overlap=0.25), expect.numpy())


def test_crop_models_trained_under_max_side_predict_at_the_scale_they_learnt():
    """Training shrank sources to a long side <= max_side: a larger scan is shrunk alike, then mapped back."""
    net = LocalConv(seed=3)
    image = _rgb(70, 100, seed=4)
    capped = model(net, "crop", 32, max_side=50)
    small = np.asarray(Image.fromarray(image).resize((50, 35), Image.BILINEAR, reducing_gap=None))
    logits = predict_logits(net, torch.from_numpy(small.copy()).permute(2, 0, 1), tile=32, overlap=0.25)
    expect = F.interpolate(logits[None], size=(70, 100), mode="bilinear", align_corners=False)[0].argmax(0)
    got = predict_label_map(capped, image, overlap=0.25)
    assert (
        got.shape == (70, 100) and np.mean(got == expect.numpy()) > 0.999
    )  # band-wise upsampling: float rounding only
    # a scan already within max_side is predicted at its own scale, as training kept it
    assert np.array_equal(
        predict_label_map(model(net, "crop", 32, max_side=200), image), predict_label_map(model(net, "crop", 32), image)
    )
    # flip TTA stays symmetric through the shrink and the upsampling
    tta = lambda x: predict_label_map(capped, x, tta=True)
    assert np.array_equal(tta(np.ascontiguousarray(image[:, ::-1])), tta(image)[:, ::-1])


def test_constant_model_gives_one_label_everywhere_at_any_size():
    for policy in ("resize", "pad", "crop"):
        m = model(Constant([0.0, 2.0, 1.0]), policy, 32)
        assert (predict_label_map(m, _rgb(41, 67)) == 1).all()


def test_bad_inputs_are_refused_clearly():
    m = model(LocalConv(), "crop", 32)
    with pytest.raises(ValueError, match=r"uint8 RGB \[H, W, 3\]"):
        predict_label_map(m, np.zeros((10, 10), np.uint8))
    bad = model(LocalConv(), "stretch", 32)
    with pytest.raises(ValueError, match="unknown geometry policy 'stretch'"):
        predict_label_map(bad, _rgb(10, 10))


def test_a_missing_or_unknown_device_is_a_clear_error(monkeypatch):
    from poc59.core.device import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="device=tpu: choose device=auto, device=cpu or device=cuda"):
        resolve_device("tpu")
    with pytest.raises(DeviceError, match="device=cuda:1: no CUDA device here; use device=cpu"):
        resolve_device("cuda:1")
