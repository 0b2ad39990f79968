"""What one FGSM/PGD/BIM call reads from the device and launches besides its algorithm: one
transfer of five numbers once its work is queued (the input's and the labels' ranges, the clean
outputs' finiteness), nothing before the clean pass, no second clamp, and the clean prediction
and the iterations made only when read; a result's deferred fields through concat, to, pickle and
torch.save."""

from __future__ import annotations

import warnings

import pytest
import torch
from _call_reads import ATTACKS, _model, _Transfers
from _dispatch import Recorder

from salmap.attacks import BIM, FGSM, PGD, AttackResult


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
