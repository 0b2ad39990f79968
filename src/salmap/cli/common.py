"""Pieces every sub-command shares: loading a model and data, output folders, JSON, devices."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from salmap import data as datasets
from salmap import models
from salmap._validate import Bounds, check_bounds
from salmap.cli.checks import take
from salmap.devices import DEVICE_HELP, describe_device
from salmap.gradients import set_eval
from salmap.logits import OutputError
from salmap.models.inputs import check_fits, check_labels, error_text, model_channels

#: samples ``salmap attack`` and ``salmap explain`` take when ``-n`` is not given
DEFAULT_NUM = 100


def add_device_arg(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device``: ``auto`` (the default) is CUDA when available, else the CPU; the parsed value is
    the resolved device (``cpu``, ``cuda``, ``cuda:1``), which :func:`announce_device` prints."""
    p.add_argument("--device", default=default,
                   help=f"torch device: {DEVICE_HELP} (default {default or 'from the run file, else auto'})")


def device_arg(value: str) -> str:
    """argparse type of ``--device``: the resolved device name."""
    try:
        return resolve_device(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def announce_device(device: str | None) -> None:
    """Print the device a command runs on (``device: cuda:0 (NVIDIA H100 80GB HBM3)``)."""
    if device is not None:
        print(f"device: {describe_device(device)}", flush=True)


def add_model_data_args(p: argparse.ArgumentParser, data_default: str = "mnist-sample") -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, TorchScript/.pt2 file or module:factory")
    p.add_argument("--data", default=data_default, help=f"dataset name or kind:PATH (default {data_default})")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="dataset split (default test)")
    p.add_argument("-n", "--num", type=int, default=None,
                   help=f"number of samples (default {DEFAULT_NUM}; more than the split holds: all of them)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per batch (default 100)")
    add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder for results.json and pictures")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize images (shorter side to N, centre crop N x N); folder: data is streamed in batches")
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The flags that say how to use someone's own model: normalisation, output entry, factory arguments."""
    g = p.add_argument_group("your own model")
    g.add_argument("--mean", help="per-channel mean the model normalises with, e.g. 0.485,0.456,0.406 "
                   "(with --std; attacks and bounds stay in pixel space)")
    g.add_argument("--std", help="per-channel standard deviation, e.g. 0.229,0.224,0.225 (with --mean)")
    g.add_argument("--output-key", help="entry of a dict / ModelOutput output to use (default: logits)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument of a module:factory model, e.g. depth=34 (repeatable; "
                   "values are read as YAML: numbers, true/false, lists)")


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["depth=34", "name=x"]`` -> ``{"depth": 34, "name": "x"}`` (values read as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg must be KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key] = text
    return out


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``normalization``, ``output_key`` and factory ``model_args`` from the parsed flags, and
    the global flags that allow running code (``--trust-model``, ``--allow-code``)."""
    mean, std = getattr(args, "mean", None), getattr(args, "std", None)
    if (mean is None) != (std is None):
        raise ValueError(f"--mean and --std go together, got --mean {mean!r} and --std {std!r}")
    return {
        "normalization": None if mean is None else {"mean": mean, "std": std},
        "output_key": getattr(args, "output_key", None),
        "model_args": parse_model_args(getattr(args, "model_arg", None)),
        "trust": bool(getattr(args, "trust_model", False)),
        "allow_code": bool(getattr(args, "allow_code", False)),
    }


def load_model(
    source: str,
    device: str = "cpu",
    normalization: Any = None,
    output_key: str | None = None,
    model_args: dict[str, Any] | None = None,
    *,
    trust: bool = False,
    allow_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the model of a command (see :func:`salmap.models.load_with_meta`), on ``device``, in eval mode.

    ``trust`` loads ``.pt2`` archives (unpickled by torch); ``allow_code`` imports and calls a
    ``module:factory``."""
    model, meta = models.load_with_meta(
        source, normalization=normalization, output_key=output_key, trust=trust, allow_code=allow_code,
        **(model_args or {}),
    )
    return set_eval(model.to(device)), meta


def resolve_device(name: str | None, flag: str = "--device") -> str:
    """Check a ``--device`` value before any work: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or
    ``auto`` (CUDA when there is a GPU, else the CPU). Returns the device to use."""
    if name is None:
        return "cpu"
    text = str(name).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} must be cpu, cuda, cuda:N, mps or auto, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name} was asked for but CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{flag} {name}: there are {count} CUDA device(s), numbered 0 to {count - 1}")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"{flag} {name} was asked for but MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"{flag} must be cpu, cuda, cuda:N, mps or auto, got {name!r}")
    return text


def check_model_input(model: nn.Module, x: torch.Tensor, meta: dict[str, Any], data_name: str) -> None:
    """Run the model on one sample of ``x`` before the real run: a model that expects
    another input shape fails here with both shapes named, not deep inside an attack."""
    sample = tuple(x.shape[1:])
    declared = meta.get("input_shape")
    if declared and tuple(declared) != sample:
        raise ValueError(
            f"model expects inputs of shape {tuple(declared)} (model.json input_shape) but {data_name} "
            f"has samples of shape {sample}"
        )
    try:
        with torch.no_grad():
            model(x[:1])
    except OutputError:
        raise
    except Exception as err:  # noqa: BLE001 -- any failure of the model on the data is reported with shapes
        first = " ".join(error_text(err).split())[:200]
        raise ValueError(
            f"model cannot be run on {data_name}: samples of shape {sample} (batch {tuple(x[:1].shape)}) "
            f"give {type(err).__name__}: {first}"
        ) from None


def load_data(
    name: str, split: str, num: int | None, image_size: int | None = None, model: Any = None,
    meta: dict[str, Any] | None = None, labels: bool = False,
) -> datasets.Dataset:
    """The first ``num`` samples of a dataset split (a ``folder:`` is streamed, decoded per batch):
    ``num`` is ``-n`` (None when not given: :data:`DEFAULT_NUM`), capped as :func:`take` says.

    With ``model``, images are read with the model's channels (RGB or grey) and one sample is
    run through it first, so that a model and data that do not fit fail with both shapes;
    with ``labels`` too (the run uses the true labels), labels past a classifier's outputs fail.
    """
    if num is not None and num <= 0:  # before the data is read
        raise ValueError(f"-n must be positive, got {num}")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"--image-size must be positive, got {image_size}")
    channels = model_channels(model, meta) if model is not None else None
    ds = datasets.load_dataset(name, split, image_size=image_size, channels=channels if channels in (1, 3) else None)
    ds = ds.subset(take(num, len(ds), name, split, DEFAULT_NUM))
    if model is not None and len(ds):
        device = next((p.device for p in model.parameters()), None) if isinstance(model, nn.Module) else None
        first = ds.x[0:1]
        out = check_fits(model, first.to(device) if device is not None else first, meta, f"--data {name}", ds.task)
        if labels:
            check_labels(ds.y, out, f"--data {name}")
    return ds


def bounds_of(meta: dict[str, Any]) -> Bounds:
    """The bounds in ``model.json`` (pixel space; scalars or per channel), ``(0, 1)`` by default."""
    return check_bounds(meta.get("bounds") or (0.0, 1.0), "model.json bounds")


def output_folder(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON (NaN written as null, a mapping led by ``schema_version``), atomically."""
    from salmap.evaluation.store import SCHEMA_VERSION, atomic_write

    if isinstance(payload, dict):
        payload = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in payload.items() if k != "schema_version"}}
    atomic_write(path, json.dumps(_clean(payload), indent=2).encode())
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Print rows as an aligned plain-text table."""

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
