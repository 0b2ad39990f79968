"""Pieces every sub-command shares: loading a model and data, output folders, JSON, devices."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salmap import data as datasets
from salmap import models


def add_model_data_args(p: argparse.ArgumentParser, data_default: str = "mnist-sample") -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, TorchScript/.pt2 file or module:factory")
    p.add_argument("--data", default=data_default, help=f"dataset name or kind:PATH (default {data_default})")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="dataset split (default test)")
    p.add_argument("-n", "--num", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per batch (default 100)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder for results.json and pictures")


def load_model(source: str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    model, meta = models.load_with_meta(source)
    return model.to(device).eval(), meta


def load_data(name: str, split: str, num: int | None) -> datasets.Dataset:
    ds = datasets.load_dataset(name, split)
    if num is not None and num <= 0:
        raise ValueError(f"--num must be positive, got {num}")
    return ds.subset(min(num, len(ds)) if num is not None else None)


def bounds_of(meta: dict[str, Any]) -> tuple[float, float]:
    b = meta.get("bounds") or (0.0, 1.0)
    return float(b[0]), float(b[1])


def output_folder(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` as JSON (NaN written as null), atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2))
    tmp.replace(path)
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
