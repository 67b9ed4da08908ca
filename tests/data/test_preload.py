import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CRACKFOREST, make_folder, write_pair
from poc59.data.decoding import load_pair
from poc59.data.preload import preload
from poc59.data.sources import DataError, discover_pairs


def test_preload_real_jpegs_into_uint8_tensors():
    samples = discover_pairs(CRACKFOREST)[0][:6]
    data = preload(samples, 64, num_classes=2)
    assert data.images.dtype == torch.uint8 and data.images.shape == (6, 3, 64, 64)
    assert data.masks.dtype == torch.uint8 and data.masks.shape == (6, 64, 64)
    assert data.nbytes == 6 * 64 * 64 * 4
    # the same pixels as decoding one file by hand
    ref = np.array(Image.open(samples[3].image).convert("RGB").resize((64, 64), Image.BILINEAR, reducing_gap=None))
    assert torch.equal(data.images[3], torch.from_numpy(ref).permute(2, 0, 1))
    assert set(data.masks.unique().tolist()) <= {0, 1}


def test_ignore_label_survives_resizing_and_is_never_remapped(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    mask[10:20, 20:30] = 15
    write_pair(tmp_path, "a", np.full((32, 32, 3), 100, np.uint8), mask)
    _, lab, hw = load_pair(discover_pairs(tmp_path)[0][0], 16, num_classes=16, ignore_index=255)
    assert hw == (16, 16)
    assert set(np.unique(lab).tolist()) == {0, 15, 255}
    assert (lab[:, :8] == 255).all()


def test_label_out_of_range_names_file_and_values(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0], mask[1, 1] = 16, 200
    write_pair(tmp_path, "bad", np.zeros((16, 16, 3), np.uint8), mask)
    with pytest.raises(DataError) as err:
        preload(discover_pairs(tmp_path)[0], 8, num_classes=16)
    assert "bad.png" in str(err.value) and "[16, 200]" in str(err.value)


def test_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "m", np.zeros((16, 20, 3), np.uint8), np.zeros((16, 16)))
    with pytest.raises(DataError, match="size mismatch") as err:
        preload(discover_pairs(tmp_path)[0], 8, num_classes=2)
    assert "images/m.png" in str(err.value) and "annotations/m.png" in str(err.value)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    make_folder(tmp_path, n=2, copies=0)
    path = tmp_path / "images" / "img001.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="cannot read .*img001.png"):
        preload(discover_pairs(tmp_path)[0], 8, num_classes=4)
    # on_bad_file=skip: the pair is left out and listed, never silently
    data = preload(discover_pairs(tmp_path)[0], 8, num_classes=4, on_bad_file="skip")
    assert [s.id for s in data.samples] == ["img000"] and data.images.shape[0] == 1
    assert data.skipped[0]["id"] == "img001" and "img001.png" in data.skipped[0]["reason"]


def test_colour_mask_is_refused_and_palette_mask_read_as_indices(tmp_path):
    write_pair(tmp_path, "c", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "annotations" / "c.png")
    with pytest.raises(DataError, match="not a single-channel label map"):
        preload(discover_pairs(tmp_path)[0], 8, num_classes=2)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8).repeat(4, 0).repeat(4, 1), "P")
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    pal.save(tmp_path / "annotations" / "c.png")
    data = preload(discover_pairs(tmp_path)[0], 8, num_classes=2)
    assert set(data.masks.unique().tolist()) == {0, 1}


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    arr = {
        "L": np.full((8, 8), 7, np.uint8),
        "RGBA": np.full((8, 8, 4), 9, np.uint8),
        "I;16": np.full((8, 8), 4000, np.uint16),
    }[mode]
    (tmp_path / "images").mkdir()
    Image.fromarray(arr).save(tmp_path / "images" / "x.png")  # uint16 is written as a 16-bit PNG
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "annotations" / "x.png")
    data = preload(discover_pairs(tmp_path)[0], 8, num_classes=2)
    assert data.images.shape == (1, 3, 8, 8)
    assert data.images.float().std() == 0 and data.images.max() > 0


def test_skip_keeps_tensors_aligned_with_samples(tmp_path):
    make_folder(tmp_path, n=5, copies=0, size=(16, 16))
    bad = np.zeros((16, 16), np.uint8)
    bad[0, 0] = 99
    write_pair(tmp_path, "img002", np.full((16, 16, 3), 5, np.uint8), bad)  # label out of range
    samples = discover_pairs(tmp_path)[0]
    full = {s.id: preload([s], 16, num_classes=4).images[0] for s in samples if s.id != "img002"}
    data = preload(samples, 16, num_classes=4, on_bad_file="skip")
    assert [s.id for s in data.samples] == ["img000", "img001", "img003", "img004"]
    for s, img in zip(data.samples, data.images):
        assert torch.equal(img, full[s.id])
    assert "[99]" in data.skipped[0]["reason"]


def test_pad_keeps_aspect_and_pads_with_ignore(tmp_path):
    write_pair(tmp_path, "wide", np.full((20, 40, 3), 200, np.uint8), np.ones((20, 40)))
    data = preload(discover_pairs(tmp_path)[0], 16, num_classes=2, policy="pad")
    assert data.sizes[0].tolist() == [8, 16]
    assert (data.masks[0, :8] == 1).all() and (data.masks[0, 8:] == 255).all()
    assert (data.images[0, :, :8] == 200).all() and (data.images[0, :, 8:] == 0).all()


def test_crop_keeps_native_scale_capped_at_max_side(tmp_path):
    write_pair(tmp_path, "big", np.full((30, 50, 3), 9, np.uint8), np.ones((30, 50)))
    write_pair(tmp_path, "small", np.full((10, 12, 3), 9, np.uint8), np.ones((10, 12)))
    data = preload(discover_pairs(tmp_path)[0], 16, num_classes=2, policy="crop", max_side=40)
    assert data.ragged and data.sizes.tolist() == [[24, 40], [10, 12]]  # capped, never enlarged
    assert data.nbytes == 4 * (24 * 40 + 10 * 12)  # the content's bytes: no canvas
    assert data.mask(1).shape == (10, 12) and (data.mask(1) == 1).all()
    with pytest.raises(ValueError, match="max_side"):
        preload(discover_pairs(tmp_path)[0], 16, num_classes=2, policy="crop")


def test_cache_is_reused_invalidated_by_a_changed_file_and_rebuilt_when_damaged(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n=4, copies=1, size=(24, 24))
    cache = tmp_path / "cache"
    cold = preload(discover_pairs(root)[0], 16, num_classes=4, cache_dir=cache)
    assert cold.source == "decoded" and len(list(cache.glob("preload-*"))) == 1
    warm = preload(discover_pairs(root)[0], 16, num_classes=4, cache_dir=cache)
    assert warm.source == "cache"
    assert torch.equal(warm.images, cold.images) and torch.equal(warm.masks, cold.masks)
    assert [s.id for s in warm.samples] == [s.id for s in cold.samples]
    # a changed file: new key, decoded again, and the new pixels are used
    write_pair(root, "img001", np.full((24, 24, 3), 77, np.uint8), np.zeros((24, 24)))
    changed = preload(discover_pairs(root)[0], 16, num_classes=4, cache_dir=cache)
    assert changed.source == "decoded" and (changed.images[2] == 77).all()
    # a damaged cache (truncated tensor file) is detected and rebuilt
    folder = next(p for p in cache.glob("preload-*") if p.name.endswith(changed.key))
    (folder / "images.u8").write_bytes((folder / "images.u8").read_bytes()[:100])
    rebuilt = preload(discover_pairs(root)[0], 16, num_classes=4, cache_dir=cache)
    assert rebuilt.source == "decoded" and torch.equal(rebuilt.images, changed.images)
    assert "damaged" in caplog.text
    assert preload(discover_pairs(root)[0], 16, num_classes=4, cache_dir=cache).source == "cache"
    assert not list(cache.glob(".*tmp*"))  # no temporary folders left behind


def test_too_little_ram_stops_before_allocating(tmp_path, monkeypatch):
    import psutil

    make_folder(tmp_path, n=2, copies=0, size=(16, 16))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"available": 1000})())
    with pytest.raises(DataError, match="data.image_size"):
        preload(discover_pairs(tmp_path)[0], 16, num_classes=4)


@pytest.mark.slow
def test_two_runs_building_the_same_cache_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    root = make_folder(tmp_path / "d", n=12, copies=1, size=(64, 64))
    cache = tmp_path / "cache"
    code = (
        "import sys, torch\n"
        "from poc59.data.sources import discover_pairs\n"
        "from poc59.data.preload import preload\n"
        f"d = preload(discover_pairs({str(root)!r})[0], 32, num_classes=4, cache_dir={str(cache)!r})\n"
        "torch.save((d.images, d.masks), sys.argv[1])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"out{i}.pt")]) for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    (a_img, a_mask), (b_img, b_mask) = (torch.load(tmp_path / f"out{i}.pt") for i in range(2))
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert len(list(cache.glob("preload-*"))) == 1 and not list(cache.glob(".*tmp*"))
    warm = preload(discover_pairs(root)[0], 32, num_classes=4, cache_dir=cache)
    assert warm.source == "cache" and torch.equal(warm.images, a_img)


def test_a_few_overwritten_bytes_anywhere_in_the_cache_are_noticed_and_the_cache_rebuilt(tmp_path, caplog):
    """4 KiB of labels overwritten between the blocks an earlier check sampled were trained on: every
    byte is now checked against the hash written with the cache."""
    root = make_folder(tmp_path / "d", n=40, copies=1, size=(256, 256))
    cache = tmp_path / "cache"
    cold = preload(discover_pairs(root)[0], 256, num_classes=4, cache_dir=cache)
    masks = next(cache.glob("preload-*")) / "masks.u8"
    size = masks.stat().st_size
    assert size > 32 * 65536  # larger than the 32 sampled 64 KiB blocks of the earlier check
    with masks.open("r+b") as f:  # just past the 5th sampled block: a spot the earlier check never read
        f.seek(size * 5 // 32 + 65536 + 4096)
        f.write(bytes([3]) * 4096)
    rebuilt = preload(discover_pairs(root)[0], 256, num_classes=4, cache_dir=cache)
    assert rebuilt.source == "decoded" and torch.equal(rebuilt.masks, cold.masks)
    assert "damaged (masks.u8 differs from its hash); rebuilding it" in caplog.text
    warm = preload(discover_pairs(root)[0], 256, num_classes=4, cache_dir=cache)
    assert warm.source == "cache" and torch.equal(warm.masks, cold.masks)


@pytest.mark.slow  # 120 images generated and a writer process killed: 24 s at a load of 8-10
def test_a_preload_killed_while_writing_leaves_nothing_for_long(tmp_path, caplog):
    """The next start removes a dead writer's temporary folder, and leaves a live writer's alone."""
    import logging
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    root = make_folder(tmp_path / "d", n=60, copies=1, size=(256, 256))
    cache = tmp_path / "cache"
    code = (
        "from poc59.data.sources import discover_pairs\n"
        "from poc59.data.preload import preload\n"
        f"preload(discover_pairs({str(root)!r})[0], 256, num_classes=4, cache_dir={str(cache)!r}, workers=1)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while not list(cache.glob(".preload-*.tmp-*")) and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    (leftover,) = list(cache.glob(".preload-*.tmp-*"))  # what a kill -9 mid-write leaves
    live = cache / f".preload-other.tmp-{socket.gethostname()}-{os.getpid()}"  # a writer that still runs
    live.mkdir()
    elsewhere = cache / ".preload-other.tmp-another-node-123"  # another machine's, fresh: may still be writing
    elsewhere.mkdir()
    abandoned = cache / ".preload-old.tmp-another-node-456"  # another machine's, untouched for two hours
    abandoned.mkdir()
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))
    caplog.set_level(logging.INFO, logger="poc59.data.cache")
    data = preload(discover_pairs(root)[0], 256, num_classes=4, cache_dir=cache)
    assert data.source == "decoded"
    assert not leftover.exists() and not abandoned.exists() and live.exists() and elsewhere.exists()
    assert f"Removed {leftover}" in caplog.text and "killed while writing" in caplog.text


def test_skipped_pairs_are_named_on_every_start_not_only_the_one_that_decoded(tmp_path, caplog):
    root = make_folder(tmp_path / "d", n=4, copies=0, size=(16, 16))
    (root / "images" / "img002.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    cold = preload(discover_pairs(root)[0], 16, num_classes=4, on_bad_file="skip", cache_dir=cache)
    assert [s["id"] for s in cold.skipped] == ["img002"]
    caplog.clear()
    warm = preload(discover_pairs(root)[0], 16, num_classes=4, on_bad_file="skip", cache_dir=cache)
    assert warm.source == "cache" and [s["id"] for s in warm.skipped] == ["img002"]
    assert "Skipped img002 (when the cache was built)" in caplog.text


@pytest.mark.parametrize(
    "change", [{"size": 24}, {"policy": "pad"}, {"num_classes": 5}, {"on_bad_file": "skip"}], ids=str
)
def test_the_cache_is_not_reused_for_another_geometry_or_class_count(tmp_path, change):
    root = make_folder(tmp_path / "d", n=3, copies=0, size=(32, 32))
    cache = tmp_path / "cache"
    base = {"size": 16, "policy": "resize", "num_classes": 4, "on_bad_file": "error"}
    assert preload(discover_pairs(root)[0], cache_dir=cache, **base).source == "decoded"
    assert preload(discover_pairs(root)[0], cache_dir=cache, **base).source == "cache"
    other = preload(discover_pairs(root)[0], cache_dir=cache, **{**base, **change})
    assert other.source == "decoded" and len(list(cache.glob("preload-*"))) == 2


def test_the_ram_estimate_counts_one_full_size_decode_per_thread(tmp_path, monkeypatch):
    """Tiny tensors, one 4 MP source: what fits with one decoding thread (8 bytes a source pixel held while
    Pillow converts and resamples) does not with four, and the message says why, before anything is allocated."""
    from types import SimpleNamespace

    import psutil

    make_folder(tmp_path, n=3, copies=0)
    write_pair(tmp_path, "scan", np.full((2000, 2000, 3), 90, np.uint8), np.zeros((2000, 2000), np.uint8))
    samples = discover_pairs(tmp_path)[0]
    per_thread = 8 * 2000 * 2000  # 32 MB
    room = SimpleNamespace(available=int((2.5 * per_thread) / 0.9))  # two decodes fit, four do not
    monkeypatch.setattr(psutil, "virtual_memory", lambda: room)
    with pytest.raises(DataError) as err:
        preload(samples, 16, num_classes=4, workers=4)
    said = str(err.value)
    assert "4 threads decoding sources of up to 4 MP" in said and "0.1 GiB of RAM" in said
    data = preload(samples, 16, num_classes=4, workers=2)
    assert data.images.shape == (4, 3, 16, 16)


def test_ragged_storage_round_trips_every_image_cold_and_warm(tmp_path):
    """policy=crop on a mixed-size set: every image, mask and size exactly as decoded one by one, from the
    decode and from the mapped cache, and windows past the content padded with ignore in the batch only."""
    rng = np.random.default_rng(3)
    shapes = [(17, 90), (64, 23), (40, 40), (5, 7), (81, 55), (33, 120)]
    for k, (h, w) in enumerate(shapes):
        write_pair(tmp_path / "d", f"p{k}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 3, (h, w)))
    samples = discover_pairs(tmp_path / "d")[0]
    cold = preload(samples, 32, num_classes=3, policy="crop", max_side=100, cache_dir=tmp_path / "c")
    warm = preload(samples, 32, num_classes=3, policy="crop", max_side=100, cache_dir=tmp_path / "c")
    assert cold.source == "decoded" and warm.source == "cache" and warm.ragged
    for data in (cold, warm):
        assert data.nbytes == 4 * int(data.sizes.prod(1).sum())
        for i, s in enumerate(data.samples):
            image, mask, hw = load_pair(s, 32, 3, 255, "crop", 100)
            h, w = hw
            assert tuple(data.sizes[i].tolist()) == hw and data.mask(i).shape == (h, w)
            assert np.array_equal(data.image(i).permute(1, 2, 0).numpy(), image[:h, :w])
            assert np.array_equal(data.mask(i).numpy(), mask[:h, :w])
            assert data.label_counts[i].tolist() == np.bincount(mask[:h, :w].reshape(-1), minlength=256).tolist()
    img, msk = torch.full((3, 32, 32), 7, dtype=torch.uint8), torch.zeros((32, 32), dtype=torch.uint8)
    small = next(i for i, s in enumerate(warm.samples) if s.id == "p3")  # 5 x 7
    warm.window_into(small, 0, 0, img, msk)
    assert torch.equal(msk[:5, :7], warm.mask(small)) and (msk[5:] == 255).all() and (msk[:, 7:] == 255).all()
    assert (img[:, 5:] == 0).all() and torch.equal(img[:, :5, :7], warm.image(small))


def test_ragged_storage_compacts_over_a_pair_skipped_while_decoding(tmp_path):
    rng = np.random.default_rng(5)
    shapes = [(20, 30), (44, 12), (9, 60), (31, 31)]
    for k, (h, w) in enumerate(shapes):
        write_pair(tmp_path, f"p{k}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 2, (h, w)))
    bad = tmp_path / "images" / "p1.png"
    bad.write_bytes(bad.read_bytes()[:200])  # a valid header, the pixels cut short: found only while decoding
    data = preload(discover_pairs(tmp_path)[0], 16, num_classes=2, policy="crop", max_side=64, on_bad_file="skip")
    assert [s.id for s in data.samples] == ["p0", "p2", "p3"] and [s["id"] for s in data.skipped] == ["p1"]
    assert data.nbytes == 4 * (20 * 30 + 9 * 60 + 31 * 31)
    for i, s in enumerate(data.samples):
        image, mask, (h, w) = load_pair(s, 16, 2, 255, "crop", 64)
        assert np.array_equal(data.image(i).permute(1, 2, 0).numpy(), image[:h, :w])
        assert np.array_equal(data.mask(i).numpy(), mask[:h, :w])


def _decoding_names_imported_from_preload() -> dict[str, list[str]]:
    """{decoding name: the files under src/, tests/ and bench/ that import it from poc59.data.preload}."""
    import poc59.data.decoding as decoding

    repo = Path(__file__).resolve().parents[2]
    found: dict[str, list[str]] = {}
    for top in ("src", "tests", "bench"):
        for path in sorted((repo / top).rglob("*.py")):
            text = path.read_text()
            if "poc59.data.preload" not in text:  # cannot import from it: parsing it would find nothing
                continue
            for node in ast.walk(ast.parse(text, str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "poc59.data.preload":
                    for alias in node.names:
                        if hasattr(decoding, alias.name):
                            found.setdefault(alias.name, []).append(str(path.relative_to(repo)))
    return found


def test_preload_re_exports_exactly_the_decoding_names_still_imported_from_it():
    """The re-export list is a record of who still imports a decoding name from preload: a name nobody imports
    from it any more leaves the list (and preload's import of it), and a name imported from it is listed."""
    import poc59.data.decoding as decoding
    import poc59.data.preload as preload_module

    imported = _decoding_names_imported_from_preload()
    reexported = {name for name in preload_module.__all__ if hasattr(decoding, name)}
    unused = sorted(reexported - set(imported))
    assert not unused, (
        f"poc59.data.preload re-exports {unused}, which no module imports from it any more: drop them from its "
        "__all__ and from its import of poc59.data.decoding"
    )
    unlisted = {name: files for name, files in imported.items() if name not in reexported}
    assert not unlisted, (
        f"imported from poc59.data.preload but not in its __all__: {unlisted}; import them from "
        "poc59.data.decoding instead"
    )
