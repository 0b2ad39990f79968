"""Occlusion's traced graph on models that write in place, change between calls, or change themselves."""

from __future__ import annotations

import torch
from torch import nn

from salmap.explain import Occlusion
from salmap.explain.occlusion_deltas import Deltas
from salmap.folding import trace


class Block(nn.Module):
    """A ResNet basic block as torchvision writes it: in-place ReLU and ``out += identity``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def net(inplace_alias: bool = False) -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.blocks = nn.Sequential(Block(8), Block(8))
            self.fc = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.stem(x))
            if inplace_alias:
                y.relu_()  # y itself is read below: the mutation is part of the model
            else:
                y = torch.relu(y)
            return self.fc(self.blocks(y).mean(dim=(2, 3)))

    model = Net()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_in_place_relus_are_replayed_exactly_on_differences():
    model = net()
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    reference = Occlusion(model, patch=4, stride=4, fold_batchnorm=False).attribute(x, target=y)
    for precision in ("bf16", "fp16"):
        maps = Occlusion(model, patch=4, stride=4, precision=precision).attribute(x, target=y)
        assert corr(maps, reference) > 0.9999  # was -0.41: the clean pass kept overwritten values
    traced = trace(model.double(), fold=True, always=True)
    assert traced is not None
    copies = x.double().repeat(3, 1, 1, 1)[:3]
    copies[0, :, :4, :4] = 0
    deltas = Deltas(traced.module, torch.float64)
    assert deltas.exact
    torch.testing.assert_close(deltas(x[:1].double(), 0, copies), model(copies), rtol=0, atol=1e-12)


def test_an_in_place_write_the_graph_hides_falls_back_to_autocast():
    model = net(inplace_alias=True)
    traced = trace(model, fold=True, always=True)
    assert traced is not None and not Deltas(traced.module, torch.bfloat16).exact
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    reference = Occlusion(model, patch=4, stride=4, fold_batchnorm=False).attribute(x, target=y)
    maps = Occlusion(model, patch=4, stride=4, precision="fp16").attribute(x, target=y)
    assert corr(maps, reference) > 0.99


def test_weights_changed_through_data_and_hooks_added_later_count():
    model = net()
    x, y = torch.rand(1, 3, 16, 16), torch.tensor([2])
    occlusion = Occlusion(model, patch=4, stride=4)
    occlusion.attribute(x, target=y)
    model.stem.weight.data.mul_(5)  # no version bump
    fresh = Occlusion(model, patch=4, stride=4, fold_batchnorm=False).attribute(x, target=y)
    torch.testing.assert_close(occlusion.attribute(x, target=y), fresh, rtol=1e-4, atol=1e-6)
    handle = model.bn.register_forward_hook(lambda module, inputs, output: output * 0)
    try:
        assert float(occlusion.attribute(x, target=y).abs().max()) == 0.0  # the hook runs
    finally:
        handle.remove()


def test_tracing_leaves_no_trace_on_a_forward_that_changes_its_model():
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 3)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.last = self.bn(self.conv(x))
            return self.fc(self.last.mean(dim=(2, 3)))

    model = Counting().eval()
    assert trace(model, fold=True) is None  # its forward changes it: run as it is
    assert model.calls == 0 and not hasattr(model, "last")
    Occlusion(model, patch=2).attribute(torch.rand(1, 1, 6, 6), target=torch.tensor([0]))
    assert isinstance(model.last, torch.Tensor) and model.calls == 2  # the clean pass and one batch
