"""JSMA for classifiers: the fast batched attack against a slow reference written from the paper, and
known answers on a linear model (the best pair, single features, the saturated features' domain)."""

from __future__ import annotations

import math

import pytest
import torch
from _jsma_models import other_than, random_batch, random_mlp
from conftest import LinearClassifier
from test_pair_search import reference_select
from torch import Tensor, nn

from salmap.attacks import JSMA, select_features

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
