"""An explainer keeps its trace of the model for its next call (:class:`salmap.folding.TraceCache`)
and traces again, or refolds, whenever what the model computes may have changed."""

from __future__ import annotations

import copy
import pickle

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
