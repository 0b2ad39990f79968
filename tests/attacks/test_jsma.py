"""JSMA for classifiers: the fast batched attack against a slow reference written from the paper."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import LinearClassifier
from test_pair_search import reference_select
from torch import Tensor, nn

import salmap.pair_search as pair_search_module
from salmap.attacks import JSMA, all_other_targets, select_features

# -- slow references, straight from Papernot et al. 2016 ---------------------------------------


def reference_jsma(model: nn.Module, x: Tensor, label: int, targeted: bool, theta: float, gamma: float,
                   pairs: bool, probabilities: bool, bounds: tuple[float, float] = (0.0, 1.0),
                   saturation: float = 0.01) -> tuple[Tensor, int]:
    """Algorithm 1 + 3 for one sample ``x`` of shape ``(1, ...)``, full Jacobian each iteration.

    The search domain starts as the features farther than ``saturation * (high - low)`` from
    the bound ``theta`` points to (``saturation=0``: not at the bound, as in Algorithm 3).
    """
    low, high = bounds
    margin = saturation * (high - low)

    def scores(v: Tensor) -> Tensor:
        out = model(v.view(x.shape))[0]
        return torch.softmax(out, dim=0) if probabilities else out

    xs = x.detach().reshape(-1).clone()
    n = xs.numel()
    domain = {i for i in range(n) if (xs[i] < high - margin if theta > 0 else xs[i] > low + margin)}
    budget = math.floor(gamma * n)
    per_step = 2 if pairs else 1
    changed = iterations = 0
    increase = (theta > 0) == targeted
    while True:
        with torch.no_grad():
            pred = int(scores(xs).argmax())
        if (pred == label) if targeted else (pred != label):
            break
        if changed + per_step > budget:
            break
        jac = torch.autograd.functional.jacobian(scores, xs)  # (classes, n)
        alpha = jac[label].tolist()
        beta = sum(jac[j] for j in range(jac.shape[0]) if j != label).tolist()
        choice, _ = reference_select(alpha, beta, sorted(domain), increase, pairs)
        if choice is None:
            break
        for i in choice:
            xs[i] = min(max(float(xs[i]) + theta, low), high)
            domain.discard(i)
        changed += per_step
        iterations += 1
    return xs.view(x.shape), iterations


def random_mlp(features: int, classes: int, seed: int, hidden: int = 12) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes)
    ).double().eval()


def random_batch(batch: int, shape: tuple[int, ...], seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=gen, dtype=torch.float64)
    # some features at each bound, so the initial search domain matters, and some within the
    # saturation margin of one (0.995 and 0.005 with the default margin 0.01)
    x[x < 0.15] = 0.0
    x[x > 0.85] = 1.0
    x[(x > 0.5) & (x < 0.55)] = 0.995
    x[(x > 0.45) & (x < 0.5)] = 0.005
    return x


def other_than(pred: Tensor, classes: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (pred + torch.randint(1, classes, pred.shape, generator=gen)) % classes


# -- the attack against the reference ---------------------------------------------------------

REFERENCE_CASES = [
    # (targeted, theta, pairs, probabilities, classes)
    (True, 1.0, True, False, 4),
    (True, -1.0, True, False, 4),
    (True, 1.0, True, True, 4),
    (True, -0.4, True, True, 3),
    (True, 1.0, False, False, 4),
    (True, -1.0, False, True, 17),
    (True, 0.5, True, False, 17),
    (False, 1.0, True, False, 4),
    (False, -1.0, False, False, 3),
    (False, 0.7, True, True, 5),
]


@pytest.mark.parametrize("targeted,theta,pairs,probabilities,classes", REFERENCE_CASES)
def test_attack_matches_paper_reference(targeted, theta, pairs, probabilities, classes):
    shape = (2, 3, 3)
    for seed in range(4):
        model = random_mlp(18, classes, seed)
        x = random_batch(3, shape, seed)
        with torch.no_grad():
            pred = model(x).argmax(1)
        labels = other_than(pred, classes, seed) if targeted else pred
        saturation = 0.0 if seed % 2 else 0.01  # the literal domain of Algorithm 3, and the default
        attack = JSMA(model, theta=theta, gamma=0.9, pairs=pairs, probabilities=probabilities, saturation=saturation)
        result = attack(x, target=labels) if targeted else attack(x, y=labels)
        for i in range(3):
            ref, iterations = reference_jsma(model, x[i : i + 1], int(labels[i]), targeted, theta, 0.9,
                                             pairs, probabilities, saturation=saturation)
            assert torch.equal(result.x_adv[i : i + 1], ref), (seed, i)
            assert int(result.iterations[i]) == iterations


def test_linear_model_known_pair():
    # t = 1: alpha = W[1], beta = W[0]. Pair sums (a, b): (0,1) (3,-2) -> 6, (0,2) (4,-3) -> 12,
    # (1,2) (5,-3) -> 15, (2,3) (2,-1) -> 2; (0,3) and (1,3) are not admissible. Best: (1, 2).
    weight = torch.tensor([[-1.0, -1.0, -2.0, 1.0], [1.0, 2.0, 3.0, -1.0]])
    model = LinearClassifier(weight)
    index, score, found = select_features(weight[1:2], weight[0:1], torch.ones(1, 4, dtype=torch.bool), True)
    assert index.tolist() == [[1, 2]] and score.tolist() == [15.0] and found.tolist() == [True]
    x = torch.zeros(1, 4)  # both logits 0: predicts class 0
    result = JSMA(model, theta=1.0, gamma=1.0)(x, target=torch.tensor([1]))
    assert result.x_adv.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert result.iterations.tolist() == [1] and result.success.tolist() == [True]
    # single features: scores 1, 2, 6 and feature 3 not admissible -> feature 2
    single = JSMA(model, theta=1.0, gamma=1.0, pairs=False)(x, target=torch.tensor([1]))
    assert single.x_adv.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    # the same model, untargeted from class 1: push Z_1 down by decreasing (theta < 0) features 1, 2
    up = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    away = JSMA(model, theta=-1.0, gamma=1.0)(up, y=torch.tensor([1]))
    assert away.x_adv.tolist() == [[0.0, 0.0, 0.0, 0.0]] and away.success.tolist() == [True]


# -- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [3, 17])
@pytest.mark.parametrize("theta", [0.3, -0.3])
def test_properties(classes, theta):
    model = random_mlp(48, classes, seed=classes).float()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    x = random_batch(6, (3, 4, 4), seed=1).float()
    x_before = x.clone()
    with torch.no_grad():
        target = other_than(model(x).argmax(1), classes, seed=2)
    gamma = 0.25
    result = JSMA(model, theta=theta, gamma=gamma, bounds=(0.0, 1.0))(x, target=target)
    assert torch.equal(x, x_before)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (result.l0 <= math.floor(gamma * 48)).all()
    delta = (result.x_adv - x).flatten(1)
    # each feature changed once: by theta, or up to the bound it was clipped at
    room = (1 - x).flatten(1) if theta > 0 else -x.flatten(1)
    once = torch.where(room.abs() < abs(theta), room, torch.full_like(room, theta))
    changed = delta != 0
    assert torch.allclose(delta[changed], once[changed])
    assert (result.l0 == 2 * result.iterations).all()
    assert torch.equal(result.success, result.pred_after == target)
    # a sample that stopped short of the budget and of the goal had no admissible pair left
    assert (result.iterations <= math.floor(gamma * 48) // 2).all()


def test_batched_equals_one_by_one():
    model = random_mlp(32, 6, seed=5).float()
    x = random_batch(5, (2, 4, 4), seed=6).float()
    with torch.no_grad():
        target = other_than(model(x).argmax(1), 6, seed=7)
    attack = JSMA(model, theta=1.0, gamma=0.5)
    batched = attack(x, target=target)
    for i in range(5):
        alone = attack(x[i : i + 1], target=target[i : i + 1])
        assert torch.equal(alone.x_adv[0], batched.x_adv[i])
        assert alone.iterations.tolist() == batched.iterations[i : i + 1].tolist()


def test_chunked_and_candidates_equal_exact(monkeypatch):
    model = random_mlp(64, 5, seed=8).float()
    x = random_batch(4, (1, 8, 8), seed=9).float()
    with torch.no_grad():
        target = other_than(model(x).argmax(1), 5, seed=10)
    exact = JSMA(model, gamma=0.5)(x, target=target)
    for kwargs in ({"chunk_size": 1}, {"chunk_size": 7}, {"candidates": 64}, {"candidates": 1000}):
        other = JSMA(model, gamma=0.5, **kwargs)(x, target=target)
        assert torch.equal(other.x_adv, exact.x_adv), kwargs
    monkeypatch.setattr(pair_search_module, "_FIRST_CANDIDATES", 4)  # widen from 4 candidates
    assert torch.equal(JSMA(model, gamma=0.5)(x, target=target).x_adv, exact.x_adv)


def test_budget_and_source_target_grid(digits_model):
    model, x, y = digits_model
    with torch.no_grad():
        keep = (model(x[:20]).argmax(1) == y[:20]).nonzero().flatten()[:3]
    xs, ys, targets = all_other_targets(x[keep], y[keep], 10)
    result = JSMA(model, theta=1.0, gamma=0.5)(xs, target=targets)
    assert (result.l0 <= math.floor(0.5 * 64)).all()
    assert result.success_rate > 0.5
    stopped_by_budget = ~result.success
    assert (result.iterations[stopped_by_budget] <= math.floor(0.5 * 64) // 2).all()
    assert (result.iterations[result.success] >= 1).all()


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input():
    model = random_mlp(8, 3, seed=0).float()
    x = torch.rand(2, 8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    with pytest.raises(ValueError, match="theta"):
        JSMA(model, theta=0)
    for gamma in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            JSMA(model, gamma=gamma)
    with pytest.raises(ValueError, match="candidates"):
        JSMA(model, candidates=1)
    with pytest.raises(ValueError, match="chunk_size"):
        JSMA(model, chunk_size=0)
    for saturation in (-0.1, 1.0):
        with pytest.raises(ValueError, match="saturation"):
            JSMA(model, saturation=saturation)
    with pytest.raises(ValueError, match="target"):
        JSMA(model)(x, target=pred)
    with pytest.raises(ValueError, match="target"):
        JSMA(model)(x, target=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="x must lie within bounds"):
        JSMA(model)(x + 2, target=(pred + 1) % 3)
    with pytest.raises(ValueError, match="model must return"):
        JSMA(lambda v: v.view(2, 2, 4))(x, target=torch.tensor([1, 1]))


def test_cli_end_to_end(tmp_path):
    from salmap import models
    from salmap.cli import main

    torch.manual_seed(0)
    model = models.build("lenet")
    models.save(model, tmp_path / "model", {"input_shape": [1, 28, 28], "bounds": [0.0, 1.0]})
    out = tmp_path / "out"
    code = main(["attack", "jsma", "--model", str(tmp_path / "model"), "-n", "3", "--targeted", "random",
                 "--gamma", "0.02", "--candidates", "64", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["attack"] == "jsma" and len(report["samples"]) == 3
    assert all(s["l0"] <= math.floor(0.02 * 784) for s in report["samples"])
    assert "candidates=64" in report["settings"]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_source_target_grid(tmp_path, digits_model):
    from salmap.cli import main

    model, x, _ = digits_model
    torch.jit.trace(model, x[:1]).save(str(tmp_path / "model.pt"))  # TorchScript: any architecture
    out = tmp_path / "grid"
    code = main(["attack", "jsma", "--model", str(tmp_path / "model.pt"), "--data", "digits", "-n", "30",
                 "--targeted", "all", "--gamma", "0.3", "--saturation", "0", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    rows = report["samples"]
    assert len(rows) == 30 * 9 and "saturation=0.0" in report["settings"]
    for index in range(30):  # each image attacked towards each other class once
        mine = [r for r in rows if r["index"] == index]
        assert sorted(r["target"] for r in mine) == sorted(set(range(10)) - {mine[0]["label"]})
    success = report["pairs"]["success"]
    for s in range(10):
        assert success[s][s] is None
        for t in set(range(10)) - {s}:
            pair = [r["success"] for r in rows if r["label"] == s and r["target"] == t]
            assert success[s][t] == (pytest.approx(sum(pair) / len(pair)) if pair else None)
    for name in ("pairs.png", "source-target.png", "grid.png"):
        assert (out / name).stat().st_size > 1000


def test_lenient_targets_leave_samples_at_their_goal_unchanged():
    model = random_mlp(8, 3, seed=0).float()
    x = torch.rand(4, 8)
    with torch.no_grad():
        pred = model(x).argmax(1)
    target = pred.clone()
    target[:2] = (pred[:2] + 1) % 3
    result = JSMA(model, gamma=1.0, strict_targets=False)(x, target=target)
    assert torch.equal(result.x_adv[2:], x[2:]) and result.success[2:].all()
    assert result.iterations[2:].tolist() == [0, 0] and (result.iterations[:2] > 0).all()


def test_saturated_features_stay_out_of_the_domain():
    # The linear model of test_linear_model_known_pair, with a bias towards class 0: the best pair
    # is (1, 2) (score 15), then (0, 1) (score 6). With feature 2 at 0.995 it is saturated under
    # the default margin, and (0, 1) is taken; the literal domain spends feature 2 on a change of 0.005.
    weight = torch.tensor([[-1.0, -1.0, -2.0, 1.0], [1.0, 2.0, 3.0, -1.0]])
    model = LinearClassifier(weight, bias=torch.tensor([5.0, 0.0]))
    x = torch.tensor([[0.0, 0.0, 0.995, 0.0]])
    result = JSMA(model, theta=1.0, gamma=0.5)(x, target=torch.tensor([1]))
    assert torch.equal(result.x_adv, torch.tensor([[1.0, 1.0, 0.995, 0.0]])) and result.success.tolist() == [True]
    literal = JSMA(model, theta=1.0, gamma=0.5, saturation=0.0)(x, target=torch.tensor([1]))
    assert literal.x_adv.tolist() == [[0.0, 1.0, 1.0, 0.0]] and literal.l0.tolist() == [2]
    # the margin scales with the bounds and mirrors for a decrease: 2.0 is within 0.01 * 255 of 0
    x255 = torch.tensor([[0.0, 255.0, 2.0, 0.0]])
    scaled = JSMA(model, theta=-255.0, gamma=0.5, bounds=(0.0, 255.0))(x255, y=torch.tensor([1]))
    assert torch.equal(scaled.x_adv, x255) and scaled.iterations.tolist() == [0]
    literal = JSMA(model, theta=-255.0, gamma=0.5, bounds=(0.0, 255.0), saturation=0.0)(x255, y=torch.tensor([1]))
    assert literal.x_adv.tolist() == [[0.0, 0.0, 0.0, 0.0]] and literal.success.tolist() == [True]
