"""Normalisation and per-channel bounds: attacking ``Normalized(net, m, s)`` is attacking the
composition written by hand, in pixel space, with bounds per channel or per feature."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salmap._validate import Bounds, check_bounds, check_input
from salmap.attacks import FGSM, ISI, JSMA, PGD
from salmap.explain import LRP, GradCAM, GradientSaliency, Occlusion
from salmap.lrp import lrp_relevance, make_composite
from salmap.models import Normalized, load, save

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def colour_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
    )


class ByHand(nn.Module):
    """The composition a user would write: net((x - mean) / std)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("m", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("s", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.m) / self.s)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)


ATTACKS = [
    ("fgsm", lambda m: FGSM(m, eps=0.05), False),
    ("pgd", lambda m: PGD(m, eps=0.05, steps=5, seed=3), False),
    ("jsma", lambda m: JSMA(m, theta=1.0, gamma=0.2, strict_targets=False), True),
    ("isi-sens", lambda m: ISI(m, indicator="sensitivity", norm="l0", max_iter=5), False),
]


@pytest.mark.parametrize("name,make,targeted", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attacking_normalized_equals_the_composition_by_hand(batch, name, make, targeted):
    x, y = batch
    net = colour_cnn()
    wrapped, by_hand = Normalized(net, MEAN, STD), ByHand(net)
    kwargs = {"target": (y + 1) % 5} if targeted else {"y": y}
    a, b = make(wrapped)(x, **kwargs), make(by_hand)(x, **kwargs)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success) and torch.equal(a.iterations, b.iterations)
    # pixel space: the result stays in [0, 1], not in the normalised range
    assert float(a.x_adv.min()) >= 0 and float(a.x_adv.max()) <= 1


def test_explaining_normalized_equals_the_composition_by_hand(batch):
    x, y = batch
    net = colour_cnn()
    wrapped, by_hand = Normalized(net, MEAN, STD), ByHand(net)
    for make in (lambda m: GradientSaliency(m), lambda m: Occlusion(m, patch=4, fill="grey")):
        assert torch.equal(make(wrapped).attribute(x, target=y), make(by_hand).attribute(x, target=y))
    # Grad-CAM finds the wrapped network's layers by their own names
    cam = GradCAM(wrapped, layer="2").attribute(x, target=y)
    assert torch.equal(cam, GradCAM(by_hand, layer="net.2").attribute(x, target=y))


def test_lrp_of_normalized_explains_the_network_on_normalised_input(batch):
    x, y = batch
    net = colour_cnn()
    wrapped = Normalized(net, MEAN, STD)
    heat = LRP(wrapped, composite="epsilon-plus").attribute(x, target=y)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    # z^B on the first layer with the normalised bounds (0 - m) / s and (1 - m) / s, per channel
    composite = make_composite("epsilon-plus", ((0 - m) / s, (1 - m) / s))
    onehot = lambda out: nn.functional.one_hot(y, out.shape[1]).to(out.dtype)  # noqa: E731
    _, expected, _ = lrp_relevance(net, (x - m) / s, onehot, composite)
    torch.testing.assert_close(heat, expected)


def test_per_channel_bounds_are_respected_by_every_attack(batch):
    x, y = batch
    net = colour_cnn()
    high = torch.tensor([0.5, 1.0, 1.0])
    xb = torch.minimum(x, high.view(1, 3, 1, 1))
    bounds = ((0.0, 0.0, 0.0), (0.5, 1.0, 1.0))
    for attack in (FGSM(net, eps=0.3, bounds=bounds), PGD(net, eps=0.3, steps=3, bounds=bounds),
                   JSMA(net, theta=1.0, gamma=0.3, bounds=bounds, strict_targets=False),
                   ISI(net, indicator="relevance", norm="l0", max_iter=4, bounds=bounds)):
        res = attack(xb, y=y) if not isinstance(attack, JSMA) else attack(xb, target=(y + 1) % 5)
        assert float(res.x_adv[:, 0].max()) <= 0.5 and float(res.x_adv.min()) >= 0.0
        assert float(res.x_adv[:, 1:].max()) <= 1.0
    # JSMA with theta=+1 saturates a chosen feature at its own channel's bound
    res = JSMA(net, theta=1.0, gamma=0.3, bounds=bounds, strict_targets=False)(xb, target=(y + 1) % 5)
    changed = res.x_adv != xb
    assert changed.any()
    at_bound = torch.isclose(res.x_adv, high.view(1, 3, 1, 1).expand_as(xb))
    assert bool(at_bound[changed].all())


def test_per_feature_bounds_tensor_and_the_unchanged_scalar_default(batch):
    x, y = batch
    net = colour_cnn()
    low, high = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    high[:, :4] = 0.6
    xb = torch.minimum(x, high)
    res = PGD(net, eps=0.5, steps=3, bounds=(low, high))(xb, y=y)
    assert bool((res.x_adv <= high).all())
    assert PGD(net).bounds == (0.0, 1.0) and PGD(net).bounds.scalar


def test_check_bounds_accepts_and_refuses():
    assert check_bounds((0, 1)) == (0.0, 1.0)
    b = check_bounds(((0, 0, 0), (1, 2, 3)))
    assert isinstance(b, Bounds) and not b.scalar and b.high.tolist() == [1, 2, 3]
    assert check_bounds(((0,), (1,))).scalar  # one value for all channels
    x = torch.full((2, 3, 4, 4), 1.5)
    assert b.clamp(x)[:, 0].max() == 1 and b.clamp(x)[:, 2].min() == 1.5
    with pytest.raises(ValueError, match="low < high"):
        check_bounds(((0, 1, 0), (1, 1, 1)))
    with pytest.raises(ValueError, match="broadcastable"):
        check_bounds(((0, 0, 0), (1, 1)))
    with pytest.raises(ValueError, match="3 channels but x has shape"):
        b.clamp(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="must lie within bounds"):
        check_input(torch.full((1, 3, 2, 2), 0.9), ((0, 0, 0), (0.5, 1, 1)))


def test_normalized_bad_input_and_caller_model_untouched(batch):
    x, _ = batch
    net = colour_cnn()
    with pytest.raises(ValueError, match="same length"):
        Normalized(net, [0.5, 0.5, 0.5], [0.2, 0.2])
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalized(net, [0.5, 0.5, 0.5], [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match=r"3 channels, but the input has shape \(6, 1, 8, 8\)"):
        Normalized(net, MEAN, STD)(x[:, :1])
    wrapped = Normalized(net, MEAN, STD).train()
    before = x.clone()
    PGD(wrapped, eps=0.1, steps=2)(x, y=torch.zeros(6, dtype=torch.long))
    assert wrapped.training and net.training and torch.equal(x, before)


def test_save_and_load_apply_normalization(tmp_path, batch):
    from salmap.models import build

    x, _ = batch
    net = build("lenet", in_channels=3, num_classes=5, input_size=(16, 16))
    xs = torch.rand(4, 3, 16, 16)
    save(Normalized(net, MEAN, STD), tmp_path / "ck", {"input_shape": [3, 16, 16]})
    loaded = load(tmp_path / "ck")
    assert isinstance(loaded, Normalized)
    torch.testing.assert_close(loaded(xs), Normalized(net.eval(), MEAN, STD)(xs))
    plain = tmp_path / "plain"
    save(net, plain, {"input_shape": [3, 16, 16]})
    again = load(plain, normalization={"mean": MEAN, "std": STD})
    torch.testing.assert_close(again(xs), loaded(xs))
    with pytest.raises(ValueError, match=r"one value per input channel \(3\)"):
        load(plain, normalization={"mean": [0.5, 0.5], "std": [0.2, 0.2]})
