"""folder: data of any size, streamed: decoding (8/16-bit PNG, JPEG, grey/colour), resize and
centre crop, laziness, bad input, and a CLI run whose peak memory does not grow with the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salmap import data, models
from salmap.cli import main
from salmap.data.stream import LazyImages, StreamDataset, decode_image, resize_crop, stream_folder


def photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` crops of mixed sizes and kinds (RGB PNG, grey PNG, 16-bit grey PNG, JPEG, RGBA)
    cut from scikit-learn's two sample photographs, in three class folders."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = photos[i % 2]
        h, w = int(rng.integers(40, 160)), int(rng.integers(40, 160))
        top, left = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        crop = img[top : top + h, left : left + w]
        kind = i % 5
        path = root / f"class{i % 3}" / f"img{i:05d}"
        if kind == 0:
            Image.fromarray(crop).save(path.with_suffix(".png"))
        elif kind == 1:
            Image.fromarray(crop).convert("L").save(path.with_suffix(".png"))
        elif kind == 2:
            grey = crop.mean(axis=2).astype(np.uint16) * 257
            Image.fromarray(grey).save(path.with_suffix(".png"))
        elif kind == 3:
            Image.fromarray(crop).save(path.with_suffix(".jpg"), quality=95)
        else:
            Image.fromarray(crop).convert("RGBA").save(path.with_suffix(".png"))
    return root


def test_decoding_scales_by_bit_depth(tmp_path):
    arr8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr8).save(tmp_path / "g8.png")
    torch.testing.assert_close(decode_image(tmp_path / "g8.png")[0], torch.from_numpy(arr8 / 255.0).float())
    arr16 = np.full((8, 8), 1000, dtype=np.uint16)
    arr16[0, 0] = 65535
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    x16 = decode_image(tmp_path / "g16.png")
    assert x16.shape == (1, 8, 8) and abs(float(x16[0, 1, 1]) - 1000 / 65535) < 1e-7 and float(x16.max()) == 1.0
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "c4.png")
    ramp = np.stack([*np.meshgrid(np.arange(32) * 8, np.arange(32) * 8), np.full((32, 32), 128)], axis=-1)
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "c.jpg", quality=95, subsampling=0)
    expected = torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1)
    torch.testing.assert_close(decode_image(tmp_path / "c.png"), expected)
    torch.testing.assert_close(decode_image(tmp_path / "c4.png"), expected)  # alpha dropped
    smooth = torch.from_numpy(ramp / 255.0).float().permute(2, 0, 1)
    assert float((decode_image(tmp_path / "c.jpg") - smooth).abs().max()) < 0.03  # JPEG's own loss only
    grey = decode_image(tmp_path / "c.png", channels=1)
    torch.testing.assert_close(grey[0], 0.299 * expected[0] + 0.587 * expected[1] + 0.114 * expected[2])
    assert torch.equal(decode_image(tmp_path / "g16.png", channels=3), x16.expand(3, -1, -1))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"image file .*bad.png could not be decoded"):
        decode_image(tmp_path / "bad.png")


def test_resize_shorter_side_and_centre_crop():
    x = torch.rand(3, 32, 48)
    # shorter side already 32: only the centre crop, columns 8..39
    assert torch.equal(resize_crop(x, 32), x[:, :, 8:40])
    y = resize_crop(torch.rand(1, 100, 60), 30)
    assert y.shape == (1, 30, 30)
    flat = torch.full((3, 50, 70), 0.25)
    torch.testing.assert_close(resize_crop(flat, 20), torch.full((3, 20, 20), 0.25))


def test_folder_is_listed_without_decoding_and_read_per_batch(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "photos", 30)
    calls = []
    import salmap.data.stream as stream

    real = stream.decode_image
    monkeypatch.setattr(stream, "decode_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ds = data.load_dataset(f"folder:{root}", "all", image_size=24, channels=3)
    assert isinstance(ds, StreamDataset) and isinstance(ds.x, LazyImages)
    assert len(calls) == 1 and ds.x.shape == (30, 3, 24, 24) and ds.class_names == ["class0", "class1", "class2"]
    batch = ds.x[torch.tensor([3, 7])]
    assert batch.shape == (2, 3, 24, 24) and len(calls) == 3
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    sub = ds.subset(10).select([9, 0])
    assert len(calls) == 3 and torch.equal(sub.y, ds.y[torch.tensor([9, 0])])
    assert torch.equal(sub.x[:], torch.stack([ds.x[9], ds.x[0]]))
    shapes = [tuple(xb.shape) for xb, _ in ds.batches(8)]
    assert shapes == [(8, 3, 24, 24)] * 3 + [(6, 3, 24, 24)]
    grey = data.load_dataset(f"folder:{root}", "test", image_size=24, channels=1)
    assert grey.x.shape[1:] == (1, 24, 24) and 0 < len(grey) < 30
    assert ds.digest() == data.load_dataset(f"folder:{root}", "all", image_size=24, channels=3).digest()


def test_release_freed_memory_gives_pages_back():
    """glibc keeps freed tensors in its heap when small live objects sit above them; after
    ``release_freed_memory`` the freed pages are no longer resident (elsewhere it is a no-op)."""
    import platform

    from salmap.data.heap import free_heap_bytes, release_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert release_freed_memory() in (True, False)
        return

    def rss_kib() -> int:
        return [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")][0]

    first = torch.ones(1 << 21)
    del first  # an 8 MiB tensor freed: glibc now serves smaller ones from its heap, not mmap
    big, pins = [], []
    for _ in range(64):  # 64 x 1 MiB (resident), each followed by a 128 KiB tensor kept alive
        big.append(torch.ones(1 << 18))
        pins.append(torch.ones(1 << 15))
    before = rss_kib()
    del big
    held = before - rss_kib()  # free() alone keeps the holes between the pins resident
    free = free_heap_bytes()
    if free is not None:  # within the allowance the heap is left alone
        assert free > 64 << 20 and release_freed_memory(allowance=free + (1 << 30)) is False
        assert before - rss_kib() < held + 16 * 1024
    assert release_freed_memory(allowance=32 << 20) is True
    assert before - rss_kib() > held + 32 * 1024  # most of the 64 MiB is given back
    del pins


def test_folder_bad_input(tmp_path):
    root = photo_folder(tmp_path / "photos", 6)
    with pytest.raises(ValueError, match="image_size .* must be a positive integer, got 0"):
        stream_folder(root, image_size=0)
    with pytest.raises(ValueError, match="has size .* pass image_size"):
        stream_folder(root, "all")
    # a truncated file: its header reads, its pixels do not -- found when its batch is decoded
    good = next((root / "class1").iterdir()).read_bytes()
    (root / "class0" / "zz_truncated.png").write_bytes(good[:120])
    ds = stream_folder(root, "all", image_size=16)
    with pytest.raises(ValueError, match=r"zz_truncated.png could not be decoded"):
        list(ds.batches(4))
    # not an image at all: found when the folder is listed, whatever the split
    (root / "class0" / "zz_broken.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"zz_broken.png could not be decoded"):
        stream_folder(root, "test", image_size=16)


def test_cli_model_and_data_shapes_must_fit(tmp_path, capsys):
    root = photo_folder(tmp_path / "photos", 10)
    net = models.build("lenet", in_channels=1, num_classes=3)
    models.save(net, tmp_path / "lenet", {"input_shape": [1, 28, 28]})
    args = ["attack", "fgsm", "--model", str(tmp_path / "lenet"), "--data", f"folder:{root}", "--split", "all",
            "--out", str(tmp_path / "o")]
    assert main([*args, "--image-size", "32"]) != 0
    assert "expects inputs of shape (1, 28, 28) but --data" in (err := capsys.readouterr().err)
    assert "samples of shape (1, 32, 32)" in err
    assert main([*args, "--image-size", "0"]) != 0
    assert "--image-size must be positive, got 0" in capsys.readouterr().err
    assert main([*args, "--image-size", "28"]) == 0  # grey by the model's channels, resized to fit


TINY = """
import torch
from torch import nn


def tiny(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, classes))
"""

PEAK = """
import gc, json, sys
from pathlib import Path
from salmap.cli import main


def status_kib(key):
    return [int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key + ':')][0]


found = []
for args in json.loads(sys.argv[1]):
    gc.collect()  # the previous run's figures (reference cycles) out of the way
    Path('/proc/self/clear_refs').write_text('5')  # the peak restarts from the memory in use now
    start = status_kib('VmRSS')
    found.append({"code": main(args), "rise_kib": status_kib('VmHWM') - start})
print(json.dumps(found))
"""

#: the streamed commands (after ``salmap``), without --out and -n
STREAMED = {
    "attack": ["attack", "fgsm", "--eps", "0.05"],
    "explain": ["explain", "--method", "gradient", "--rows", "4"],
    "evaluate": ["evaluate", "--attack", "fgsm:eps=0.05", "--no-progress", "--no-report"],
}


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_streamed_memory_does_not_grow_with_the_folder(tmp_path):
    """attack, explain and evaluate on 20 and on 200 images of a folder (batch 10, 96 x 96): the
    peak memory of each command on 200 images stays within a few MB of its peak on 20.

    One process per folder size runs the three commands in turn (so both processes go through
    the same imports and first-time allocations); each command's figure is how far its peak
    (``VmHWM``, reset before it through ``/proc/self/clear_refs``) rose above the memory in use
    when it started. Holding the 200 images would cost 200 * 3 * 96 * 96 * 4 B = 22 MB, each
    further copy (adversarial examples, maps) as much again. explain's earlier loop, which kept a
    view of each batch's maps (``maps[:0]`` holds the whole batch's storage) and a prediction
    tensor per batch, grew by 38 MB here.
    """
    if not Path("/proc/self/status").exists() or not _can_reset_peak():
        pytest.skip("needs /proc/self/status and /proc/self/clear_refs for the peak memory")
    root = photo_folder(tmp_path / "photos", 200)
    (tmp_path / "tiny_factory.py").write_text(TINY)
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    common = ["--allow-code", "--model", "tiny_factory:tiny", "--data", f"folder:{root}", "--split", "all",
              "--image-size", "96", "--batch-size", "10", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]), "OMP_NUM_THREADS": "1"}
    rises = {}
    for n in (20, 200):
        runs = [[*command, *common, "-n", str(n), "--out", str(tmp_path / f"{name}-{n}")]
                for name, command in STREAMED.items()]
        out = subprocess.run([sys.executable, str(script), json.dumps(runs)], capture_output=True, text=True,
                             timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        found = json.loads(out.stdout.strip().splitlines()[-1])
        assert [f["code"] for f in found] == [0] * len(runs), out.stderr[-3000:]
        rises[n] = dict(zip(STREAMED, (f["rise_kib"] for f in found), strict=True))
    assert len(json.loads((tmp_path / "attack-200" / "results.json").read_text())["samples"]) == 200
    assert json.loads((tmp_path / "explain-200" / "summary.json").read_text())["images"] == 200
    assert len((tmp_path / "evaluate-200" / "results.jsonl").read_text().splitlines()) == 200
    growth = {name: rises[200][name] - rises[20][name] for name in STREAMED}
    assert all(g < 8 * 1024 for g in growth.values()), (growth, rises)


def test_evaluate_streams_a_folder(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "photos", 15)
    (tmp_path / "tiny_factory.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    decoded = []
    import salmap.data.stream as stream

    real = stream.decode_image
    monkeypatch.setattr(stream, "decode_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", "tiny_factory:tiny", "--allow-code", "--data", f"folder:{root}", "--split", "all",
                 "--image-size", "40", "--attack", "fgsm:eps=0.1", "--num", "6", "--batch-size", "3", "--out", str(out),
                 "--no-progress", "--no-report"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["linf"] <= 0.1 + 1e-6 for r in rows)
    # only the selected images (and the listing's first) were decoded, not the whole folder
    assert len(set(decoded)) <= 7
    sys.modules.pop("tiny_factory", None)
