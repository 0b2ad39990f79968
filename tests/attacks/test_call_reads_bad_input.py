"""Bad input to one FGSM/PGD/BIM call, read with the rest after the work: every case refused with the
message the separate checks give, the labels' exact range, out-of-range labels kept from the loss,
per-feature bounds, the input's error first, a model with no classes, labels read once."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from _call_reads import ATTACKS, _model, _Transfers
from _dispatch import Recorder

from salmap._validate import check_input, check_input_and_labels, check_labels, label_range
from salmap.attacks import FGSM


def _message(fn: Any) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


BAD = {
    "nan x": (torch.tensor([[0.5] * 11 + [float("nan")]]), torch.tensor([0])),
    "inf x": (torch.tensor([[0.5] * 11 + [float("inf")]]), torch.tensor([0])),
    "x above": (torch.full((2, 12), 1.5), torch.tensor([0, 1])),
    "x below": (torch.full((2, 12), -0.5), torch.tensor([0, 1])),
    "label too large": (torch.rand(2, 12), torch.tensor([0, 4])),
    "label negative": (torch.rand(2, 12), torch.tensor([-1, 2])),
    "label huge": (torch.rand(2, 12), torch.tensor([0, 2**40 + 1])),
    "label very negative": (torch.rand(2, 12), torch.tensor([-(2**62) - 1, 0])),
    "float labels": (torch.rand(2, 12), torch.tensor([0.0, 1.0])),
    "bool labels": (torch.rand(2, 12), torch.tensor([True, False])),
    "int32 out of range": (torch.rand(2, 12), torch.tensor([0, 7], dtype=torch.int32)),
    "uint8 out of range": (torch.rand(2, 12), torch.tensor([0, 200], dtype=torch.uint8)),
    "wrong shape": (torch.rand(2, 12), torch.tensor([0, 1, 2])),
    "list out of range": (torch.rand(2, 12), [0, 9]),
    "int out of range": (torch.rand(2, 12), 5),
    "float64 x, label huge": (torch.rand(2, 12, dtype=torch.float64), torch.tensor([2**60, 3])),
    "x not a tensor": ([[0.5] * 12], torch.tensor([0])),
    "integer x": (torch.ones(2, 12, dtype=torch.long), torch.tensor([0, 1])),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("targeted", [False, True])
def test_bad_input_is_refused_with_the_message_of_the_separate_checks(case, targeted):
    """The combined read raises exactly what check_input then check_labels raise on their own."""
    x, labels = BAD[case]
    name = "target" if targeted else "y"
    model = _model().double() if isinstance(x, torch.Tensor) and x.dtype == torch.float64 else _model()

    def separate() -> None:
        checked = check_input(x, (0.0, 1.0))
        check_labels(labels, checked.shape[0], 4, name)

    expected = _message(separate)
    for make in ATTACKS.values():
        assert _message(lambda make=make: make(model)(x, **{name: labels})) == expected


def test_the_combined_read_gives_the_labels_exact_range():
    x = torch.rand(3, 5)
    for labels in (torch.tensor([3, 1, 2]), torch.tensor([2**24 + 1, 5, 2**24 - 1]),
                   torch.tensor([-(2**40) - 3, 7, 2**50 + 1]), torch.tensor([0, 255], dtype=torch.uint8)):
        assert check_input_and_labels(x, labels)[1] == label_range(labels) == (int(labels.min()), int(labels.max()))
    for labels in (None, 3, [1, 2], torch.tensor([]), torch.tensor([1.0])):
        assert check_input_and_labels(x, labels)[1] is None
    # half-precision input: the four numbers in float32, the input's range as check_input reads it
    half = torch.tensor([[0.25, 0.75]], dtype=torch.float16)
    assert check_input_and_labels(half, torch.tensor([2049, 4]), (0.0, 1.0))[1] == (4, 2049)
    with pytest.raises(ValueError, match=r"x must lie within bounds \(0.0, 0.5\), got values in \[0.25, 0.75\]"):
        check_input_and_labels(half, torch.tensor([1]), (0.0, 0.5))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_labels_out_of_range_never_reach_the_loss_and_are_still_refused(name):
    """Read after the work, out-of-range labels are clamped into range until then (on a GPU an
    index out of range aborts the loss's kernel); the call still refuses them, and the caller's
    labels are left as they were."""
    seen: list[tuple[int, int]] = []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append((int(labels.min()), int(labels.max())))
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none")

    attack = ATTACKS[name](_model())
    attack.loss_fn = loss_fn
    labels = torch.tensor([-3, 1, 9])
    with pytest.raises(ValueError, match=r"y must be class indices in \[0, 3\], got values in \[-3, 9\]"):
        attack(torch.rand(3, 12), y=labels)
    assert seen and all(0 <= low <= high <= 3 for low, high in seen)
    assert labels.tolist() == [-3, 1, 9]


def test_per_feature_bounds_are_read_with_the_rest_after_the_work(monkeypatch):
    """Per-feature bounds: whether a feature lies outside them is one more number of the one
    transfer (no read before the work); an input outside them is refused as before."""
    low, high = torch.zeros(12), torch.full((12,), 0.5)
    attack = FGSM(_model(), eps=0.1, bounds=(low, high))
    transfers, recorder = _Transfers(monkeypatch), Recorder()
    with recorder:
        attack(torch.rand(4, 12) * 0.5, y=torch.tensor([0, 1, 2, 3]))
    assert transfers.shapes == [(8,)] and recorder.reads == 0
    x = torch.rand(4, 12) * 0.5
    x[2, 5] = 0.75
    with pytest.raises(ValueError, match=r"x must lie within bounds \(per feature"):
        attack(x, y=torch.tensor([0, 1, 2, 3]))
    assert _message(lambda: check_input(x, (low, high))) == _message(lambda: attack(x, y=torch.tensor([0, 1, 2, 3])))


def test_the_inputs_error_comes_first_when_the_call_meets_another_on_the_way():
    """Read after the work, the input's range still decides first: an error met before the end
    (the labels' dtype or shape, the caller's clean outputs, a model that cannot take x) gives
    way to the input's, as when the input was read before the work."""
    model = _model()
    nan = torch.rand(3, 12)
    nan[0, 0] = float("nan")
    above = torch.rand(3, 12) + 1
    y = torch.tensor([0, 1, 3])
    for make in ATTACKS.values():
        attack = make(model)
        for kwargs in ({"y": torch.tensor([0.0, 1.0, 3.0])}, {"y": torch.tensor([0, 1])},
                       {"y": y, "clean": torch.zeros(2, 4)}):
            assert _message(lambda a=attack, k=kwargs: a(nan, **k)) == "x must be finite, got 1 NaN/inf values"
        wrong_model = make(torch.nn.Linear(13, 4))
        assert _message(lambda a=wrong_model: a(above, y=y)) == _message(lambda: check_input(above, (0.0, 1.0)))


def test_a_model_with_no_classes_is_refused_before_any_label_reaches_the_loss():
    x, y = torch.rand(3, 12), torch.tensor([0, 1, 3])
    for make in ATTACKS.values():
        message = _message(lambda m=make: m(lambda t: t[:, :0])(x, y=y))
        assert re.match(r"model must return one score per class, at least 2, for \w+, got output of shape \(3, 0\)", message)


def test_labels_not_read_with_the_input_are_read_once(monkeypatch):
    """Labels the input's transfer does not carry (on another device than x: here, forced) are
    checked before the work by check_labels, and not read again at the end."""
    import salmap._validate as validate

    reads = []
    original = validate.label_range
    monkeypatch.setattr(validate, "label_range", lambda labels: reads.append(1) or original(labels))

    class NotCarried(validate.InputChecks):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reads_labels = False

    import salmap.attacks.base as base
    monkeypatch.setattr(base, "InputChecks", NotCarried)
    FGSM(_model(), eps=0.1)(torch.rand(3, 12), y=torch.tensor([0, 1, 3]))
    assert len(reads) == 1
    with pytest.raises(ValueError, match=r"got values in \[0, 7\]"):
        FGSM(_model(), eps=0.1)(torch.rand(3, 12), y=torch.tensor([0, 1, 7]))
