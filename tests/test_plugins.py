"""Third-party attacks and explainers through the entry-point groups ``salmap.attacks`` and
``salmap.explainers``: a tiny package installed in the test (a ``.dist-info`` with
``entry_points.txt`` on the path) shows in ``--help`` and runs from the CLI and a run file,
with no change to salmap. Every command runs in a subprocess, as a user would run it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from _evaluate_support import PYTHON, save_lenet, subprocess_env

PLUGIN = '''
"""A third-party package adding one attack and one explainer to salmap."""

import torch

from salmap.attacks.base import Attack
from salmap.explain.base import Explainer
from salmap.registry import register_attack, register_explainer


@register_attack("toy-sign", ranges={"eps": "[0, inf)"}, budget={"linf": "eps"})
class ToySign(Attack):
    """Toy attack: push every feature by eps away from the middle of the bounds.

    Parameters
    ----------
    eps: the step, in the input's units.
    """

    def __init__(self, model, eps: float = 0.1, bounds=(0.0, 1.0)):
        super().__init__(model, bounds)
        self.eps = eps

    def _run(self, x, labels, targeted, clean):
        return x + self.eps * torch.sign(x - 0.5), torch.ones(x.shape[0], dtype=torch.long, device=x.device)


@register_explainer("toy-abs")
class ToyAbs(Explainer):
    """Toy explainer: the input's magnitude times a scale.

    Parameters
    ----------
    scale: factor applied to the map.
    """

    def __init__(self, model, scale: float = 1.0):
        super().__init__(model)
        self.scale = scale

    def _attribute(self, x, target):
        return x.abs() * self.scale


class Unregistered(Explainer):
    """An explainer without the decorator: registered under its entry point's name."""

    def _attribute(self, x, target):
        return x
'''

ENTRY_POINTS = """
[salmap.attacks]
toy-sign = toy_salmap_plugin:ToySign

[salmap.explainers]
toy-abs = toy_salmap_plugin:ToyAbs
toy-plain = toy_salmap_plugin:Unregistered
toy-broken = toy_salmap_missing:Nothing
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed plugin package, a lenet checkpoint and a small dataset."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toy_salmap_plugin.py").write_text(PLUGIN)
    dist = root / "toy_salmap_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-salmap-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    save_lenet(root / "lenet")
    gen = np.random.default_rng(0)
    x = gen.random((6, 28, 28)).astype(np.float32)
    np.savez(root / "d.npz", x=x, y=np.arange(6) % 10, x_test=x, y_test=np.arange(6) % 10)
    return root


def salmap(site: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["PYTHONPATH"] = env["PYTHONPATH"] + ":" + str(site)
    return subprocess.run([PYTHON, "-m", "salmap", *argv], cwd=cwd or site, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_plugins_show_in_every_help(site: Path) -> None:
    top = salmap(site, "--help")
    assert top.returncode == 0, top.stderr
    assert "toy-sign  Toy attack: push every feature by eps away from the middle of the bounds. " \
           "(plugin: toy_salmap_plugin)" in top.stdout
    assert "toy-abs    Toy explainer: the input's magnitude times a scale. (plugin: toy_salmap_plugin)" in top.stdout
    assert "toy-plain" in top.stdout and "toy-broken" not in top.stdout
    assert "plugin 'toy-broken' could not be loaded" in top.stderr  # a warning; salmap goes on

    attack = salmap(site, "attack", "--help")
    assert "toy-sign" in attack.stdout and "jsma" in attack.stdout
    one = salmap(site, "attack", "toy-sign", "--help")
    assert "--eps X" in " ".join(one.stdout.split()) and "[in [0, inf); default: 0.1]" in " ".join(one.stdout.split())

    explain = salmap(site, "explain", "--help")
    text = " ".join(explain.stdout.split())
    assert "toy-abs (ToyAbs): --scale X factor applied to the map. [default: 1.0]" in text
    assert "toy-abs" in text.split("--method NAME", 1)[1].split("(default gradient)", 1)[0]


@pytest.mark.slow
def test_plugins_run_from_the_command_line(site: Path, tmp_path: Path) -> None:
    data = f"npz:{site / 'd.npz'}"
    proc = salmap(site, "attack", "toy-sign", "--model", str(site / "lenet"), "--data", data, "-n", "4",
                  "--eps", "0.2", "--out", str(tmp_path / "attack"))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "attack" / "results.json").read_text())
    assert results["attack"] == "toy-sign" and "eps=0.2" in results["settings"]
    assert all(abs(s["linf"] - 0.2) < 1e-6 or s["linf"] < 0.2 for s in results["samples"])

    proc = salmap(site, "explain", "--model", str(site / "lenet"), "--data", data, "-n", "3", "--method",
                  "toy-abs,gradient", "--scale", "2", "--attack", "toy-sign", "--out", str(tmp_path / "explain"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "explain" / "summary.json").read_text())
    assert set(summary["methods"]) == {"toy-abs", "gradient"}
    assert "scale=2.0" in summary["methods"]["toy-abs"]["settings"]
    assert summary["attack"]["name"] == "toy-sign"


@pytest.mark.slow
def test_plugins_run_from_a_run_file(site: Path, tmp_path: Path) -> None:
    run = {
        "output": str(tmp_path / "eval"), "batch_size": 3,
        "data": {"name": f"npz:{site / 'd.npz'}", "num": 6},
        "models": [{"name": "lenet", "path": str(site / "lenet")}],
        "attacks": [{"attack": "toy-sign", "params": {"eps": 0.05}}, {"attack": "fgsm", "params": {"eps": 0.1}}],
        "explanations": [{"explainer": "toy-abs", "params": {"scale": 3}}],
        "figures": {"samples": 2},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    proc = salmap(site, "evaluate", str(tmp_path / "run.yaml"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    attacks = {r["attack"] for r in summary["results"]}
    assert attacks == {"toy-sign(eps=0.05)", "fgsm(eps=0.1)"}
    rows = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert {r["attack"] for r in rows} == attacks and len(rows) == 12
    assert all(r["linf"] <= 0.05 + 1e-6 for r in rows if r["attack"].startswith("toy-sign"))

    # a misspelt plugin parameter is caught before any work, with the plugin's own names
    run["attacks"] = [{"attack": "toy-sign", "params": {"epss": 0.05}}]
    run["output"] = str(tmp_path / "bad")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(run))
    proc = salmap(site, "evaluate", str(tmp_path / "bad.yaml"))
    assert proc.returncode != 0 and "attacks[0].params.epss: unknown parameter of ToySign (did you mean 'eps'?)" \
        in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_entry_points_are_read_in_process(monkeypatch, tmp_path: Path) -> None:
    """Without a subprocess: a patched entry-point list registers a plugin class lazily."""
    from importlib import metadata

    from salmap import registry
    from salmap.explain.gradient import GradientSaliency

    class Mine(GradientSaliency):
        """A plugin explainer without the decorator."""

    ep = metadata.EntryPoint(name="mine", value="x:y", group="salmap.explainers")
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: Mine)
    monkeypatch.setattr(registry, "_entry_points", lambda group: [ep] if group == "salmap.explainers" else [])
    monkeypatch.setattr(registry, "_LOADED", set())
    monkeypatch.setitem(registry._ENTRIES, "explainer", dict(registry._ENTRIES["explainer"]))
    entry = registry.get_explainer("mine")
    assert entry.cls is Mine and entry.source == Mine.__module__.split(".")[0]
    assert [p.name for p in entry.params] == ["absolute", "times_input", "precision"]
