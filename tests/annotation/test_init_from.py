"""init_from=<ckpt>: a new run's network starts from a checkpoint's weights (fine-tuning a correction round)."""

from __future__ import annotations

import pytest
import torch

from poc59.artifacts.load import load_model
from poc59.artifacts.trained import best_checkpoint
from poc59.core.config import SettingError
from poc59.model.factory import build_network
from poc59.model.pretrained import init_from_checkpoint


def test_init_from_takes_the_weights_and_refuses_another_network_or_table(trained_run, tmp_path):
    ckpt = best_checkpoint(trained_run)
    trained = load_model(ckpt)
    card = trained.card
    net = build_network(**card.network, weights=None)
    assert init_from_checkpoint(net, ckpt, card.network, card.classes.to_dict()) == ckpt
    expected = trained.segmenter.net.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())

    other_classes = {**card.classes.to_dict(), "names": [*card.classes.names[:-1], "Mould"]}
    with pytest.raises(SettingError, match="init_from=.*its classes"):
        init_from_checkpoint(net, ckpt, card.network, other_classes)
    with pytest.raises(SettingError, match="init_from=.*its network"):
        init_from_checkpoint(net, ckpt, {**card.network, "decoder": "FPN"}, card.classes.to_dict())
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SettingError, match="cannot be read as a checkpoint"):
        init_from_checkpoint(net, junk, card.network, card.classes.to_dict())
    with pytest.raises(SettingError, match="no such file"):
        init_from_checkpoint(net, tmp_path / "none.ckpt", card.network, card.classes.to_dict())
