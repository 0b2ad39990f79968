"""SegmentationJSMA against slow references: the saliency map against the full Jacobian, the first
change against the brute-force best pair or feature (local domain or not), and the masked map
against the seed document's method, its two functions verbatim."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from salmap.attacks import SegmentationJSMA

torch.set_num_threads(1)


class TinySegmenter(nn.Module):
    """A small non-linear segmenter: conv, tanh, conv (output size = input size)."""

    def __init__(self, channels: int = 1, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(channels, 4, 3, padding=1)
        self.b = nn.Conv2d(4, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


def reference_map(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """alpha, beta of one image from the full Jacobian, straight from the definition, and the
    bool mask of the pixels that do not match the target."""
    out = model(x[None])[0]
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x)  # (C, h, w, *x.shape)
    classes, h, w = out.shape
    alpha = torch.zeros_like(x)
    beta = torch.zeros_like(x)
    pred = (out[0] > 0).long() if classes == 1 else out.argmax(0)
    for i, j in itertools.product(range(h), range(w)):
        if pred[i, j] == target[i, j]:
            continue
        t = int(target[i, j])
        if classes == 1:  # class 1 scores the logit, class 0 its negative
            sign = 1.0 if t == 1 else -1.0
            alpha += sign * jac[0, i, j]
            beta -= sign * jac[0, i, j]
            continue
        for c in range(classes):
            if c == t:
                alpha += jac[c, i, j]
            else:
                beta += jac[c, i, j]
    return alpha, beta, pred != target


def reference_first_step(
    alpha: Tensor, beta: Tensor, x: Tensor, pairs: bool, theta: float, where: Tensor | None
) -> tuple[set[int], float]:
    """The best admissible pair (or feature) of either direction by brute force: features and sign.

    A change's saliency is the first-order change of the sums: gradient times the step the
    feature can take (``theta`` cut short by the bounds [0, 1]). Only features in ``where``
    (all when None) may change."""
    a, b, v = alpha.flatten().tolist(), beta.flatten().tolist(), x.flatten().tolist()
    ok = [True] * len(v) if where is None else where.flatten().tolist()
    best, choice = -math.inf, (set(), 0.0)
    for sign in (1.0, -1.0):  # increase first: it wins ties
        step = [min(p + theta, 1.0) - p if sign > 0 else p - max(p - theta, 0.0) for p in v]
        free = [p for p in range(len(a)) if ok[p] and (v[p] < 1.0 if sign > 0 else v[p] > 0.0)]
        groups = itertools.combinations(free, 2) if pairs else ((p,) for p in free)
        for g in groups:
            sa, sb = sum(a[p] * step[p] for p in g), sum(b[p] * step[p] for p in g)
            if sign * sa > 0 and sign * sb < 0 and abs(sa) * abs(sb) > best:
                best, choice = abs(sa) * abs(sb), (set(g), sign)
    return choice


@pytest.mark.parametrize("classes", [1, 3])
def test_map_matches_the_full_jacobian_reference(classes: int) -> None:
    model = TinySegmenter(1, classes).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 4, 4, generator=gen)
    target = torch.randint(0, max(classes, 2), (2, 4, 4), generator=gen)
    attack = SegmentationJSMA(model)
    _, alpha, beta = attack.derivatives(x, target, classes)
    assert beta is not None
    for i in range(2):
        ref_a, ref_b, _ = reference_map(model, x[i], target[i])
        assert ref_a.abs().sum() > 0
        torch.testing.assert_close(alpha[i], ref_a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(beta[i], ref_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("classes", [1, 3])
def test_first_change_is_the_brute_force_best(pairs: bool, classes: int, local: bool) -> None:
    model = TinySegmenter(1, classes, seed=3).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 4, 4, generator=gen) * 0.8 + 0.1
    target = torch.randint(0, max(classes, 2), (3, 4, 4), generator=gen)
    theta = 0.3  # larger than some features' room to a bound: the steps differ
    attack = SegmentationJSMA(model, theta=theta, gamma=1.0, pairs=pairs, local=local, max_iterations=1)
    result = attack(x, target=target)
    for i in range(3):
        ref_a, ref_b, wrong = reference_map(model, x[i], target[i])
        features, sign = reference_first_step(ref_a, ref_b, x[i], pairs, theta, wrong[None] if local else None)
        assert features
        delta = (result.x_adv[i] - x[i]).flatten()
        assert set(delta.nonzero().flatten().tolist()) == features
        moved = (x[i].flatten() + sign * theta).clamp(0, 1) - x[i].flatten()
        torch.testing.assert_close(delta[sorted(features)], moved[sorted(features)])


def seed_method(model: nn.Module, image: Tensor, target: Tensor, theta: float, required: float, limit: int) -> Tensor:
    """The seed document's method, its two functions verbatim, in the loop it describes
    (``limit``: the distortion limit, in changed features)."""
    start = image

    def compute_jacobian(model, image):
        image.requires_grad = True
        output = torch.sigmoid(model(image.unsqueeze(0)))  # Forward pass
        grad_outputs = torch.ones_like(output.squeeze(0))  # Same shape as output
        element_wise_grad = torch.autograd.grad(output.squeeze(0), image, grad_outputs=grad_outputs, create_graph=True)[0]
        return element_wise_grad

    def saliency_map(jacobian, target_label):
        target_grad = jacobian * target_label  # Positive if it pushes towards target class
        return target_grad  # Saliency scores

    image = image.clone()
    while int((image != start).sum()) < limit:
        pred = (model(image[None])[0, 0] > 0).long()
        if (pred == target).float().mean() >= required:
            break
        sal = saliency_map(compute_jacobian(model, image), target.float()).detach()
        sal[image.detach() >= 1.0] = -math.inf  # a saturated feature cannot move further
        p = int(sal.flatten().argmax())
        if sal.flatten()[p] <= 0:
            break
        image = image.detach().flatten()
        image[p] = (image[p] + theta).clamp(0, 1)
        image = image.view(1, *target.shape)
    return image.detach()


def test_masked_map_reproduces_the_seed_method() -> None:
    model = TinySegmenter(1, 1, seed=5).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 1, 6, 6, generator=gen) * 0.5
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[:, 1:4, 2:5] = 1
    attack = SegmentationJSMA(model, map="masked", theta=0.4, gamma=0.5, required=0.95)
    result = attack(x, target=target)
    budget = math.floor(0.5 * 36)
    for i in range(2):
        expected = seed_method(model, x[i], target[i], 0.4, 0.95, budget)
        torch.testing.assert_close(result.x_adv[i], expected)
    assert (result.l0 > 0).all()
