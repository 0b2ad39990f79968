"""ISI: known answers on a linear model, L0 bookkeeping, budgets, bounds, success, state, CLI, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from salmap import data, models
from salmap.attacks import ISI, random_targets
from salmap.cli import main

INDICATORS = ["relevance", "sensitivity"]


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small conv net trained on the 8x8 digits in a few seconds, and correctly classified test images."""
    torch.manual_seed(0)
    x, y = data.load("digits", "train")
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, yt = data.load("digits", "test")
    with torch.no_grad():
        ok = net(xt).argmax(1) == yt
    assert ok.float().mean() > 0.9
    return net, xt[ok][:40], yt[ok][:40]


def linear_model() -> nn.Linear:
    """Z_0 = 3 x0 - x1 + 0.6 x2 + 2 x3 + 10, Z_1 = 0: class 0 stays predicted for any x in [0, 1]^4."""
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -1.0, 0.6, 2.0], [0.0, 0.0, 0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([10.0, 0.0]))
    return lin


@pytest.mark.parametrize(
    ("indicator", "steps", "expected"),
    [
        # sensitivity ranks |g| = (3, 1, 0.6, 2); feature 3 already sits at the bound it would move to
        ("sensitivity", 1, [0.0, 0.5, 1.0, 0.0]),
        ("sensitivity", 2, [0.0, 1.0, 1.0, 0.0]),
        ("sensitivity", 3, [0.0, 1.0, 0.0, 0.0]),
        # relevance given up: (x - b) g = (0.3, 0.5, 0.6, -): feature 2 first, then 1, then 0
        ("relevance", 1, [0.1, 0.5, 0.0, 0.0]),
        ("relevance", 2, [0.1, 1.0, 0.0, 0.0]),
        ("relevance", 3, [0.0, 1.0, 0.0, 0.0]),
    ],
)
def test_l0_known_answers_on_a_linear_model(indicator: str, steps: int, expected: list[float]) -> None:
    x = torch.tensor([[0.1, 0.5, 1.0, 0.0]])
    result = ISI(linear_model(), indicator=indicator, norm="l0", max_iter=steps)(x, y=0)
    torch.testing.assert_close(result.x_adv, torch.tensor([expected]))
    assert int(result.iterations[0]) == steps and not bool(result.success[0])


def three_class_model() -> nn.Linear:
    """Z = W x + b with three classes; at x0 below the order is Z_0 > Z_2 > Z_1."""
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 1.0], [-1.0, 0.5, 2.0]]))
        lin.bias.copy_(torch.tensor([1.0, 0.0, 0.5]))
    return lin


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize(
    ("objective", "targeted", "cotangent"),
    [
        # untargeted, label 0, runner-up 2: F = Z_0 (logit) or Z_0 - Z_2 (margin)
        ("logit", False, [1.0, 0.0, 0.0]),
        ("margin", False, [1.0, 0.0, -1.0]),
        (None, False, [1.0, 0.0, 0.0]),
        # targeted at class 1, rival 0 (the top class): F = -Z_1 (logit) or Z_0 - Z_1 (margin)
        ("logit", True, [0.0, -1.0, 0.0]),
        ("margin", True, [1.0, -1.0, 0.0]),
        (None, True, [1.0, -1.0, 0.0]),
    ],
)
def test_significance_of_each_objective_on_a_linear_model(indicator, objective, targeted, cotangent) -> None:
    lin = three_class_model()
    x = torch.tensor([[0.4, 0.2, 0.9]])
    label = torch.tensor([1 if targeted else 0])
    logits, sig, direction = ISI(lin, indicator=indicator, objective=objective).significance(x, label, targeted)
    torch.testing.assert_close(logits, lin(x).detach())
    g = torch.tensor(cotangent) @ lin.weight.detach()  # dF/dx; LRP-epsilon of a linear layer has the same g~
    torch.testing.assert_close(direction[0], -g.sign())
    if indicator == "sensitivity":
        torch.testing.assert_close(sig[0], g.abs())
    else:
        bound = torch.where(g < 0, 1.0, 0.0)  # the bound each feature moves to
        torch.testing.assert_close(sig[0], (x[0] - bound) * g, rtol=1e-5, atol=1e-6)


def test_l0_stops_when_no_feature_can_move() -> None:
    x = torch.tensor([[0.1, 0.5, 1.0, 0.0]])
    result = ISI(linear_model(), indicator="sensitivity", norm="l0", max_iter=10)(x, y=0)
    assert int(result.iterations[0]) == 3 and float(result.l0[0]) == 3


@pytest.mark.parametrize("indicator", INDICATORS)
def test_l0_changes_exactly_one_new_feature_per_iteration(digits_model, indicator: str) -> None:
    net, x, y = digits_model
    previous = x
    for steps in range(1, 6):
        result = ISI(net, indicator=indicator, norm="l0", max_iter=steps)(x, y=y)
        assert torch.equal(result.l0, result.iterations.float())
        changed = (result.x_adv != x).flatten(1)
        assert torch.all((result.x_adv.flatten(1)[changed] == 0) | (result.x_adv.flatten(1)[changed] == 1))
        # against the run one iteration shorter: one more feature for the samples that went on
        went_on = result.iterations == steps
        new = (result.x_adv != previous).flatten(1).sum(1)
        assert torch.all(new[went_on] == 1) and torch.all(new[~went_on] == 0)
        assert torch.all((previous != x).flatten(1) <= changed)
        previous = result.x_adv


@pytest.mark.parametrize("indicator", INDICATORS)
def test_budgets_and_bounds(digits_model, indicator: str) -> None:
    net, x, y = digits_model
    x = x * 1.6 - 0.8  # inputs in [-0.8, 0.8], bounds (-1, 1); the model does not need to be good here
    bounds = (-1.0, 1.0)
    l0 = ISI(net, indicator=indicator, norm="l0", max_iter=4, n_features=3, bounds=bounds)(x, y=y)
    assert torch.all(l0.l0 <= 3 * l0.iterations) and torch.all(l0.iterations <= 4)
    changed = l0.x_adv[l0.x_adv != x]
    assert torch.all((changed == -1.0) | (changed == 1.0))
    l2 = ISI(net, indicator=indicator, norm="l2", eps=0.3, max_iter=5, n_features=4, bounds=bounds)(x, y=y)
    assert torch.all(l2.l0 <= 4 * l2.iterations) and torch.all(l2.linf <= 0.3 * l2.iterations + 1e-6)
    assert torch.all(l2.l2 <= 0.3 * 2 * l2.iterations + 1e-6)  # sqrt(n) * eps per iteration, n = 4
    linf = ISI(net, indicator=indicator, norm="linf", eps=0.05, max_iter=6, bounds=bounds)(x, y=y)
    assert torch.all(linf.linf <= 0.05 * linf.iterations + 1e-6)
    for r in (l0, l2, linf):
        assert r.x_adv.min() >= -1.0 and r.x_adv.max() <= 1.0


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize("norm", ["l0", "l2", "linf"])
def test_untargeted_success(digits_model, indicator: str, norm: str) -> None:
    net, x, y = digits_model
    result = ISI(net, indicator=indicator, norm=norm, eps=0.1, max_iter=30)(x, y=y)
    assert result.success_rate >= 0.9
    assert torch.all(result.pred_after[result.success] != y[result.success])
    # success stops a sample: the last iteration is the one that flipped it
    assert torch.all(result.iterations[result.success] >= 1)


@pytest.mark.parametrize("indicator", INDICATORS)
def test_targeted_success(digits_model, indicator: str) -> None:
    net, x, y = digits_model
    target = random_targets(y, 10, seed=1)
    result = ISI(net, indicator=indicator, norm="l0", max_iter=30)(x, target=target)
    assert result.success_rate >= 0.8
    assert torch.all(result.pred_after[result.success] == target[result.success])
    linf = ISI(net, indicator=indicator, norm="linf", eps=0.05, max_iter=30)(x, target=target)
    assert linf.success_rate >= 0.8


def test_already_successful_samples_are_left_alone(digits_model) -> None:
    net, x, y = digits_model
    wrong = (y + 3) % 10
    result = ISI(net, norm="l0")(x[:5], y=wrong[:5])
    assert torch.equal(result.x_adv, x[:5]) and torch.all(result.iterations == 0) and result.success.all()


@pytest.mark.parametrize("indicator", INDICATORS)
def test_batched_equals_one_by_one(digits_model, indicator: str) -> None:
    net, x, y = digits_model
    attack = ISI(net, indicator=indicator, norm="l0", max_iter=12)
    batch = attack(x[:6], y=y[:6])
    for i in range(6):
        one = attack(x[i : i + 1], y=y[i : i + 1])
        torch.testing.assert_close(one.x_adv, batch.x_adv[i : i + 1])
        assert int(one.iterations[0]) == int(batch.iterations[i])


@pytest.mark.parametrize("indicator", INDICATORS)
def test_input_and_model_unchanged(digits_model, indicator: str) -> None:
    net, x, y = digits_model
    x = x[:8].clone()
    x_before = x.clone()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        ISI(net, indicator=indicator, norm="l0", max_iter=5)(x, y=y[:8])
        assert torch.equal(x, x_before)
        assert net.training and all(p.requires_grad for p in net.parameters())
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
        assert all(not m._forward_hooks for m in net.modules())
    finally:
        net.eval()


def test_bad_input() -> None:
    net = linear_model()
    with pytest.raises(ValueError, match="indicator"):
        ISI(net, indicator="saliency")
    with pytest.raises(ValueError, match="norm"):
        ISI(net, norm="l1")
    with pytest.raises(ValueError, match="eps"):
        ISI(net, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        ISI(net, eps=-0.1)
    with pytest.raises(ValueError, match="max_iter"):
        ISI(net, max_iter=0)
    with pytest.raises(ValueError, match="n_features"):
        ISI(net, n_features=0)
    with pytest.raises(ValueError, match="lrp_composite"):
        ISI(net, lrp_composite="magic")
    with pytest.raises(ValueError, match="objective"):
        ISI(net, objective="loss")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        ISI(lambda t: t, indicator="relevance")
    with pytest.raises(ValueError, match="Softmax"):
        ISI(nn.Sequential(nn.Linear(4, 2), nn.Softmax(1)))(torch.rand(1, 4), y=0)


def test_cli_isi_end_to_end(tmp_path) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "lenet"
    models.save(models.build("lenet"), folder)
    out = tmp_path / "out"
    code = main(["attack", "isi", "--model", str(folder), "--num", "4", "--max-iter", "3", "--indicator",
                 "sensitivity", "--norm", "l0", "--objective", "margin", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["attack"] == "isi" and len(results["samples"]) == 4
    assert "objective='margin'" in results["settings"]
    assert all(s["l0"] <= 3 for s in results["samples"])
    with pytest.raises(SystemExit) as stop:  # a usage error: --eps must be in (0, inf)
        main(["attack", "isi", "--model", str(folder), "--num", "2", "--eps", "0", "--norm", "l2", "--out", str(out)])
    assert stop.value.code == 2


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize(("steps", "expected"), [
    # centred relevance (x - 0.5) g = (-1.2, 0, 0.3, -1.0); feature 1 sits at the middle and never moves;
    # the two best (features 2 and 3) move by eps towards the middle
    (1, [0.1, 0.5, 0.9, 0.1]),
    (2, [0.1, 0.5, 0.8, 0.2]),
])
def test_l2_authors_rule_known_answers_on_a_linear_model(indicator: str, steps: int, expected: list[float]) -> None:
    x = torch.tensor([[0.1, 0.5, 1.0, 0.0]])
    attack = ISI(linear_model(), indicator=indicator, norm="l2", n_features=2, eps=0.1, max_iter=steps)
    assert attack.l2_rule == "authors"
    torch.testing.assert_close(attack(x, y=0).x_adv, torch.tensor([expected]))
    # The gradient-signed rule ranks by |g| or (x - b) g and moves along -sign(g).
    signed = ISI(linear_model(), indicator=indicator, norm="l2", n_features=2, eps=0.1, max_iter=1, l2_rule="gradient")
    first = [0.0, 0.6, 1.0, 0.0] if indicator == "sensitivity" else [0.1, 0.6, 0.9, 0.0]
    torch.testing.assert_close(signed(x, y=0).x_adv, torch.tensor([first]))


def test_l2_authors_rule_moves_towards_the_middle_of_other_bounds(digits_model) -> None:
    model, x, y = digits_model
    bounds = (-1.0, 1.0)
    xs = x * 2 - 1
    r = ISI(model, norm="l2", n_features=5, eps=0.05, max_iter=3, bounds=bounds)(xs, y=y)
    moved = r.x_adv != xs
    # Every change brings the feature closer to 0, the middle of (-1, 1), by 0.05 per move.
    assert bool(((r.x_adv.abs() < xs.abs()) | ~moved).all())
    assert int(moved.flatten(1).sum(1).max()) <= 15
    from salmap import registry

    param = registry.get_attack("isi").param_map["l2_rule"]
    assert param.choices == ("authors", "gradient") and param.default == "authors"
    with pytest.raises(ValueError, match="l2_rule must be one of"):
        ISI(model, l2_rule="middle")
