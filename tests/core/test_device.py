"""One precision choice for every command: native bf16 only (a V100 or T4 emulates it, slower than fp16)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from poc59.core.config import config_dir, register_resolvers
from poc59.core.device import auto_precision, autocast_dtype
from poc59.evaluation.passes import precision_for


def _stand_in_gpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """torch.cuda as a CUDA machine answers it: bf16 'supported' with emulation on every GPU, natively from sm80."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or including_emulation
    )


@pytest.mark.parametrize(("native_bf16", "expected"), [(False, "16-mixed"), (True, "bf16-mixed")])
def test_the_composed_training_config_picks_native_bf16_only(monkeypatch, native_bf16, expected):
    _stand_in_gpu(monkeypatch, native_bf16)  # False: a V100 (sm70)
    register_resolvers()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train")
    assert cfg.trainer.precision == expected


def test_evaluate_and_predict_follow_the_same_choice_on_a_v100(monkeypatch):
    _stand_in_gpu(monkeypatch, native_bf16=False)
    cuda = torch.device("cuda")
    assert auto_precision() == "16-mixed"
    assert autocast_dtype("auto", cuda) == torch.float16  # predict's precision=auto
    assert precision_for(cuda)[0] == "16-mixed"  # evaluate without a run's own precision
    assert precision_for(cuda, "bf16-mixed")[0] == "bf16-mixed"  # a run trained in bf16 is evaluated as it trained


def test_cpu_trains_in_32_bit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_precision() == "32-true"
    assert autocast_dtype("auto", torch.device("cpu")) is None
