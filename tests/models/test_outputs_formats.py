"""Any output (tuples, dicts, ModelOutputs) and any format (.pt2, TorchScript, module:factory)."""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from salmap.attacks import FGSM, ISI, JSMA, PGD
from salmap.explain import LRP, GradCAM, GradientSaliency, Occlusion
from salmap.gradients import frozen
from salmap.models import SelectOutput, load, logits_of


class Wrapped(nn.Module):
    """Returns the logits of ``net`` in another container."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        z = self.net(x)
        if self.kind == "tuple":
            return z, z.detach() * 0
        if self.kind == "dict":
            return {"logits": z, "features": x.flatten(1)}
        if self.kind == "scores":
            return OrderedDict(hidden=x.flatten(1), scores=z)
        return [z]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def net_and_batch():
    net = small_cnn().eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return net, x, torch.arange(5)


@pytest.mark.parametrize("kind", ["tuple", "dict", "list"])
def test_tuples_dicts_and_lists_give_their_logits(net_and_batch, kind):
    net, x, y = net_and_batch
    model = Wrapped(net, kind)
    for make in (lambda m: PGD(m, eps=0.1, steps=3), lambda m: FGSM(m, eps=0.1)):
        assert torch.equal(make(model)(x, y=y).x_adv, make(net)(x, y=y).x_adv)
    res = JSMA(model, gamma=0.2, strict_targets=False)(x, target=(y + 1) % 10)
    assert torch.equal(res.x_adv, JSMA(net, gamma=0.2, strict_targets=False)(x, target=(y + 1) % 10).x_adv)
    for make in (lambda m: GradientSaliency(m), lambda m: Occlusion(m, patch=2)):
        assert torch.equal(make(model).attribute(x, target=y), make(net).attribute(x, target=y))
    assert torch.equal(GradCAM(model, layer="net.0").attribute(x, target=y),
                       GradCAM(net, layer="0").attribute(x, target=y))


def test_output_key_picks_another_entry(net_and_batch):
    net, x, y = net_and_batch
    model = Wrapped(net, "scores")
    with pytest.raises(ValueError, match="has no key 'logits'.*keys found: 'hidden', 'scores'"):
        PGD(model, eps=0.1, steps=1)(x, y=y)
    picked = SelectOutput(model, output_key="scores")
    assert torch.equal(PGD(picked, eps=0.1, steps=2)(x, y=y).x_adv, PGD(net, eps=0.1, steps=2)(x, y=y).x_adv)
    with pytest.raises(ValueError, match="no key 'nope'; keys found: 'hidden', 'scores'"):
        GradientSaliency(SelectOutput(model, "nope")).attribute(x)


def test_other_outputs_are_a_clear_error():
    with pytest.raises(ValueError, match="got builtins.str"):
        logits_of("logits")
    with pytest.raises(ValueError, match="empty tuple"):
        logits_of(())

    class Odd(nn.Module):
        def forward(self, x):
            return {1, 2}

    with pytest.raises(ValueError, match="got builtins.set"):
        FGSM(Odd())(torch.rand(2, 1, 4, 4), y=[0, 1])


def _export(net: nn.Module, x: torch.Tensor, path) -> str:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (x[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return str(path)


def test_pt2_models_are_attacked_and_explained(tmp_path, net_and_batch):
    net, x, y = net_and_batch
    exported = load(_export(net, x, tmp_path / "net.pt2"), trust=True)
    with pytest.raises(NotImplementedError):
        exported.eval()  # torch.export modules refuse eval()/train(): salmap never calls them
    with frozen(exported):
        pass
    for make in (lambda m: PGD(m, eps=0.1, steps=3), lambda m: FGSM(m, eps=0.1),
                 lambda m: ISI(m, indicator="sensitivity", max_iter=3)):
        torch.testing.assert_close(make(exported)(x, y=y).x_adv, make(net)(x, y=y).x_adv)
    res = JSMA(exported, gamma=0.2, strict_targets=False)(x, target=(y + 1) % 10)
    assert res.success.dtype == torch.bool and res.x_adv.shape == x.shape
    for make in (lambda m: GradientSaliency(m), lambda m: Occlusion(m, patch=2)):
        torch.testing.assert_close(make(exported).attribute(x, target=y), make(net).attribute(x, target=y))
    with pytest.raises(ValueError, match="torch.export .* no hook fires"):
        GradCAM(exported, layer="0")


def test_torchscript_attacks_and_explainers_or_a_clear_error(tmp_path, net_and_batch):
    net, x, y = net_and_batch
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.trace(net, x[:1]), str(path))
    scripted = load(path)
    for make in (lambda m: PGD(m, eps=0.1, steps=3), lambda m: JSMA(m, gamma=0.1, strict_targets=False)):
        kwargs = {"target": (y + 1) % 10} if "JSMA" in repr(make(scripted)) else {"y": y}
        torch.testing.assert_close(make(scripted)(x, **kwargs).x_adv, make(net)(x, **kwargs).x_adv)
    torch.testing.assert_close(GradientSaliency(scripted).attribute(x, target=y),
                               GradientSaliency(net).attribute(x, target=y))
    with pytest.raises(ValueError, match="TorchScript modules do not support hooks"):
        GradCAM(scripted, layer="0")
    with pytest.raises(ValueError, match="LRP needs forward hooks .* TorchScript modules"):
        LRP(scripted)


def test_factory_keyword_arguments(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(
        "import torch.nn as nn\n"
        "def mlp(width=4, classes=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load("my_factories:mlp", allow_code=True, width=7, classes=5)
    assert model[1].out_features == 7 and model[3].out_features == 5
    sys.modules.pop("my_factories", None)


def test_pt2_model_is_evaluated_from_the_cli(tmp_path, net_and_batch):
    import json

    from salmap.cli import main

    net, x, _ = net_and_batch  # takes 1x8x8 images and gives 10 classes: scikit-learn's digits
    path = _export(net, x, tmp_path / "net.pt2")
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", path, "--data", "digits", "--attack", "fgsm:eps=0.1", "--explain", "gradient",
                 "--num", "6", "--batch-size", "3", "--out", str(out), "--no-progress", "--no-report", "--trust-model"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["model"] == "net.pt2" and r["linf"] <= 0.1 + 1e-6 for r in rows)
    assert main(["attack", "pgd", "--model", path, "--data", "digits", "-n", "4", "--eps", "0.1", "--steps", "2",
                 "--out", str(tmp_path / "pgd"), "--trust-model"]) == 0
