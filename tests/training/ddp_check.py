"""Run by tests/training/test_ddp.py in a subprocess (Lightning's DDP re-executes this script per rank).

usage: python ddp_check.py DATA_DIR OUT_DIR DEVICES
Validates one fixed network on DEVICES CPU processes (gloo) and writes, from each rank,
the shards it was fed and, from rank 0, the confusion matrix summed over ranks.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from poc59.artifacts.card import ModelCard
from poc59.core.classes import ClassTable
from poc59.data.datamodule import SegmentationDataModule
from poc59.model.factory import build_network, normalization
from poc59.model.losses import DiceFocalLoss
from poc59.model.module import SegmentationModule

data_dir, out, devices = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
name = "tu-mobilenetv3_small_050"
net = build_network(name, num_classes=16, decoder_kwargs={"decoder_channels": [16, 16, 8, 8, 8]})
net.load_state_dict(torch.load(out / "net.pt")) if (out / "net.pt").exists() else torch.save(
    net.state_dict(), out / "net.pt"
)
dm = SegmentationDataModule(data_dir, image_size=32, batch_size=3, val_fraction=0.5, seed=0)
card = ModelCard(
    ClassTable.from_names([str(i) for i in range(16)]),
    normalization(name),
    {"name": name},
    {"policy": "resize", "image_size": 32, "max_side": None},
    input_multiple=32,
)
module = SegmentationModule(net, DiceFocalLoss(), torch.optim.AdamW, card=card.to_dict())
trainer = L.Trainer(
    accelerator="cpu",
    devices=devices,
    strategy="ddp" if devices > 1 else "auto",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    use_distributed_sampler=False,
)
trainer.validate(module, datamodule=dm, verbose=False)
rank = trainer.global_rank
train_feed = dm.train_dataloader()
shards = {
    "world_size": trainer.world_size,
    "train": train_feed.shard(0).tolist(),
    "val": [int(i) for i in dm.val_dataloader().shard(0).tolist()],
}
(out / f"shards-{devices}-{rank}.json").write_text(json.dumps(shards))
if rank == 0:
    (out / f"confmat-{devices}.json").write_text(json.dumps(module.val_confmat.tolist()))
