"""Shared pieces of the evaluation tests: a tiny saved model and run files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

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
