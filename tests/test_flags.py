"""On/off options take ``True``/``False`` (NumPy's and 0/1 too); a string such as ``"False"``,
which ``bool()`` reads as true, is refused in one line naming the option (it was silently on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salmap import models
from salmap.attacks import JSMA, PGD, SegmentationJSMA
from salmap.explain import GradCAM, GradientSaliency, Occlusion

NET = models.build("lenet", in_channels=1, num_classes=10, input_size=[28, 28]).eval()
OPTIONS = [
    (GradientSaliency, {}, "absolute"), (GradientSaliency, {}, "times_input"),
    (GradCAM, {"layer": "features.7"}, "relu"),
    (Occlusion, {}, "probabilities"), (Occlusion, {}, "progress"), (Occlusion, {}, "fold_batchnorm"),
    (PGD, {}, "random_start"), (PGD, {}, "early_stop"),
    (JSMA, {}, "pairs"), (JSMA, {}, "probabilities"), (JSMA, {}, "strict_targets"),
    (SegmentationJSMA, {}, "pairs"), (SegmentationJSMA, {}, "probabilities"), (SegmentationJSMA, {}, "progress"),
    (SegmentationJSMA, {}, "local"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), OPTIONS, ids=[f"{c.__name__}-{n}" for c, _, n in OPTIONS])
def test_an_option_that_is_not_true_or_false_is_refused(cls: type, kwargs: dict, name: str) -> None:
    for value in ("False", "no", 2, 0.5, torch.tensor([True, False])):
        with pytest.raises(ValueError, match=f"^{name} must be True or False, got "):
            cls(NET, **kwargs, **{name: value})
    for value, expected in ((np.bool_(False), False), (0, False), (1, True), (True, True)):
        assert getattr(cls(NET, **kwargs, **{name: value}), name) is expected
