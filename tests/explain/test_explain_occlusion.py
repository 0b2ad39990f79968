"""Occlusion against a slow reference written straight from Zeiler & Fergus, one image at a time."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import trained_on_digits
from torch import nn

from salmap.explain import Occlusion


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 2, classes: int = 4, size: tuple[int, int] = (10, 11)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 3, 3, padding=1)
        self.fc = nn.Linear(3 * size[0] * size[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class TinySeg(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def starts(size: int, patch: int, stride: int) -> list[int]:
    out = list(range(0, size - patch + 1, stride))
    if out[-1] + patch < size:
        out.append(size - patch)
    return out


def reference(model, x, classes, patch, stride, fill_value, mask=None, probabilities=False):
    """Plain loops: every image, every position, one forward pass per occluded copy."""
    result = torch.zeros_like(x)
    for b in range(x.shape[0]):
        img = x[b : b + 1]

        def score(inp, b=b):
            with torch.no_grad():
                out = model(inp)
            if probabilities:
                out = torch.softmax(out, dim=1)
            if out.dim() == 2:
                return float(out[0, classes[b]])
            return float((out[0, classes[b]] * mask[b]).sum())

        clean = score(img)
        total = torch.zeros(x.shape[2:], dtype=x.dtype)
        count = torch.zeros(x.shape[2:], dtype=x.dtype)
        for r, c in itertools.product(starts(x.shape[2], patch[0], stride[0]), starts(x.shape[3], patch[1], stride[1])):
            occluded = img.clone()
            fv = fill_value(x)[b] if callable(fill_value) else fill_value
            window = (slice(None), slice(None), slice(r, r + patch[0]), slice(c, c + patch[1]))
            occluded[window] = fv[window[1:]] if isinstance(fv, torch.Tensor) and fv.dim() == 3 else fv
            drop = clean - score(occluded)
            total[r : r + patch[0], c : c + patch[1]] += drop
            count[r : r + patch[0], c : c + patch[1]] += 1
        heat = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
        result[b] = heat
    return result


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    x = torch.rand(3, 2, 10, 11, dtype=torch.float64)
    x[0, :, :4, :5] = 0.0  # a black region: zero-filled patches there change nothing
    classes = torch.tensor([0, 3, 1])
    return model, x, classes


@pytest.mark.parametrize(
    "patch, stride",
    [((3, 3), (2, 2)), ((2, 4), (3, 1)), ((4, 4), (4, 4)), ((3, 2), (3, 5)), ((10, 11), (1, 1)), ((1, 1), (1, 1))],
)
def test_matches_reference_zero_fill(setup, patch, stride):
    model, x, classes = setup
    got = Occlusion(model, patch=patch, stride=stride, fill="zero", batch_size=7).attribute(x, target=classes)
    want = reference(model, x, classes, patch, stride, 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fill", ["mean", "grey", "random", 0.25])
def test_matches_reference_fills(setup, fill):
    model, x, classes = setup
    occ = Occlusion(model, patch=3, stride=2, fill=fill, bounds=(0.0, 2.0), batch_size=16, seed=5)
    got = occ.attribute(x, target=classes)
    if fill == "mean":
        value = lambda t: t.mean(dim=(2, 3), keepdim=True).expand_as(t)  # noqa: E731
    elif fill == "grey":
        value = 1.0
    elif fill == "random":
        gen = torch.Generator().manual_seed(5)
        noise = 2.0 * torch.rand((1, *x.shape[1:]), generator=gen, dtype=torch.float64)
        value = lambda t: noise.expand_as(t)  # noqa: E731
    else:
        value = 0.25
    want = reference(model, x, classes, (3, 3), (2, 2), value)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_probabilities_and_default_target(setup):
    model, x, _ = setup
    pred = model(x).argmax(dim=1)
    got = Occlusion(model, patch=3, stride=2, probabilities=True).attribute(x)
    want = reference(model, x, pred, (3, 3), (2, 2), 0.0, probabilities=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_segmenter_class_and_mask():
    torch.manual_seed(1)
    model = TinySeg().double().eval()
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 3:7] = True
    mask[1, 6:, :] = True
    classes = torch.tensor([2, 1])
    got = Occlusion(model, patch=3, stride=2, fill="grey").attribute(x, target=classes, mask=mask)
    want = reference(model, x, classes, (3, 3), (2, 2), 0.5, mask=mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_batched_equals_one_by_one_and_batch_size_irrelevant(setup):
    model, x, classes = setup
    full = Occlusion(model, patch=3, stride=2, fill="random", batch_size=5).attribute(x, target=classes)
    for i in range(x.shape[0]):
        one = Occlusion(model, patch=3, stride=2, fill="random", batch_size=1000).attribute(x[i : i + 1], target=classes[i : i + 1])
        torch.testing.assert_close(one[0], full[i], rtol=0, atol=1e-12)


def test_skips_copies_equal_to_the_input():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.flatten(1)[:, :3] * 2.0

    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 0, 0] = 1.0
    # fold_batchnorm=False: the model runs as it is on every copy (else it is traced, and run on regions)
    heat = Occlusion(Counting(), patch=2, stride=2, fill="zero", fold_batchnorm=False).attribute(x, target=0)
    # only the patch holding the one non-zero pixel differs from its zero-filled copy
    assert sum(calls) == 1 + 1
    assert heat[0, 0, 0, 0] == 2.0 and heat[0, 0, :2, :2].eq(2.0).all() and heat[0, 0, 2:].eq(0).all()


def test_input_and_model_left_as_they_were(setup):
    model, x, classes = setup
    model.train()
    before = x.clone()
    Occlusion(model, patch=3, stride=2, fill="mean").attribute(x, target=classes)
    assert torch.equal(x, before)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_captum_agrees_when_positions_agree(setup):
    captum = pytest.importorskip("captum.attr")
    model, x, classes = setup
    x = x[:, :, :9, :9]
    model = TinyCNN(size=(9, 9)).double().eval()
    got = Occlusion(model, patch=3, stride=2, fill="grey", bounds=(0, 1)).attribute(x, target=classes)
    want = captum.Occlusion(model).attribute(x, sliding_window_shapes=(2, 3, 3), strides=(1, 2, 2),
                                             baselines=0.5, target=classes)
    # captum returns float32 (it divides by the window counts after .float())
    torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch": 0}, "patch must be a positive int"),
        ({"stride": 0}, "stride must be a positive int"),
        ({"stride": -2}, "stride must be a positive int"),
        ({"stride": (2, 0)}, "stride must be a positive int"),
        ({"patch": 2.5}, "patch must be a positive int"),
        ({"fill": "black"}, "fill must be one of"),
        ({"batch_size": 0}, "batch_size must be in"),
    ],
)
def test_bad_settings(setup, kwargs, message):
    model = setup[0]
    with pytest.raises(ValueError, match=message):
        Occlusion(model, **kwargs)


def test_bad_input(setup):
    model, x, classes = setup
    with pytest.raises(ValueError, match=r"patch \(11, 11\) is larger than the input's spatial size \(10, 11\)"):
        Occlusion(model, patch=11).attribute(x, target=classes)
    with pytest.raises(ValueError, match="one size per spatial dimension"):
        Occlusion(model, patch=(2, 2, 2)).attribute(x, target=classes)
    with pytest.raises(ValueError, match="target must have shape"):
        Occlusion(model, patch=2).attribute(x, target=[0, 1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_maps_correlate_with_float32(digits_model, precision):
    model, x, y = digits_model
    x, y = x[:8], y[:8]
    full = Occlusion(model, patch=2, stride=1).attribute(x, target=y)
    half = Occlusion(model, patch=2, stride=1, precision=precision).attribute(x, target=y)
    assert half.dtype == full.dtype and half.shape == full.shape
    for a, b in zip(half, full, strict=True):
        a, b = a.flatten().double() - a.mean(), b.flatten().double() - b.mean()
        assert float((a * b).sum() / (a.norm() * b.norm())) >= 0.999
    assert not torch.equal(half, full)  # the forward passes did run in 16 bits


def test_precision_is_checked():
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"):
        Occlusion(TinyCNN(), precision="fp8")


# --- batch norm folded into the convolutions, 16-bit passes as differences from the clean pass ---


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


@pytest.fixture(scope="module")
def digits_bn_model():
    """A CNN with batch norm trained for a few seconds on scikit-learn's 8x8 digits."""
    model, xte, yte = trained_on_digits(lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 64, 10),
    ), epochs=4)
    return model, xte[:8], yte[:8]


def _correlations(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    out = []
    for u, v in zip(a, b, strict=True):
        u, v = u.flatten().double() - u.mean(), v.flatten().double() - v.mean()
        out.append(float((u * v).sum() / (u.norm() * v.norm())))
    return out


def test_trained_model_with_batch_norm_folded_maps_agree(digits_bn_model):
    model, x, y = digits_bn_model
    folded = Occlusion(model, patch=2, stride=1).attribute(x, target=y)
    plain = Occlusion(model, patch=2, stride=1, fold_batchnorm=False).attribute(x, target=y)
    torch.testing.assert_close(folded, plain, rtol=0, atol=1e-4 * float(plain.abs().max()))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("fold", [True, False])
def test_half_precision_with_batch_norm_correlates(digits_bn_model, precision, fold):
    model, x, y = digits_bn_model
    full = Occlusion(model, patch=2, stride=1, fold_batchnorm=False).attribute(x, target=y)
    half = Occlusion(model, patch=2, stride=1, precision=precision, fold_batchnorm=fold).attribute(x, target=y)
    assert min(_correlations(half, full)) >= 0.9999
    assert not torch.equal(half, full)


def test_bf16_differences_beat_plain_autocast_where_scores_barely_move():
    """A random-weight network: occlusion moves the logits by about 1%, bfloat16's rounding of
    whole activations (0.4%) swamps that; differences from the clean pass do not."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()
    x = torch.rand(2, 3, 24, 24)
    full = Occlusion(model, patch=4, stride=4).attribute(x, target=[0, 1])
    deltas = Occlusion(model, patch=4, stride=4, precision="bf16").attribute(x, target=[0, 1])
    branchy = nn.Sequential(_Untraceable(), *model)  # cannot be traced: plain autocast
    plain = Occlusion(branchy, patch=4, stride=4, precision="bf16").attribute(x, target=[0, 1])
    assert min(_correlations(deltas, full)) >= 0.999
    assert min(_correlations(plain, full)) < min(_correlations(deltas, full))


class _Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() >= -1e30 else -x


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
