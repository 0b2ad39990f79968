"""JSMA's properties (bounds, budget, each feature changed once, the caller's input and model left as
they were), batched equals one by one, chunked and candidate searches equal the exact one, the
source-target grid within its budget, lenient targets, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from _jsma_models import other_than, random_batch, random_mlp

import salmap.pair_search as pair_search_module
from salmap.attacks import JSMA, all_other_targets


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
