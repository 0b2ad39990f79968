"""The command line with someone's own model: --mean/--std and model.json normalisation give the
adversarial examples of the composition written by hand; --model-arg and --output-key."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from salmap import models
from salmap.cli import main
from salmap.models import Normalized

MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"

FACTORIES = '''
import torch
from torch import nn
from salmap import models


class ByHand(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("m", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.m) / self.s)


def composed(checkpoint):
    return ByHand(models.load(checkpoint))


def as_dict(checkpoint, key="scores"):
    net = models.load(checkpoint)

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"hidden": x.flatten(1), key: self.net(x)}

    return D()
'''


@pytest.fixture(scope="module")
def colour_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 16, 16), dtype=np.float32)
    np.savez(root / "colour.npz", x=x, y=np.arange(40) % 4)
    torch.manual_seed(0)
    net = models.build("lenet", in_channels=3, num_classes=4, input_size=(16, 16))
    meta = {"input_shape": [3, 16, 16], "bounds": [0.0, 1.0]}
    models.save(net, root / "plain", meta)
    models.save(Normalized(net, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), root / "normalized", meta)
    (root / "own_factories.py").write_text(FACTORIES)
    return root


def _samples(out):
    return json.loads((out / "results.json").read_text())["samples"]


@pytest.mark.slow
@pytest.mark.parametrize("attack,flags", [("pgd", ["--eps", "0.05", "--steps", "4"]),
                                          ("jsma", ["--gamma", "0.02", "--targeted", "next"])])
def test_cli_normalisation_three_ways_give_the_same_attack(colour_setup, tmp_path, monkeypatch, attack, flags):
    root = colour_setup
    monkeypatch.syspath_prepend(str(root))
    common = ["attack", attack, "--data", f"npz:{root / 'colour.npz'}", "-n", "6", "--batch-size", "3", *flags]
    runs = {
        "flags": ["--model", str(root / "plain"), "--mean", MEAN, "--std", STD],
        "model.json": ["--model", str(root / "normalized")],
        "by hand": ["--model", "own_factories:composed", "--allow-code", "--model-arg", f"checkpoint={root / 'plain'}"],
    }
    results = {}
    for name, model_flags in runs.items():
        out = tmp_path / name.replace(" ", "_").replace(".", "_")
        assert main([*common, *model_flags, "--out", str(out)]) == 0, name
        results[name] = _samples(out)
    assert results["flags"] == results["by hand"] == results["model.json"]
    assert len(results["flags"]) == 6
    sys.modules.pop("own_factories", None)


def test_cli_output_key_and_bad_flags(colour_setup, tmp_path, monkeypatch, capsys):
    root = colour_setup
    monkeypatch.syspath_prepend(str(root))
    base = ["attack", "fgsm", "--data", f"npz:{root / 'colour.npz'}", "-n", "4",
            "--model", "own_factories:as_dict", "--allow-code", "--model-arg", f"checkpoint={root / 'plain'}"]
    assert main([*base, "--out", str(tmp_path / "a")]) != 0
    assert "has no key 'logits'" in capsys.readouterr().err
    assert main([*base, "--output-key", "scores", "--out", str(tmp_path / "b")]) == 0
    assert main(["attack", "fgsm", "--model", str(root / "plain"), "--data", f"npz:{root / 'colour.npz'}",
                 "--mean", "0.5,0.5", "--std", "0.2,0.2", "--out", str(tmp_path / "c")]) != 0
    assert "one value per input channel (3)" in capsys.readouterr().err
    assert main(["attack", "fgsm", "--model", str(root / "plain"), "--data", f"npz:{root / 'colour.npz'}",
                 "--mean", MEAN, "--std", "0.2,-0.1,0.2", "--out", str(tmp_path / "d")]) != 0
    assert "std must be > 0" in capsys.readouterr().err
    assert main(["attack", "fgsm", "--model", str(root / "plain"), "--data", f"npz:{root / 'colour.npz'}",
                 "--mean", MEAN, "--out", str(tmp_path / "e")]) != 0
    assert "--mean and --std go together" in capsys.readouterr().err
    sys.modules.pop("own_factories", None)


@pytest.mark.slow
def test_run_file_normalization_and_model_args(colour_setup, tmp_path, monkeypatch, capsys):
    import yaml

    root = colour_setup
    monkeypatch.syspath_prepend(str(root))
    norm = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    run = {
        "output": str(tmp_path / "out"), "data": {"name": f"npz:{root / 'colour.npz'}", "num": 6},
        "batch_size": 3, "report": False, "figures": False,
        "models": [{"name": "flags", "path": str(root / "plain"), "normalization": norm},
                   {"name": "hand", "path": "own_factories:composed", "model_args": {"checkpoint": str(root / "plain")}}],
        "attacks": [{"attack": "pgd", "params": {"eps": 0.05, "steps": 3}}],
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["evaluate", str(tmp_path / "run.yaml"), "--no-progress", "--allow-code"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    by_model: dict[str, list] = {}
    for r in rows:
        r.pop("seconds", None)
        by_model.setdefault(r.pop("model"), []).append({k: v for k, v in r.items() if "model" not in k})
    assert len(by_model) == 2
    first, second = by_model.values()
    assert first == second and len(first) == 6

    run["models"][0]["normalization"] = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}
    run["output"] = str(tmp_path / "bad")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(run))
    assert main(["evaluate", str(tmp_path / "bad.yaml"), "--no-progress", "--allow-code"]) == 2
    assert "models[0].normalization: std must be > 0" in capsys.readouterr().err
    sys.modules.pop("own_factories", None)
