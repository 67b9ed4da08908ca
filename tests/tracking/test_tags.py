"""The tags a tracker searches runs by name the network a run trained, in today's config layout and in the
layout of runs recorded before the `decoder` group (the fixture run trained by that code)."""

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from helpers import make_cfg
from poc59.tracking.record import tags

OLD_RUN = Path(__file__).parents[1] / "training" / "fixtures" / "run_before_model_group"


def test_the_decoder_tag_names_the_decoder_group_and_an_old_runs_decoder(tmp_path):
    cfg = OmegaConf.to_container(make_cfg(tmp_path, "encoder=tiny", "decoder=fpn"), resolve=True)
    found = tags(cfg, tmp_path, {"fingerprint": "f"}, "abc")
    assert found["poc59.decoder"] == cfg["decoder"]["name"] == "FPN"
    assert found["poc59.encoder"] == cfg["encoder"]["name"]

    old = yaml.safe_load((OLD_RUN / "config.yaml").read_text())
    assert "decoder" not in old and old["encoder"]["decoder"]  # the layout before the group
    assert tags(old, OLD_RUN, None, None)["poc59.decoder"] == old["encoder"]["decoder"]
