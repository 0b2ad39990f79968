"""examples/own_model.py runs end to end (its quick version): a normalised 3x224x224 resnet18
attacked and explained from Python and from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model.py"


@pytest.mark.slow
def test_own_model_example(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path), "--quick"], check=True, env=env,
                   timeout=900, capture_output=True, text=True)
    figures = json.loads((tmp_path / "python.json").read_text())
    assert figures["gradcam_shape"] == figures["occlusion_shape"][:1] + [1, 224, 224]
    assert figures["pgd_linf"] <= 4 / 255 + 1e-6
    assert figures["jsma_l0"] <= 7
    pgd = json.loads((tmp_path / "pgd" / "results.json").read_text())
    flags = json.loads((tmp_path / "pgd-flags" / "results.json").read_text())
    assert len(pgd["samples"]) == 2 and pgd["samples"] == flags["samples"]  # model.json == --mean/--std
    assert all(s["linf"] <= 4 / 255 + 1e-6 for s in pgd["samples"])
    assert len(json.loads((tmp_path / "jsma" / "results.json").read_text())["samples"]) == 2
    assert (tmp_path / "explain" / "explain.png").stat().st_size > 1000
