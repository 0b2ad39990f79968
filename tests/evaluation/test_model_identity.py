"""A ``module:factory`` model is identified in a run's fingerprint by the model it builds (its weights
and buffers) and by its code: after the user edits the weights the factory loads, or the factory's
source, a resumed ``salmap attack`` / ``salmap evaluate`` refuses to reuse the old model's results and
says what changed; ``--overwrite`` starts afresh; nothing the user owns is deleted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import error_line
from safetensors.torch import save_file
from torch import nn

from salmap.cli import main
from salmap.evaluation.distributed import World
from salmap.evaluation.identity import code_digest, model_hash, module_digest, what_changed
from salmap.evaluation.runner import evaluate
from salmap.evaluation.settings import (
    AttackConfig,
    DataConfig,
    FigureConfig,
    ModelConfig,
    RunConfig,
)

FACTORY = '''
from safetensors.torch import load_file
from torch import nn


def net(weights):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model.load_state_dict(load_file(weights))
    return model
'''


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ident_net:net`` (importable) loading ``weights.safetensors``; the folder holding both."""
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).state_dict().items()},
              str(tmp_path / "weights.safetensors"))
    (tmp_path / "ident_net.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("ident_net", None)


def nudge(weights: Path) -> None:
    """The user retrains: one bias of the weights file moves."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    state["1.bias"][0] += 1e-3
    save_file(state, str(weights))


def attack(factory: Path, out: Path, *extra: str) -> list[str]:
    return ["attack", "fgsm", "--model", "ident_net:net", "--allow-code", "--model-arg",
            f"weights={factory / 'weights.safetensors'}", "--data", "digits", "-n", "6", "--eps", "0.1",
            "--out", str(out), *extra]


def test_the_digest_reads_every_parameter_and_buffer_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    first = module_digest(model)
    assert module_digest(model) == first
    with torch.no_grad():
        model[0].weight[1, 2] += 1e-6
    assert module_digest(model) != first
    with torch.no_grad():
        model[0].weight[1, 2] -= 1e-6
    model[1].running_mean += 1.0  # a buffer
    assert module_digest(model) not in (first, module_digest(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))))
    # a transposed (non-contiguous) tensor hashes its values in row-major order, like its contiguous copy
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    b.weight.data = a.weight.data.t().contiguous().t()
    assert not b.weight.is_contiguous() and module_digest(a) == module_digest(b)
    assert module_digest(nn.Linear(3, 3).half()) != module_digest(nn.Linear(3, 3))


def test_a_factory_is_identified_by_its_weights_and_its_source(factory: Path) -> None:
    from salmap import models

    spec = "ident_net:net"
    built = models.load(spec, allow_code=True, weights=str(factory / "weights.safetensors"))
    first = model_hash(spec, built)
    assert isinstance(first, dict) and first["factory"] == spec
    assert model_hash(spec, models.load(spec, allow_code=True, weights=str(factory / "weights.safetensors"))) == first
    assert model_hash(spec) == spec  # not opened: its name only
    (factory / "ident_net.py").write_text(FACTORY.replace("nn.Flatten(), ", "nn.Flatten(start_dim=1), "))
    assert code_digest(spec, built) != first["code"]
    # a TorchScript part of the model: its code counts too
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    other = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    assert code_digest(spec, scripted) != code_digest(spec, other)


def test_a_resumed_attack_on_an_edited_factory_model_is_refused_and_says_what_changed(
        factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a"
    assert main(attack(factory, out)) == 0
    capsys.readouterr()
    assert main(attack(factory, out)) == 0  # the same model: resumed
    assert "1 batches resumed from an earlier attempt" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["facts"]["models"][0]["factory"] == "ident_net:net"
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "notes.txt").write_text("mine")

    nudge(factory / "weights.safetensors")
    capsys.readouterr()
    assert main(attack(factory, out)) == 2
    err = error_line(capsys, "attack")
    assert "holds a different run" in err and "the weights of the model models[0] (ident_net:net) builds" in err
    assert "source code" not in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "notes.txt"} == before
    weights = (factory / "weights.safetensors").read_bytes()

    # the user's edit of the factory's source is named too
    (factory / "ident_net.py").write_text(FACTORY + "\n# retrained\n")
    sys.modules.pop("ident_net", None)
    assert main(attack(factory, out)) == 2
    assert "the source code of models[0] (ident_net:net)" in error_line(capsys, "attack")

    # --overwrite starts afresh on the new model; the user's files stay
    assert main(attack(factory, out, "--overwrite")) == 0
    assert "resumed from an earlier attempt" not in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine" and (factory / "weights.safetensors").read_bytes() == weights
    assert json.loads((out / "run.json").read_text())["fingerprint"] != run["fingerprint"]


def test_a_changed_setting_is_named(factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a"
    assert main(attack(factory, out)) == 0
    args = attack(factory, out)
    args[args.index("0.1")] = "0.2"
    assert main(args) == 2
    err = error_line(capsys, "attack")
    assert "changed: attacks[0].params.eps" in err and "weights" not in err
    assert what_changed({"settings": {"output": "a", "seed": 1}}, {"output": "b", "seed": 1}, {}) == []


def run_file(factory: Path, out: Path) -> Path:
    path = factory / "run.yaml"
    path.write_text(yaml.safe_dump({
        "output": str(out), "data": {"name": "digits", "num": 4}, "batch_size": 2, "report": False, "figures": False,
        "models": [{"name": "own", "path": "ident_net:net",
                    "model_args": {"weights": str(factory / "weights.safetensors")}}],
        "attacks": [{"attack": "fgsm", "params": {"eps": 0.1}}],
    }))
    return path


def test_a_resumed_evaluate_on_an_edited_factory_model_is_refused(
        factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e"
    run = run_file(factory, out)
    assert main(["evaluate", str(run), "--no-progress", "--allow-code"]) == 0
    assert main(["evaluate", str(run), "--no-progress", "--allow-code"]) == 0
    assert json.loads((out / "summary.json").read_text())["timings"]["units_resumed"] == 2
    capsys.readouterr()
    nudge(factory / "weights.safetensors")
    assert main(["evaluate", str(run), "--no-progress", "--allow-code"]) == 2
    err = error_line(capsys, "evaluate")
    assert "the weights of the model models[0] (ident_net:net) builds" in err


class RankZero(World):
    """Rank 0 of two, alone in this process: what it broadcasts and gathers stays here."""

    def broadcast(self, value: object) -> object:
        return value

    def barrier(self) -> None:
        return None

    def gather(self, value: object) -> list[object]:
        return [value]

    def shard(self, items):  # type: ignore[no-untyped-def]
        return list(items)


def test_under_torchrun_rank_zero_fingerprints_the_factory_model(factory: Path, tmp_path: Path) -> None:
    def cfg() -> RunConfig:
        return RunConfig(
            output=str(tmp_path / "t"), models=[ModelConfig(name="own", path="ident_net:net",
                                                             model_args={"weights": str(factory / "weights.safetensors")})],
            attacks=[AttackConfig(name="fgsm", attack="fgsm", targets="none", params={"eps": 0.1})],
            data=DataConfig(name="digits", num=4), batch_size=2, figures=FigureConfig(enabled=False), report=False,
            allow_code=True,
        )

    evaluate(cfg(), progress=False, world=RankZero(rank=0, size=2))
    facts = json.loads((tmp_path / "t" / "run.json").read_text())["facts"]
    assert facts["models"][0]["factory"] == "ident_net:net"
    assert evaluate(cfg(), progress=False, world=RankZero(rank=0, size=2)).resumed == 2
    nudge(factory / "weights.safetensors")
    with pytest.raises(ValueError, match="the weights of the model models"):
        evaluate(cfg(), progress=False, world=RankZero(rank=0, size=2))


def test_a_resumed_explain_on_an_edited_factory_model_is_refused(
        factory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    args = ["explain", "--method", "gradient", "--model", "ident_net:net", "--allow-code", "--model-arg",
            f"weights={factory / 'weights.safetensors'}", "--data", "digits", "-n", "4", "--out", str(out), "-q"]
    assert main(args) == 0
    assert main(args) == 0  # the same model: resumed
    nudge(factory / "weights.safetensors")
    capsys.readouterr()
    assert main(args) == 2
    assert "the weights of the model models[0] (ident_net:net) builds" in error_line(capsys, "explain")
