"""FGSM / PGD: bad labels, inputs and parameters refused with a named error, one label for every sample,
and one call's single read of the device that still checks the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fgsm_models import linear_model
from conftest import LinearClassifier

from salmap.attacks import FGSM, PGD


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y": None, "target": None}, "exactly one of y"),
        ({"y": torch.tensor([0, 1]), "target": torch.tensor([1, 2])}, "exactly one of y"),
        ({"y": torch.tensor([0, 5])}, r"y must be class indices in \[0, 2\]"),
        ({"y": torch.tensor([0])}, r"y must have shape \(2,\)"),
        ({"y": torch.tensor([0.0, 1.0])}, "integer"),
    ],
)
def test_bad_labels(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FGSM(linear_model(), eps=0.1)(torch.rand(2, 4), **kwargs)



@pytest.mark.parametrize("one", [1, torch.tensor(1), np.int64(1), torch.tensor(1, dtype=torch.int32)])
def test_one_label_for_every_sample(one):
    # an int, a 0-d tensor or a NumPy integer: that class for every sample of the batch (as captum's target)
    model, x = linear_model(), torch.rand(3, 4)
    result = FGSM(model, eps=0.1)(x, target=one)
    assert torch.equal(result.labels, torch.tensor([1, 1, 1]))
    assert torch.equal(result.x_adv, FGSM(model, eps=0.1)(x, target=torch.tensor([1, 1, 1])).x_adv)
    result.labels[0] = 2  # the labels are the result's own, not a view of the 0-d tensor
    assert int(one) == 1

def test_bad_inputs_and_parameters():
    model = linear_model()
    with pytest.raises(ValueError, match=r"eps must be in \[0.0, inf\), got -0.1"):
        FGSM(model, eps=-0.1)
    bad = torch.rand(2, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        FGSM(model)(bad, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x must lie within bounds"):
        FGSM(model)(torch.rand(2, 4) + 1.0, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        FGSM(model)(torch.rand(4), y=torch.tensor([0]))
    with pytest.raises(ValueError, match="steps"):
        PGD(model, steps=0)
    with pytest.raises(ValueError, match="bounds"):
        FGSM(model, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"\(B, classes\)"):
        FGSM(lambda x: x[:, :, None], eps=0.1)(torch.rand(2, 4), y=torch.tensor([0, 1]))


def test_one_call_reads_the_device_once_after_its_work(monkeypatch):
    """The input's and the labels' ranges and the clean outputs' finiteness in one transfer,
    once the work is queued; no second clamp after FGSM's own (the labels' clamp into range
    until they are read is the other)."""
    from _dispatch import Recorder

    import salmap._validate as validate

    transfers = []
    original = torch.Tensor.tolist

    def counting_tolist(self):
        transfers.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    torch.manual_seed(0)
    model = LinearClassifier(torch.randn(4, 12)).eval()
    x, y = torch.rand(8, 12), torch.randint(0, 4, (8,))
    attack = FGSM(model, eps=0.1)
    transfers.clear()
    recorder = Recorder()
    with recorder:
        result = attack(x, y=y)
    assert transfers == [(7,)]  # min and max of x, then of y, then the clean outputs' row sums' and their own minimum
    assert recorder.reads == 0
    assert recorder.ops.count("aten.clamp") == 2
    assert torch.equal(result.x_adv, torch.clamp(x + 0.1 * result.x_adv.sub(x).sign(), 0, 1))
    assert validate.label_range(y) == (int(y.min()), int(y.max()))


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 5]), r"y must be class indices in \[0, 3\], got values in \[0, 5\]"),
    (torch.tensor([-1, 2]), r"y must be class indices in \[0, 3\], got values in \[-1, 2\]"),
])
def test_labels_read_with_the_input_are_still_checked(labels, message):
    model = LinearClassifier(torch.randn(4, 12)).eval()
    with pytest.raises(ValueError, match=message):
        FGSM(model, eps=0.1)(torch.rand(2, 12), y=labels)
    with pytest.raises(ValueError, match="x must lie within bounds"):
        FGSM(model, eps=0.1)(torch.rand(2, 12) + 2, y=torch.tensor([0, 1]))
