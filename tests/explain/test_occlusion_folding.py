"""Occlusion with batch norm folded into the convolutions, and 16-bit passes as differences from the
clean pass: the same maps as the model's own arithmetic and the slow reference, models that
cannot be folded run as they are, a changed model is folded again."""

from __future__ import annotations

import pytest
import torch
from _occlusion_reference import reference
from torch import nn

from salmap.explain import Occlusion


class BNNet(nn.Module):
    """Conv-BN-ReLU blocks with a residual sum, max and average pooling: what folding rewrites."""

    def __init__(self, channels: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.head(self.pool(h) * 0.5 - 0.1)


def bn_net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = BNNet().to(dtype)
    with torch.no_grad():  # running statistics far from (0, 1): folding changes the weights a lot
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def bn_calls(monkeypatch):
    calls = []
    forward = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda self, x: calls.append(1) or forward(self, x))
    return calls


def test_folded_maps_equal_unfolded_and_reference(bn_calls):
    model = bn_net()
    x = torch.rand(3, 2, 10, 11, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1])
    folded = Occlusion(model, patch=3, stride=2, batch_size=16).attribute(x, target=classes)
    assert not bn_calls  # the batch norms were folded away
    plain = Occlusion(model, patch=3, stride=2, batch_size=16, fold_batchnorm=False).attribute(x, target=classes)
    assert bn_calls
    torch.testing.assert_close(folded, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(folded, reference(model, x, classes, (3, 3), (2, 2), 0.0), rtol=0, atol=1e-12)


def test_folded_float32_maps_close_to_unfolded():
    model = bn_net(torch.float32)
    x = torch.rand(2, 2, 10, 11)
    folded = Occlusion(model, patch=2, stride=1).attribute(x, target=[1, 2])
    plain = Occlusion(model, patch=2, stride=1, fold_batchnorm=False).attribute(x, target=[1, 2])
    torch.testing.assert_close(folded, plain, rtol=0, atol=1e-5)
    assert folded.abs().max() > 1e-2


def test_folding_leaves_the_model_as_it_was():
    model = bn_net()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [id(t) for t in [*model.parameters(), *model.buffers()]]
    attrs = {name: sorted(vars(m)) for name, m in model.named_modules()}
    occ = Occlusion(model, patch=3, stride=2)
    x = torch.rand(2, 2, 10, 11, dtype=torch.float64)
    occ.attribute(x, target=[0, 1])
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert [id(t) for t in [*model.parameters(), *model.buffers()]] == tensors
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert {name: sorted(vars(m)) for name, m in model.named_modules()} == attrs
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_changed_model_is_folded_again():
    model = bn_net()
    x = torch.rand(2, 2, 10, 11, dtype=torch.float64)
    occ = Occlusion(model, patch=3, stride=2)
    first = occ.attribute(x, target=[0, 1])
    with torch.no_grad():
        model.bn1.running_var.mul_(4.0)  # in place
    second = occ.attribute(x, target=[0, 1])
    fresh = Occlusion(model, patch=3, stride=2, fold_batchnorm=False).attribute(x, target=[0, 1])
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, fresh, rtol=0, atol=1e-12)
    model.conv2 = nn.Conv2d(6, 6, 3, padding=1).double()  # a replaced submodule
    torch.testing.assert_close(occ.attribute(x, target=[0, 1]),
                               Occlusion(model, patch=3, stride=2, fold_batchnorm=False).attribute(x, target=[0, 1]),
                               rtol=0, atol=1e-12)


class Flagged(BNNet):
    def __init__(self) -> None:
        super().__init__()
        self.negate = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return -out if self.negate else out  # a branch on a plain attribute: tracing bakes it in


def test_a_changed_flag_is_traced_again():
    model = Flagged().double()
    model.load_state_dict(bn_net().state_dict())
    model.eval()
    x = torch.rand(2, 2, 10, 11, dtype=torch.float64)
    occ = Occlusion(model, patch=3, stride=2)
    first = occ.attribute(x, target=[0, 1])
    model.negate = True
    torch.testing.assert_close(occ.attribute(x, target=[0, 1]), -first, rtol=0, atol=1e-12)


class Branchy(BNNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 1.0
        return super().forward(x)


@pytest.mark.parametrize("kind", ["hook", "untraceable", "torchscript"])
def test_models_that_cannot_be_folded_run_as_they_are(kind, bn_calls):
    model = bn_net()
    if kind == "untraceable":
        branchy = Branchy().double()
        branchy.load_state_dict(model.state_dict())
        model = branchy.eval()
    x = torch.rand(2, 2, 10, 11, dtype=torch.float64)
    want = reference(model, x, [0, 1], (3, 3), (2, 2), 0.0)
    handle = None
    if kind == "hook":  # a hook that changes the batch norm's output: folding would skip it
        handle = model.bn2.register_forward_hook(lambda m, i, o: o * 2.0)
        want = reference(model, x, [0, 1], (3, 3), (2, 2), 0.0)
    elif kind == "torchscript":
        model = torch.jit.trace(model, x[:1], check_trace=False)
    bn_calls.clear()
    got = Occlusion(model, patch=3, stride=2).attribute(x, target=[0, 1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if kind != "torchscript":
        assert bn_calls  # the batch norms ran
    if handle is not None:
        handle.remove()


class Viewing(nn.Module):
    """``.view`` after a convolution: refuses the channels-last layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 10 * 11, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_a_model_that_needs_the_contiguous_layout(monkeypatch):
    import salmap.explain.occlusion as occlusion

    monkeypatch.setattr(occlusion, "prefers_channels_last", lambda x: True)  # as on CUDA and large CPU images
    torch.manual_seed(0)
    model = Viewing().eval()
    x = torch.rand(2, 2, 10, 11)
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    got = Occlusion(model, patch=3, stride=2).attribute(x, target=[0, 1])
    torch.testing.assert_close(got, reference(model, x, [0, 1], (3, 3), (2, 2), 0.0), rtol=0, atol=1e-5)


def test_channels_last_on_the_cpu_from_112_pixels():
    from salmap.precision import prefers_channels_last

    assert prefers_channels_last(torch.zeros(1, 3, 112, 112))
    assert not prefers_channels_last(torch.zeros(1, 3, 96, 96))
    assert not prefers_channels_last(torch.zeros(1, 3, 224, 224, dtype=torch.float64))
    assert not prefers_channels_last(torch.zeros(1, 3, 224))


def test_fold_batchnorm_is_a_registered_option():
    from salmap import registry

    param = {p.name: p for p in registry.get_explainer("occlusion").params}["fold_batchnorm"]
    assert param.default is True and "batch norm" in param.help


class EveryRule(nn.Module):
    """Every operation the differences know (linear ones and the rest), for an exact check."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.act = nn.ReLU()
        self.register_buffer("shift", torch.linspace(-1, 1, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)) + 0.3
        h = self.act(h - 0.5) + torch.relu(0.4 - h)  # sign changes of the clean activations included
        h = nn.functional.max_pool2d(h, 2, stride=1, padding=1)[:, :, :10, :10]
        h = self.pool(2.0 * h - h / 3.0).permute(0, 1, 3, 2)
        h = torch.sigmoid(-h).reshape(h.size(0), -1)
        return self.fc(h) * 1.5 - self.shift


def test_differences_are_exact_in_float64():
    from salmap.explain.occlusion_deltas import Deltas
    from salmap.folding import trace

    torch.manual_seed(0)
    model = EveryRule().double().eval()
    traced = trace(model, fold=True, always=True)
    assert traced is not None
    deltas = Deltas(traced.module, torch.float64)
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    copies = x.repeat(5, 1, 1, 1)
    copies[torch.arange(5), :, torch.arange(5), torch.arange(5) * 2] = 0.0
    torch.testing.assert_close(deltas(x, 0, copies), model(copies), rtol=0, atol=1e-12)


def test_normalized_models_are_folded_and_differenced(bn_calls):
    from salmap.explain.occlusion_deltas import Deltas
    from salmap.folding import trace
    from salmap.models import Normalized

    model = Normalized(bn_net(), mean=[0.4, 0.6], std=[0.2, 0.3]).double()
    x = torch.rand(2, 2, 10, 11, dtype=torch.float64)
    folded = Occlusion(model, patch=3, stride=2).attribute(x, target=[0, 1])
    assert not bn_calls
    torch.testing.assert_close(folded, reference(model, x, [0, 1], (3, 3), (2, 2), 0.0), rtol=0, atol=1e-12)
    traced = trace(Normalized(EveryRule().double().eval(), mean=[0.4, 0.6], std=[0.2, 0.3]).double(), fold=True, always=True)
    assert traced is not None
    x = torch.rand(1, 2, 10, 10, dtype=torch.float64)
    copies = x.repeat(3, 1, 1, 1)
    copies[:, :, 2:5, 3:6] = 0.0
    torch.testing.assert_close(Deltas(traced.module, torch.float64)(x, 0, copies), traced.module(copies), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="Normalized has mean/std for 2 channels"):
        traced.module(torch.rand(1, 3, 10, 10, dtype=torch.float64))
