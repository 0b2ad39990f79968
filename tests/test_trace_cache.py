"""An explainer keeps its trace of the model for its next call (:class:`salmap.folding.TraceCache`)
and traces again, or refolds, whenever what the model computes may have changed."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import torch
from torch import Tensor, nn

from salmap.explain import Occlusion
from salmap.folding import TraceCache


class Switch(nn.Module):
    """A conv + batch norm whose forward branches on a plain attribute (a flag the trace bakes in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.doubled = False

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if self.doubled:
            h = h * 2
        return self.head(h.mean(dim=(2, 3)))


def _model() -> Switch:
    torch.manual_seed(0)
    model = Switch()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _agrees(cache: TraceCache, model: nn.Module, x: Tensor) -> object:
    traced = cache.trace(model, fold=True, always=True)
    assert traced is not None and traced.folded == 1
    with torch.no_grad():
        torch.testing.assert_close(traced.module(x), model(x), rtol=1e-5, atol=1e-6)
    return traced


def test_a_second_call_reuses_the_trace_and_follows_weights_changed_through_data():
    model, x, cache = _model(), torch.rand(2, 3, 8, 8), TraceCache()
    first = _agrees(cache, model, x)
    assert _agrees(cache, model, x) is first
    model.conv.weight.data.mul_(-1.5)  # (does not bump the version counter)
    model.bn.running_var.data.add_(1.0)
    assert _agrees(cache, model, x) is first  # same trace, folded weights computed again


def test_a_changed_flag_buffer_mode_or_dtype_traces_again():
    model, x, cache = _model(), torch.rand(2, 3, 8, 8), TraceCache()
    first = _agrees(cache, model, x)
    model.doubled = True  # the trace baked the branch in
    second = _agrees(cache, model, x)
    assert second is not first
    model.bn.running_mean = torch.zeros(4)  # a buffer replaced
    assert _agrees(cache, model, x) is not second
    model.double()
    _agrees(cache, model, x.double())
    model.train()
    assert cache.trace(model, fold=True, always=True).folded == 0  # type: ignore[union-attr]


def test_a_hook_added_later_runs_the_model_as_it_is():
    model, x, cache = _model(), torch.rand(2, 3, 8, 8), TraceCache()
    _agrees(cache, model, x)
    handle = model.conv.register_forward_hook(lambda m, i, o: o * 0)
    assert cache.trace(model, fold=True, always=True) is None
    handle.remove()
    _agrees(cache, model, x)


def test_another_model_or_setting_traces_again():
    cache, x = TraceCache(), torch.rand(2, 3, 8, 8)
    a, b = _model(), _model()
    first = _agrees(cache, a, x)
    assert _agrees(cache, b, x) is not first
    assert cache.trace(b, fold=False, always=True).folded == 0  # type: ignore[union-attr]


def test_occlusion_after_the_model_changed_gives_a_fresh_explainer_s_maps():
    model, x = _model(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    occ = Occlusion(model, patch=4, stride=2)
    occ.attribute(x, target=1)
    model.conv.weight.data.mul_(0.5)
    model.doubled = True
    again = occ.attribute(x, target=1)
    fresh = Occlusion(model, patch=4, stride=2).attribute(x, target=1)
    torch.testing.assert_close(again, fresh, rtol=0, atol=0)
    unfolded = Occlusion(model, patch=4, stride=2, fold_batchnorm=False).attribute(x, target=1)
    torch.testing.assert_close(again, unfolded, rtol=1e-4, atol=1e-6)


def test_a_copied_or_pickled_explainer_traces_again():
    model, x = _model(), torch.rand(1, 3, 16, 16)
    occ = Occlusion(model, patch=4, stride=4)
    heat = occ.attribute(x, target=0)
    for other in (copy.deepcopy(occ), pickle.loads(pickle.dumps(occ))):
        assert other._traces._kept is None
        torch.testing.assert_close(other.attribute(x, target=0), heat, rtol=1e-5, atol=1e-7)


class _Held(nn.Module):
    """A conv + batch norm whose forward reads numbers out of what it holds: a plain tensor attribute
    (``float`` of it), a list and an object's attribute; the trace bakes all three in as constants."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)
        self.gain = torch.tensor(1.0)
        self.scales = [1.0, 1.0, 1.0]
        self.settings = _Settings()

    def forward(self, x: Tensor) -> Tensor:
        x = x * torch.tensor(self.scales).view(1, 3, 1, 1)
        h = torch.relu(self.bn(self.conv(x))) * float(self.gain) * self.settings.shift
        return self.head(h.mean(dim=(2, 3)))


class _Settings:
    shift = 1.0


def test_values_changed_inside_what_the_model_holds_are_not_served_from_a_stale_trace():
    torch.manual_seed(0)
    model, x = _Held().eval(), torch.rand(2, 3, 8, 8)
    occ = Occlusion(model, patch=4, stride=4)
    changes = [lambda: model.gain.fill_(3.0), lambda: model.gain.data.fill_(0.5),
               lambda: model.scales.__setitem__(0, 5.0), lambda: setattr(model.settings, "shift", -2.0)]
    for change in changes:
        occ.attribute(x, target=0)
        change()
        fresh = Occlusion(model, patch=4, stride=4).attribute(x, target=0)
        torch.testing.assert_close(occ.attribute(x, target=0), fresh, rtol=0, atol=0)


def test_a_list_or_an_object_held_unchanged_keeps_the_trace():
    model, x, cache = _model(), torch.rand(2, 3, 8, 8), TraceCache()
    model.sizes, model.settings = [1, 2], _Settings()  # (read by nothing; the same items at the next call)
    first = _agrees(cache, model, x)
    assert _agrees(cache, model, x) is first
    model.sizes.append(3)
    assert _agrees(cache, model, x) is not first


def test_a_model_holding_a_plain_tensor_or_array_is_traced_at_every_call():
    for held in (torch.ones(3), np.ones(3)):
        model, x, cache = _model(), torch.rand(2, 3, 8, 8), TraceCache()
        model.table = held  # (neither parameter nor buffer: a value its forward may read as a number)
        assert _agrees(cache, model, x) is not _agrees(cache, model, x)
