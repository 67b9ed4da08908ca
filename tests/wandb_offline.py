"""A reader of W&B's offline run files (<run>/wandb/offline-run-*/run-<id>.wandb), for the tests.

wandb 0.31 no longer ships its Python reader (wandb.sdk.internal.datastore went with the move of its
internals to Go), so this reads the file's documented layout with wandb's own record schema
(wandb.proto.wandb_internal_pb2.Record): a 7-byte header (":W&B", a 2-byte magic, a version byte), then
LevelDB-log records in 32 KiB blocks: 4-byte CRC, 2-byte little-endian length, 1-byte type (1 full,
2 first, 3 middle, 4 last), the data; a block's tail shorter than a record header is padding.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, RECORD_HEADER = 32768, 7, 7


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + RECORD_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < RECORD_HEADER:  # padding at the end of a block
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        chunk = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_file: Path) -> dict:
    """{"id", "config": {key: value}, "history": [{key: value}], "summary": {key: value}, "files": [path]}."""
    run = {"id": None, "config": {}, "history": [], "summary": {}, "files": []}
    for r in records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run["id"] = r.run.run_id
            run["config"].update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run["config"].update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run["summary"].update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "files":
            run["files"] += [f.path for f in r.files.files]
    return run


def offline_runs(run_dir: Path) -> list[Path]:
    """The run files of every offline attempt under <run>/wandb, oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb"))
