"""Shared pieces of the evaluation tests: a tiny saved model and run files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from salmap import models

ROOT = Path(__file__).resolve().parents[1]


def save_lenet(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised lenet saved as a checkpoint folder (seeded: the same weights every time)."""
    torch.manual_seed(seed)
    model = models.build("lenet", in_channels=1, num_classes=10, input_size=[28, 28])
    return models.save(model, folder, {"bounds": [0.0, 1.0], "input_shape": [1, 28, 28]})


def write_run(path: Path, **settings: Any) -> Path:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def rows_without_timing(out: Path) -> list[dict[str, Any]]:
    """The rows of a finished run, minus the wall-clock ``seconds`` (the only field allowed to differ)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


def npz_of(path: Path, train: int, test: int | None) -> str:
    """An npz of ``train`` (and, unless ``test`` is None, ``test``) grey 28x28 images of 10 classes,
    as a ``--data`` name."""
    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((n, 1, 28, 28), 0.5, np.float32), np.arange(n, dtype=np.int64) % 10
    x, y = images(train)
    tests = {} if test is None else dict(zip(("x_test", "y_test"), images(test), strict=True))
    np.savez(path, x=x, y=y, **tests)
    return f"npz:{path}"
