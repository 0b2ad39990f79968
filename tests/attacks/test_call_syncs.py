"""FGSM and PGD (without early stopping) never wait for the device between the clean pass and
their last gradient: every read of a device value (a host synchronisation on a GPU) happens
before the first forward pass or after the work is queued. Checked on the CPU by recording the
operators a call dispatches (``_local_scalar_dense`` is what ``item()``/``bool()`` run)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _dispatch import Recorder
from torch import nn

from salmap.attacks import BIM, FGSM, PGD


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


@pytest.mark.parametrize("make", [
    lambda m: FGSM(m, eps=0.1),
    lambda m: PGD(m, eps=0.1, step=0.02, steps=3),
    lambda m: PGD(m, eps=0.1, step=0.02, steps=3, restarts=2),
    lambda m: BIM(m, eps=0.1, step=0.02, steps=3),
], ids=["fgsm", "pgd", "pgd-restarts", "bim"])
@pytest.mark.parametrize("targeted", [False, True])
def test_no_host_read_between_the_first_forward_and_the_last_gradient(make: Any, targeted: bool) -> None:
    model = _model()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1])
    recorder = Recorder()
    with recorder:
        make(model)(x, **({"target": labels} if targeted else {"y": labels}))
    ops = recorder.ops
    first_forward = ops.index("aten.addmm")
    last_gradient = len(ops) - 1 - ops[::-1].index("aten.mm")
    reads = [i for i, op in enumerate(ops) if op == "aten._local_scalar_dense"]
    assert not [i for i in reads if first_forward < i < last_gradient], ops[first_forward:last_gradient]


def test_nan_outputs_still_raise_after_a_sync_free_run() -> None:
    class NaNModel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :3] * float("nan")

    x = torch.rand(2, 1, 4, 4)
    for attack in (FGSM(NaNModel(), eps=0.1), PGD(NaNModel(), eps=0.1, steps=2)):
        with pytest.raises(ValueError, match="NaN or infinite outputs on 2 of 2 clean"):
            attack(x, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\], got values in \[0, 3\]"):
        FGSM(_model(), eps=0.1)(x, y=torch.tensor([0, 3]))


def test_jsma_reads_the_device_at_most_three_times_per_iteration() -> None:
    """One read for the rows that stepped and at most two inside the exact pair search
    (the Pareto layers' size, the rows not yet proved optimal); the active-set loop and the
    class-score gradients read nothing (scatter, not one_hot, which checks its classes)."""
    from salmap.attacks import JSMA

    reads = {"aten._local_scalar_dense", "aten.nonzero", "aten.index[bool]"}
    model = _model()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    recorder = Recorder()
    with recorder:
        result = JSMA(model, theta=1.0, gamma=0.5, strict_targets=False)(x, target=torch.tensor([0, 1, 2, 0, 1, 2]))
    count = sum(op in reads for op in recorder.ops)
    iterations = int(result.iterations.max())
    assert iterations >= 2
    assert count <= 3 * iterations + 3, (count, iterations)
