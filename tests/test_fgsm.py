"""FGSM / PGD / BIM: known answers, properties and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import LinearClassifier

from salmap.attacks import BIM, FGSM, PGD, AttackResult


def linear_model():
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 3.0], [0.0, 0.0, -1.0, 1.0]])
    return LinearClassifier(weight)


def test_fgsm_known_answer_on_linear_model():
    model = linear_model()
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    y = torch.tensor([0])
    # Cross-entropy gradient wrt x: W^T (softmax(Wx) - onehot(y)).
    p = torch.softmax(model(x), dim=1)
    grad = (p - torch.tensor([[1.0, 0.0, 0.0]])) @ model.linear.weight
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    result = FGSM(model, eps=0.1)(x, y=y)
    assert torch.allclose(result.x_adv, expected)
    assert torch.allclose(result.linf, torch.tensor([0.1]))
    assert result.l0.item() == float((grad != 0).sum())


def test_fgsm_respects_eps_and_bounds(digits_model):
    model, x, y = digits_model
    for eps in (0.05, 0.3, 2.0):
        r = FGSM(model, eps=eps)(x[:50], y=y[:50])
        assert float(r.linf.max()) <= eps + 1e-6
        assert float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0


def test_fgsm_other_bounds():
    model = linear_model()
    x = torch.full((2, 4), -0.9)
    r = FGSM(model, eps=0.5, bounds=(-1.0, 1.0))(x, y=torch.tensor([0, 1]))
    assert float(r.x_adv.min()) >= -1.0
    with pytest.raises(ValueError, match="bounds"):
        FGSM(model, eps=0.5)(x, y=torch.tensor([0, 1]))


def test_fgsm_lowers_accuracy_and_success_is_label_change(digits_model):
    model, x, y = digits_model
    r = FGSM(model, eps=0.3)(x, y=y)
    assert isinstance(r, AttackResult)
    clean_acc = float((r.pred_before == y).float().mean())
    adv_acc = float((r.pred_after == y).float().mean())
    assert clean_acc > 0.85 and adv_acc < clean_acc - 0.3
    assert torch.equal(r.success, r.pred_after != y)


def test_targeted_fgsm_raises_target_score(digits_model):
    model, x, y = digits_model
    target = (y + 3) % 10
    r = FGSM(model, eps=0.05)(x[:40], target=target[:40])
    with torch.no_grad():
        before = torch.log_softmax(model(x[:40]), 1).gather(1, target[:40, None])
        after = torch.log_softmax(model(r.x_adv), 1).gather(1, target[:40, None])
    assert float((after - before).mean()) > 0
    assert torch.equal(r.success, r.pred_after == target[:40])


def test_input_and_model_state_unchanged(digits_model):
    model, x, y = digits_model
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    x0 = x[:10].clone()
    try:
        FGSM(model, eps=0.1)(x[:10], y=y[:10])
        PGD(model, eps=0.1, steps=3)(x[:10], y=y[:10])
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert torch.equal(x[:10], x0)
    finally:
        model.eval()


def test_pgd_stays_in_ball_and_is_reproducible(digits_model):
    model, x, y = digits_model
    attack = PGD(model, eps=0.1, step=0.05, steps=10, seed=3)
    r1, r2 = attack(x[:30], y=y[:30]), attack(x[:30], y=y[:30])
    assert float(r1.linf.max()) <= 0.1 + 1e-6
    assert torch.equal(r1.x_adv, r2.x_adv)
    assert float(r1.x_adv.min()) >= 0 and float(r1.x_adv.max()) <= 1
    fgsm = FGSM(model, eps=0.1)(x[:30], y=y[:30])
    assert r1.success.sum() >= fgsm.success.sum()


def test_bim_has_no_random_start_and_early_stop_counts_iterations(digits_model):
    model, x, y = digits_model
    r = BIM(model, eps=0.2, steps=8, early_stop=True)(x[:30], y=y[:30])
    assert int(r.iterations.max()) <= 8
    assert (r.iterations[r.success] <= 8).all()
    # A sample that is never fooled uses every step.
    assert (r.iterations[~r.success] == 8).all()


def test_batched_equals_one_by_one(digits_model):
    model, x, y = digits_model
    attack = FGSM(model, eps=0.1)
    batch = attack(x[:5], y=y[:5])
    singles = AttackResult.concat([attack(x[i : i + 1], y=y[i : i + 1]) for i in range(5)])
    assert torch.allclose(batch.x_adv, singles.x_adv)
    assert torch.equal(batch.success, singles.success)


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
