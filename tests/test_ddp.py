"""Two-process DDP on CPU (gloo): the same numbers as one process, each sample seen once."""

import json
import subprocess
import sys
from pathlib import Path

from helpers import make_folder

SCRIPT = Path(__file__).with_name("ddp_check.py")


def test_two_process_ddp_shards_and_validates_like_one(tmp_path):
    data = make_folder(tmp_path / "data", n=9, copies=1, size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    for devices in (1, 2):
        run = subprocess.run([sys.executable, str(SCRIPT), str(data), str(out), str(devices)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"shards-2-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for side in ("train", "val"):
        a, b = set(ranks[0][side]), set(ranks[1][side])
        assert a and b and not a & b  # disjoint shards
    assert len(ranks[0]["train"]) == len(ranks[1]["train"])  # equal length for training
    single = json.loads((out / "shards-1-0.json").read_text())
    assert sorted(ranks[0]["val"] + ranks[1]["val"]) == sorted(single["val"])  # validation covers every sample once
    one, two = (json.loads((out / f"confmat-{d}.json").read_text()) for d in (1, 2))
    assert sum(map(sum, one)) > 0
    assert two == one  # the same confusion matrix from 1 and from 2 processes
