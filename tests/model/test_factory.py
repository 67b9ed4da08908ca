"""Network construction: presets, decoders, name/size checks, normalisation (no weights, no network)."""

from __future__ import annotations

import pytest
import torch

from poc59.model.encoders import encoder_presets
from poc59.model.factory import (
    DECODERS,
    UnknownEncoderError,
    build_network,
    check_image_size,
    count_parameters,
    normalization,
)

NUM_CLASSES = 16


@pytest.fixture(scope="module")
def presets() -> dict:
    return encoder_presets()


def _forward(net: torch.nn.Module, batch: int, size: int) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(batch, 3, size, size))


def _build(preset: dict, **overrides) -> torch.nn.Module:
    args = dict(
        name=preset["name"],
        decoder=preset["decoder"],
        weights=None,
        kwargs=preset["kwargs"],
        decoder_kwargs=preset["decoder_kwargs"],
    )
    args.update(overrides)
    return build_network(num_classes=NUM_CLASSES, **args)


def test_presets_follow_the_schema(presets):
    assert {"convnext_tiny", "segformer_b3", "maxvit_tiny", "tiny", "custom"} <= set(presets)
    keys = {"name", "decoder", "weights", "family", "input_multiple", "batch_size", "lr", "kwargs", "decoder_kwargs"}
    for preset, cfg in presets.items():
        assert set(cfg) == keys, preset
        assert cfg["decoder"] in DECODERS and cfg["family"] in ("CNN", "ViT", "hybrid"), preset
        assert cfg["input_multiple"] % 32 == 0, preset
    # the earlier system's encoders and their batch / learning rate
    earlier = {
        "convnext_tiny": ("tu-convnext_tiny", "CNN", 96, 1e-3),
        "segformer_b3": ("mit_b3", "ViT", 32, 3.33e-4),
        "maxvit_tiny": ("tu-maxvit_tiny_tf_384", "hybrid", 48, 5e-4),
    }
    for preset, (name, family, batch, lr) in earlier.items():
        cfg = presets[preset]
        assert (cfg["name"], cfg["family"], cfg["batch_size"], cfg["lr"], cfg["decoder"]) == (
            name,
            family,
            batch,
            lr,
            "Unet",
        )
    assert presets["maxvit_tiny"]["input_multiple"] == 384
    assert presets["custom"]["name"] == "???"
    assert presets["tiny"]["weights"] is None


@pytest.mark.slow
def test_earlier_presets_build_small(presets):
    """ConvNeXt-Tiny and MiT-B3 U-Nets (weights None) give full-resolution logits at 64 px."""
    for preset in ("convnext_tiny", "segformer_b3"):
        net = _build(presets[preset])
        assert _forward(net, 2, 64).shape == (2, NUM_CLASSES, 64, 64), preset


@pytest.mark.slow
def test_maxvit_preset_builds_at_384(presets):
    net = _build(presets["maxvit_tiny"])
    assert _forward(net, 1, 384).shape == (1, NUM_CLASSES, 384, 384)


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoders_on_tiny_encoder(presets, decoder):
    tiny = presets["tiny"]
    decoder_kwargs = tiny["decoder_kwargs"] if decoder == "Unet" else {}
    net = _build(tiny, decoder=decoder.lower() if decoder == "FPN" else decoder, decoder_kwargs=decoder_kwargs)
    assert _forward(net, 2, 64).shape == (2, NUM_CLASSES, 64, 64)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())


def test_count_parameters_trainable_only(presets):
    net = _build(presets["tiny"])
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    encoder = sum(p.numel() for p in net.encoder.parameters())
    assert 0 < count_parameters(net, trainable_only=True) == count_parameters(net) - encoder


def test_unknown_encoder_lists_presets_and_raw_names():
    with pytest.raises(UnknownEncoderError) as info:
        build_network("tu-convnxt_tiny")
    message = str(info.value)
    assert "encoder=convnext_tiny" in message and "encoder=segformer_b3" in message
    assert "encoder=custom encoder.name=tu-" in message
    assert "tu-convnext_tiny" in message  # close match suggested
    with pytest.raises(UnknownEncoderError, match="encoder=maxvit_tiny"):
        build_network("no_such_encoder")
    with pytest.raises(UnknownEncoderError, match="tu- prefix.*encoder.name=tu-resnet10t"):
        build_network("resnet10t")  # a timm model given without tu-


def test_unknown_decoder_and_bad_kwargs(presets):
    with pytest.raises(ValueError, match="Unet, FPN, UPerNet, Segformer"):
        build_network("tu-mobilenetv3_small_050", decoder="DeepLab")
    with pytest.raises(ValueError, match="decoder_channels.*smp.FPN"):
        build_network("tu-mobilenetv3_small_050", decoder="FPN", decoder_kwargs=presets["tiny"]["decoder_kwargs"])
    with pytest.raises(ValueError, match="only timm"):
        build_network("mit_b0", kwargs={"img_size": 256})


def test_check_image_size():
    check_image_size(384, 384, "tu-maxvit_tiny_tf_384")
    check_image_size(768, 384, "tu-maxvit_tiny_tf_384")
    with pytest.raises(ValueError) as info:
        check_image_size(256, 384, "tu-maxvit_tiny_tf_384")
    assert "data.image_size=384" in str(info.value) and "encoder.kwargs.img_size=256" in str(info.value)
    check_image_size(128, 32, "tu-mobilenetv3_small_050")
    with pytest.raises(ValueError, match="data.image_size=96 or 128"):
        check_image_size(100, 32, "tu-mobilenetv3_small_050")


def test_normalization():
    for name in ("tu-convnext_tiny", "mit_b3"):
        stats = normalization(name)
        assert stats["mean"] == pytest.approx([0.485, 0.456, 0.406]) and stats["std"] == pytest.approx(
            [0.229, 0.224, 0.225]
        )
    assert normalization("tu-maxvit_tiny_tf_384") == {"mean": [0.5] * 3, "std": [0.5] * 3}  # timm's cfg for tf_384
