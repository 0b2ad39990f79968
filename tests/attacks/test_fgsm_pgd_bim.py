"""FGSM / PGD / BIM: known answers and properties (the budget and the bounds, lower accuracy, a targeted
step raising the target's score, the caller's input and model left as they were, reproducibility,
batched equals one by one), a lazy module, sign steps as torchattacks rounds them, fp16 steps."""

from __future__ import annotations

import pytest
import torch
from _fgsm_models import linear_model
from torch import nn

from salmap.attacks import BIM, FGSM, PGD, AttackResult


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


def test_a_lazy_module_is_attacked_and_its_parameters_restored():
    """A model with a LazyLinear (parameters created by the first forward pass) runs as is."""
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    x = torch.rand(4, 1, 8, 8)
    result = FGSM(model, eps=0.1)(x, y=torch.arange(4))
    assert result.x_adv.shape == x.shape
    assert all(p.requires_grad for p in model.parameters())


def test_sign_steps_round_as_torchattacks_where_the_gradient_is_zero():
    """Features 0-19 have the same weight for every class, so their loss gradient is zero in exact
    arithmetic and its float32 sign is rounding noise: salmap differentiates the batch mean, as
    torchattacks (nn.CrossEntropyLoss()) does, and so moves them exactly as torchattacks does."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(40, 5)
    with torch.no_grad():
        model.weight.copy_(torch.randn(5, 40, generator=gen))
        model.weight[:, :20] = torch.randn(1, 20, generator=gen)
    x, y = torch.rand(7, 40, generator=gen), torch.randint(0, 5, (7,), generator=gen)

    def reference(reduction: str) -> torch.Tensor:  # torchattacks.FGSM's arithmetic
        xg = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(xg), y, reduction=reduction)
        (grad,) = torch.autograd.grad(loss, xg)
        return torch.clamp(x + 0.1 * grad.sign(), 0, 1)

    want = reference("mean")
    assert not torch.equal(reference("sum"), want)  # the sum's rounding moves some of them the other way
    assert torch.equal(FGSM(model, eps=0.1)(x, y=y).x_adv, want)
    assert torch.equal(PGD(model, eps=0.1, step=0.1, steps=1, random_start=False)(x, y=y).x_adv, want)
    assert torch.equal(BIM(model, eps=0.1, step=0.1, steps=1)(x, y=y).x_adv, want)


def test_fp16_steps_do_not_depend_on_the_batch_size(digits_model):
    """float16 gradients of the batch mean underflow to zero in large batches: in fp16 the
    attacks differentiate the sum, so a sample moves as it would alone."""
    model, x, y = digits_model
    x, y = x[:300], y[:300]
    whole = FGSM(model, eps=0.1, precision="fp16")(x, y=y).x_adv
    alone = torch.cat([FGSM(model, eps=0.1, precision="fp16")(x[i : i + 1], y=y[i : i + 1]).x_adv for i in range(8)])
    assert torch.equal(whole[:8], alone)
    unmoved = float((whole == x).float().mean())
    assert unmoved <= float((FGSM(model, eps=0.1)(x, y=y).x_adv == x).float().mean()) + 0.01
