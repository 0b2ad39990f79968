"""The bad-input matrix, library side: hostile model files, code named by a source, data
files that declare huge sizes or hold the wrong data, bad tensors and models.

Each test id starts with its group (``untrusted``, ``sizes``, ``values``, ``tensors``);
``pytest tests/test_bad_input_matrix.py tests/test_cli_errors.py -k GROUP`` runs one group.
Security cases use a payload that would write a marker file and assert it does not appear
(and, where cheap, that it does appear once the user allows it: the payload is live).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from salmap import data, models
from salmap.models.factory import CodeNotAllowed


class _Payload:
    """Unpickling this writes the marker file (``exec`` of a one-line program)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('pwned')",))


def _malicious_pt2(tmp_path: Path, marker: Path) -> Path:
    """A real torch.export archive whose sample inputs are a pickle that runs the payload."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(1, 4),)), str(good))
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename.endswith("data/sample_inputs/model.pt"):
                buffer = io.BytesIO()
                torch.save(((_Payload(marker),), {}), buffer)
                payload = buffer.getvalue()
            dst.writestr(info, payload)
    return evil


# -- untrusted: model files and code ------------------------------------------------------


def test_untrusted_pt2_is_not_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _malicious_pt2(tmp_path, marker)
    (tmp_path / "evil.zip").write_bytes(evil.read_bytes())
    for source in (evil, tmp_path / "evil.zip"):  # by suffix and by content
        with pytest.raises(ValueError, match="trust=True"):
            models.load(source)
        with pytest.raises(ValueError, match="trust=True"):
            models.load_with_meta(str(source))
        assert not marker.exists()
    # The payload is live: trusting the file runs it (that is what trust means).
    try:
        models.load(tmp_path / "evil.zip", trust=True)
    except ValueError:
        pass
    assert marker.exists()


def test_untrusted_pt2_loads_with_trust(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(3, 4)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    assert torch.allclose(models.load(tmp_path / "m.pt2", trust=True)(x), model(x), atol=1e-6)


def test_untrusted_torch_save_zip_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"w": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="neither TorchScript nor a torch.export archive"):
        models.load(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module ``salmap_evil_mod`` in the working directory that writes the marker on import."""
    marker = tmp_path / "PWNED"
    (tmp_path / "salmap_evil_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
        "import torch\ndef make():\n    return torch.nn.Identity()\n"
    )
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("salmap_evil_mod", None)
    yield marker
    sys.modules.pop("salmap_evil_mod", None)


def test_untrusted_factory_needs_allow_code(evil_module, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    for source in ("salmap_evil_mod:make", "os:abort", "os:system"):
        with pytest.raises(CodeNotAllowed, match="allow_code=True"):
            models.load(source)
    assert not evil_module.exists()
    # Allowed, the module runs (the payload is live) ...
    assert isinstance(models.load("salmap_evil_mod:make", allow_code=True), nn.Identity)
    assert evil_module.exists()
    # ... but a built-in is never a model factory: os:abort must not abort the process.
    for source in ("os:abort", "os:system", "builtins:exit"):
        with pytest.raises(ValueError, match="must be a Python class or function"):
            models.load(source, allow_code=True)


@pytest.mark.slow
def test_untrusted_python_m_does_not_import_from_the_working_directory(evil_module, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    out = tmp_path / "out"
    for extra in ([], ["--allow-code"]):
        proc = subprocess.run(
            [sys.executable, "-m", "salmap", "attack", "fgsm", "--model", "salmap_evil_mod:make",
             "--data", "digits", "-n", "2", "--out", str(out), *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("salmap attack: error:"), proc.stderr
        assert not evil_module.exists()
    assert "allow_code" in proc.stderr or "No module named" in proc.stderr


@pytest.mark.parametrize("source", ["runs/my:model", "no/such:dir/x", "a b:c"])
def test_untrusted_missing_path_with_colon_is_not_found(source):
    with pytest.raises(ValueError, match="not found"):
        models.load(source)


def _checkpoint(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "ck"
    models.save(models.build("lenet"), folder, {"bounds": [0.0, 1.0], "input_shape": [1, 28, 28]})
    meta = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        if key in ("num_classes", "input_size"):
            meta["arch"]["kwargs"][key] = value
        else:
            meta[key] = value
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bounds": "0,1"}, r"bounds must be a pair \[low, high\]"),
        ({"bounds": [1, 0]}, r"bounds must be a pair"),
        ({"bounds": [0, "x"]}, r"bounds must be a pair"),
        ({"num_classes": 10**12}, r"num_classes must be an integer in \[1, 1000000\]"),
        ({"num_classes": 1e12}, r"num_classes must be an integer"),
        ({"num_classes": 5000}, r"does not match the architecture"),  # no allocation of its own
        ({"input_size": [20000, 20000]}, r"input_size must be between 16x16 and 512x512 for lenet, got \(20000, 20000\)"),
        ({"input_size": [8, 8]}, r"input_size must be between 16x16"),
        ({"input_shape": [1, 10**9, 10**9]}, r"input_shape must be"),
        ({"class_names": "0123456789"}, r"class_names must be a list"),
    ],
    ids=["bounds-string", "bounds-reversed", "bounds-text", "classes-huge", "classes-float", "classes-mismatch",
         "input-huge", "input-small", "shape-huge", "names-string"],
)
def test_untrusted_model_json_is_checked(tmp_path, change, message):
    folder = _checkpoint(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as err:
        models.load(folder)
    assert str(folder) in str(err.value) or "lenet" in str(err.value)


# -- sizes: what a data file declares is checked before allocating ------------------------


def _idx(array: np.ndarray, code: int = 0x08, shape: tuple[int, ...] | None = None) -> bytes:
    shape = array.shape if shape is None else shape
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + array.tobytes()


def _idx_folder(tmp_path: Path, labels: bytes, images: bytes | None = None, gz: bool = False) -> str:
    folder = tmp_path / "idx"
    folder.mkdir(exist_ok=True)
    n = 2
    images = images if images is not None else _idx(np.zeros((n, 16, 16), np.uint8))
    for part in ("train", "t10k"):
        suffix = ".gz" if gz else ""
        (folder / f"{part}-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(images) if gz else images)
        (folder / f"{part}-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(labels) if gz else labels)
    return f"idx:{folder}"


@pytest.mark.parametrize(
    "labels, images, gz, message",
    [
        (_idx(np.array([0, 2_000_000_000], ">i4"), 0x0C), None, False, r"label 2000000000 is above the limit"),
        (_idx(np.array([0, -3], np.int8), 0x09), None, False, r"labels must be class indices >= 0, found -3"),
        (_idx(np.array([0, 1], np.uint8)), _idx(np.zeros(0, np.uint8), shape=(2**31, 2**31, 2**31)), False,
         r"declares an array of shape \(2147483648, 2147483648, 2147483648\)"),
        (_idx(np.array([0, 1], np.uint8)), _idx(np.zeros(0, np.uint8), shape=(2**20, 2**10, 2**10)), True,
         r"declares an array of shape"),
        (_idx(np.array([0, 1], np.uint8)), _idx(np.zeros((2, 16, 16), np.uint8)) + bytes(10**6), True,
         r"truncated or corrupt: header shape \(2, 16, 16\) needs 512 bytes, found more than 512"),
    ],
    ids=["idx-label-2e9", "idx-label-negative", "idx-dims-overflow", "idx-gzip-huge-header", "idx-gzip-bomb-body"],
)
def test_sizes_idx(tmp_path, labels, images, gz, message):
    name = _idx_folder(tmp_path, labels, images, gz)
    with pytest.raises(ValueError, match=message) as err:
        data.load_dataset(name, "train")
    assert "idx" in str(err.value)


def _npz_bomb(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose x declares ``shape`` (header only, no data): a few hundred bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    y = io.BytesIO()
    np.save(y, np.zeros(2, np.int64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue())
        z.writestr("y.npy", y.getvalue())


def test_sizes_npz(tmp_path):
    np.savez(tmp_path / "big-label.npz", x=np.zeros((2, 8, 8), np.float32), y=np.array([0, 2_000_000_000]))
    with pytest.raises(ValueError, match=r"label 2000000000 is above the limit of 100000 classes"):
        data.load_dataset(f"npz:{tmp_path / 'big-label.npz'}")
    _npz_bomb(tmp_path / "bomb.npz", (2, 100_000, 100_000))
    assert (tmp_path / "bomb.npz").stat().st_size < 2000
    with pytest.raises(ValueError, match=r"array 'x' declares shape \(2, 100000, 100000\)"):
        data.load_dataset(f"npz:{tmp_path / 'bomb.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.array([_Payload(tmp_path / "PWNED")], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="Python objects"):
        data.load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    assert not (tmp_path / "PWNED").exists()


def test_sizes_png_bomb(tmp_path):
    folder = tmp_path / "img" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (20_000, 20_000)).save(folder / "bomb.png")  # 400M pixels in a few hundred KB
    assert (folder / "bomb.png").stat().st_size < 2_000_000
    with pytest.raises(ValueError, match=r"bomb.png"):
        data.load_dataset(f"folder:{tmp_path / 'img'}")


# -- values: the data read is the data in the file -----------------------------------------


def test_values_16_bit_png(tmp_path):
    for label, value in (("a", 1000), ("b", 65535)):
        (tmp_path / "img" / label).mkdir(parents=True)
        arr = np.full((8, 8), value, dtype=np.uint16)
        Image.fromarray(arr).save(tmp_path / "img" / label / "x.png")
        assert Image.open(tmp_path / "img" / label / "x.png").mode.startswith("I")
    ds = data.load_dataset(f"folder:{tmp_path / 'img'}", "all")
    x = ds.x[0 : len(ds)]
    assert sorted(round(float(v), 6) for v in x.amax(dim=(1, 2, 3))) == [round(1000 / 65535, 6), 1.0]


@pytest.mark.parametrize("keys, message", [
    ({"x_test": np.zeros((2, 8, 8), np.float32)}, "holds x_test but no y_test"),
    ({"y_test": np.array([0, 1])}, "holds y_test but no x_test"),
    ({"class_names": np.array(["zero", "one"])}, "class_names lists 2 names but the labels need 3"),
], ids=["npz-x-test-only", "npz-y-test-only", "npz-class-names-short"])
def test_values_npz(tmp_path, keys, message):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 8, 8), np.float32), y=np.array([0, 1, 2] * 2), **keys)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
