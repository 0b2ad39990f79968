"""What the tests of one FGSM/PGD/BIM call's reads share (``test_call_reads``,
``test_call_reads_bad_input``): a seeded linear model, a counter of device-to-host transfers, the attacks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import LinearClassifier

from salmap.attacks import BIM, FGSM, PGD


def _model() -> LinearClassifier:
    torch.manual_seed(0)
    return LinearClassifier(torch.randn(4, 12)).eval()


class _Transfers:
    """Counts ``Tensor.tolist`` calls (a device-to-host transfer on a GPU; the dispatcher does
    not see them) beside the operators the :class:`Recorder` sees."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shapes: list[tuple[int, ...]] = []
        original = torch.Tensor.tolist

        def counting(tensor: torch.Tensor) -> Any:
            self.shapes.append(tuple(tensor.shape))
            return original(tensor)

        monkeypatch.setattr(torch.Tensor, "tolist", counting)


ATTACKS = {
    "fgsm": lambda m: FGSM(m, eps=0.1),
    "pgd": lambda m: PGD(m, eps=0.1, step=0.02, steps=3),
    "bim": lambda m: BIM(m, eps=0.1, step=0.02, steps=3),
}
