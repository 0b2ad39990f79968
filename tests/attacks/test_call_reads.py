"""What one FGSM/PGD/BIM call reads from the device and launches besides its algorithm: one
transfer of five numbers once its work is queued (the input's and the labels' ranges, the clean
outputs' finiteness), nothing before the clean pass, no second clamp, and the clean prediction
and the iterations made only when read. Every bad input is refused with the message it had
before."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from _dispatch import Recorder
from conftest import LinearClassifier

from salmap._validate import check_input, check_input_and_labels, check_labels, label_range
from salmap.attacks import BIM, FGSM, PGD, AttackResult


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


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("targeted", [False, True])
def test_a_call_reads_the_device_once_and_launches_nothing_it_does_not_need(monkeypatch, name, targeted):
    model = _model()
    x, labels = torch.rand(8, 12, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3] * 2)
    attack = ATTACKS[name](model)
    kwargs = {"target": labels} if targeted else {"y": labels}
    transfers, recorder = _Transfers(monkeypatch), Recorder()
    with recorder:
        result = attack(x, **kwargs)
    # the input's min and max, the labels', the clean outputs' smallest and largest row sum and smallest
    # output (finite? probabilities?): one transfer, after the last gradient
    assert transfers.shapes == [(7,)]
    assert recorder.reads == 0
    last_gradient = len(recorder.ops) - 1 - recorder.ops[::-1].index("aten.mm")
    assert len(recorder.ops) - 1 - recorder.ops[::-1].index("aten.cat") > last_gradient
    steps = 1 if name == "fgsm" else 3
    # the labels' clamp into range until they are read (1), then _run's own and none after it:
    # FGSM's step; PGD's and BIM's ball-and-bounds limits (2), their steps, and PGD's random start
    assert recorder.ops.count("aten.clamp") == 1 + {"fgsm": 1, "pgd": 2 + 3 + 1, "bim": 2 + 3}[name]
    for op in ("aten.argmax", "aten.ones", "aten.full", "aten.fill_"):  # pred_before and iterations: when read
        assert op not in recorder.ops, op
    with torch.no_grad():
        clean = model(x)
    assert torch.equal(result.pred_before, clean.argmax(dim=1))
    assert torch.equal(result.iterations, torch.full((8,), steps, dtype=torch.long))
    assert len(result) == 8
    # the same figures as a call that makes them at once (a caller's clean outputs)
    eager = ATTACKS[name](model)(x, clean=clean, **kwargs)
    assert torch.equal(eager.x_adv, result.x_adv) and torch.equal(eager.pred_before, result.pred_before)
    assert torch.equal(eager.iterations, result.iterations) and torch.equal(eager.success, result.success)
    # the attack's next call looks at the outputs' sum only (probabilities are looked for once per attack)
    transfers.shapes.clear()
    again = attack(x, **kwargs)
    assert transfers.shapes == [(5,)] and torch.equal(again.x_adv, result.x_adv)


def test_probabilities_are_looked_for_on_an_attacks_first_call_and_nans_on_every_call():
    class Softmax(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.broken = _model(), False

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            out = self.net(t).softmax(dim=1)
            return out * float("nan") if self.broken else out

    model = Softmax()
    x, y = torch.rand(4, 12, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3])
    attack = FGSM(model, eps=0.1)
    with pytest.warns(UserWarning, match="look like probabilities"):
        attack(x, y=y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attack(x, y=y)  # the second call does not look again
    model.broken = True
    with pytest.raises(ValueError, match="NaN or infinite outputs"):
        attack(x, y=y)


def test_results_are_those_of_a_clamp_after_run():
    """No second clamp: x_adv is exactly what clamping it again would give (FGSM's known answer)."""
    model = _model()
    x, y = torch.rand(6, 12, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 3, 0, 1])
    x.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    x = x.detach()
    result = FGSM(model, eps=0.2)(x, y=y)
    assert torch.equal(result.x_adv, torch.clamp(x + 0.2 * grad.sign(), 0, 1))
    for attack in (PGD(model, eps=0.2, step=0.05, steps=4), BIM(model, eps=0.2, step=0.05, steps=4)):
        x_adv = attack(x, y=y).x_adv
        assert torch.equal(x_adv, torch.clamp(x_adv, 0, 1))
        assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6


def test_lazy_fields_survive_concat_and_to():
    model = _model()
    x, y = torch.rand(4, 12), torch.tensor([0, 1, 2, 3])
    a, b = FGSM(model, eps=0.1)(x, y=y), PGD(model, eps=0.1, steps=2)(x, y=y)
    both = AttackResult.concat([a, b])
    assert torch.equal(both.iterations, torch.tensor([1] * 4 + [2] * 4))
    assert torch.equal(both.pred_before, model(x).argmax(1).repeat(2))
    assert len(both) == 8 and torch.equal(a.to("cpu").pred_before, a.pred_before)


def test_a_measured_result_holds_no_deferred_work():
    import pickle

    model = _model()
    result = FGSM(model, eps=0.1)(torch.rand(3, 12), y=torch.tensor([0, 1, 2])).measure()
    copy = pickle.loads(pickle.dumps(result))
    for name in ("x_adv", "success", "l0", "pred_before", "pred_after", "iterations"):
        assert torch.equal(getattr(copy, name), getattr(result, name)), name



def test_an_unread_result_can_be_saved():
    # torch.save / pickle / multiprocessing of a result straight from the call: its deferred fields
    # (functions holding the model) are evaluated on the way, the same as read first
    import io

    model = _model()
    x, y = torch.rand(3, 12), torch.tensor([0, 1, 2])
    saved, reference = FGSM(model, eps=0.1)(x, y=y), FGSM(model, eps=0.1)(x, y=y)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    for name in ("x_adv", "success", "l0", "l2", "linf", "pred_before", "pred_after", "iterations", "labels"):
        assert torch.equal(getattr(loaded, name), getattr(reference, name)), name
    assert "not evaluated" not in repr(loaded)



def test_a_result_moves_to_a_device_only():
    result = FGSM(_model())(torch.rand(2, 12), y=torch.tensor([0, 1]))
    assert result.to("cpu").labels.dtype == torch.long and result.to(torch.device("cpu")).success.dtype == torch.bool
    with pytest.raises(ValueError, match=r"^device must be a torch.device or a name such as 'cpu', got torch.float64"):
        result.to(torch.float64)  # (was: labels and success cast to float64)

def test_targeted_and_untargeted_results_are_not_joined():
    model = _model()
    x, y = torch.rand(2, 12), torch.tensor([0, 1])
    untargeted, targeted = FGSM(model)(x, y=y), FGSM(model)(x, target=(y + 1) % 4)
    with pytest.raises(ValueError, match=r"results must be all targeted or all untargeted.*\[False, True\]"):
        AttackResult.concat([untargeted, targeted])

def test_a_caller_changing_its_clean_outputs_afterwards_does_not_change_pred_before():
    model = _model()
    x, y = torch.rand(3, 12), torch.tensor([0, 1, 2])
    clean = model(x).detach()
    result = FGSM(model, eps=0.1)(x, y=y, clean=clean)
    expected = clean.argmax(1).clone()
    clean.neg_()
    assert torch.equal(result.pred_before, expected)


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
