"""A model must return one output row per sample: one that keeps the first row (or repeats the
batch) is refused in one line by every attack and explainer. Before, the explainers returned maps
of zeros for every sample but the first, and the attacks failed deep in torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from salmap import models
from salmap.attacks import FGSM, ISI, JSMA, PGD
from salmap.explain import LRP, GradCAM, GradientSaliency, Occlusion


class Rows(nn.Module):
    """A lenet whose output keeps its first row (``first``) or holds the batch twice."""

    def __init__(self, first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.m, self.first = models.build("lenet", in_channels=1, num_classes=10, input_size=[28, 28]), first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(x)
        return out[:1] if self.first else torch.cat([out, out])


CALLS = {
    "gradient": lambda m, x, y: GradientSaliency(m).attribute(x),
    "gradient-target": lambda m, x, y: GradientSaliency(m).attribute(x, target=y),
    "gradcam": lambda m, x, y: GradCAM(m, layer="m.features.7").attribute(x),
    "lrp": lambda m, x, y: LRP(m).attribute(x),
    "occlusion": lambda m, x, y: Occlusion(m, patch=7, stride=7).attribute(x),
    "fgsm": lambda m, x, y: FGSM(m, eps=0.1)(x, y=y),
    "pgd": lambda m, x, y: PGD(m, eps=0.1, steps=2)(x, y=y),
    "jsma": lambda m, x, y: JSMA(m, gamma=0.02)(x, target=(y + 1) % 10),
    "isi": lambda m, x, y: ISI(m, max_iter=2)(x, y=y),
}


@pytest.mark.parametrize("first", [True, False], ids=["first-row", "twice"])
@pytest.mark.parametrize("call", list(CALLS))
def test_a_model_returning_other_rows_than_samples_is_refused(call: str, first: bool) -> None:
    model = Rows(first).eval()
    x, y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3, 4])
    shape = (1, 10) if first else (8, 10)
    with pytest.raises(ValueError, match=rf"^the model must return one output row per sample of x: x holds 4 samples, "
                                         rf"the model returned an output of shape \({shape[0]}, 10\)$"):
        CALLS[call](model, x, y)
