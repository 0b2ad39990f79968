"""FGSM / PGD / BIM: known answers, properties and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import LinearClassifier
from torch import nn

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


# -- PGD: per-sample random starts, restarts, per-sample eps ---------------------------------

def test_sample_uniform_depends_on_the_sample_only():
    from salmap.randomness import sample_uniform

    x = torch.rand(6, 1, 32, 32)  # 1,024 features: unrelated noise correlates within 0.031 (one sd)
    u = sample_uniform(x, seed=7)
    assert u.shape == x.shape and u.dtype == x.dtype
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    # The same sample at another position, in another batch: the same noise.
    shuffled = x[[3, 0, 5, 1, 4, 2]]
    torch.testing.assert_close(sample_uniform(shuffled, seed=7)[0], u[3], rtol=0, atol=0)
    torch.testing.assert_close(sample_uniform(x[2:3], seed=7)[0], u[2], rtol=0, atol=0)
    # Different samples, seeds and streams: unrelated noise.
    flat = u.flatten(1)
    corr = torch.corrcoef(flat)
    assert float(corr.fill_diagonal_(0).abs().max()) < 0.2
    other_seed = sample_uniform(x, seed=8).flatten(1)
    other_stream = sample_uniform(x, seed=7, stream=1).flatten(1)
    for v in (other_seed, other_stream):
        assert abs(float(torch.corrcoef(torch.stack([flat[0], v[0]]))[0, 1])) < 0.2
    # A one-ulp change of one pixel changes the whole sample's noise.
    nudged = x.clone()
    nudged[0, 0, 0, 0] = torch.nextafter(nudged[0, 0, 0, 0], torch.tensor(2.0))
    assert not torch.equal(sample_uniform(nudged, seed=7)[0], u[0])
    assert torch.equal(sample_uniform(nudged, seed=7)[1:], u[1:])


def test_pgd_batched_equals_one_by_one_and_starts_differ(digits_model):
    model, x, y = digits_model
    attack = PGD(model, eps=0.2, step=0.05, steps=3, seed=1)
    batch = attack(x[:6], y=y[:6])
    singles = AttackResult.concat([attack(x[i : i + 1], y=y[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batch.x_adv, singles.x_adv)
    assert torch.equal(batch.success, singles.success)
    # The random start alone (steps=1 with a zero-length move is not allowed, so look at the noise):
    # two calls on two different samples start from unrelated points.
    start = PGD(model, eps=0.2, steps=1, seed=1)
    twice = torch.cat([x[:1], x[1:2]])
    a, b = (start._run(twice[i : i + 1], y[i : i + 1], False, model(twice[i : i + 1]))[0] - twice[i : i + 1]
            for i in range(2))
    inner = (a.abs() < 0.19) & (b.abs() < 0.19)  # away from the bounds' clipping
    assert abs(float(torch.corrcoef(torch.stack([a[inner], b[inner]]))[0, 1])) < 0.3


def test_pgd_restarts_keep_the_per_sample_worst_case(digits_model):
    model, x, y = digits_model
    xs, ys = x[:40], y[:40]
    attack = PGD(model, eps=0.08, step=0.02, steps=4, seed=0, restarts=4)
    result = attack(xs, y=ys)
    # Reference: the four runs one by one, then the rule "success first, then the highest loss".
    runs = [attack._attempt(xs, ys, False, 0.08, 0.02, r) for r in range(4)]
    with torch.no_grad():
        logits = [model(xr) for xr, _ in runs]
    success = torch.stack([z.argmax(1) != ys for z in logits])
    loss = torch.stack([torch.nn.functional.cross_entropy(z, ys, reduction="none") for z in logits])
    key = success.float() * 1e6 + loss
    expected = torch.stack([xr for xr, _ in runs])[key.argmax(0), torch.arange(40)]
    torch.testing.assert_close(result.x_adv, expected)
    assert torch.equal(result.success, success.any(0))
    assert (result.iterations == 16).all()
    single = PGD(model, eps=0.08, step=0.02, steps=4, seed=0)(xs, y=ys)
    assert int(result.success.sum()) >= int(single.success.sum())
    torch.testing.assert_close(single.x_adv, runs[0][0])  # restart 0 is the single run
    # early_stop: a sample that succeeded is not restarted.
    early = PGD(model, eps=0.08, step=0.02, steps=4, seed=0, restarts=4, early_stop=True)(xs, y=ys)
    assert torch.equal(early.success, result.success)
    assert int(early.iterations.sum()) < int(result.iterations.sum())
    batched = PGD(model, eps=0.08, step=0.02, steps=4, seed=0, restarts=3)
    one_by_one = AttackResult.concat([batched(xs[i : i + 1], y=ys[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched(xs[:5], y=ys[:5]).x_adv, one_by_one.x_adv)


def test_pgd_targeted_restarts_prefer_the_lowest_target_loss(digits_model):
    model, x, y = digits_model
    target = (y[:20] + 1) % 10
    attack = PGD(model, eps=0.05, step=0.01, steps=3, seed=2, restarts=3)
    result = attack(x[:20], target=target)
    runs = [attack._attempt(x[:20], target, True, 0.05, 0.01, r)[0] for r in range(3)]
    with torch.no_grad():
        loss = torch.stack([torch.nn.functional.cross_entropy(model(xr), target, reduction="none") for xr in runs])
        hit = torch.stack([model(xr).argmax(1) == target for xr in runs])
    key = hit.float() * 1e6 - loss
    torch.testing.assert_close(result.x_adv, torch.stack(runs)[key.argmax(0), torch.arange(20)])


def test_pgd_per_sample_eps(digits_model):
    model, x, y = digits_model
    eps = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3])
    for attack in (PGD(model, eps=eps, steps=5, seed=0), BIM(model, eps=eps, steps=5)):
        r = attack(x[:5], y=y[:5])
        assert (r.linf <= eps + 1e-6).all() and float(r.linf[0]) == 0.0
        assert float(r.linf[4]) > 0.2
    same = PGD(model, eps=torch.full((5,), 0.1), steps=5, seed=0)(x[:5], y=y[:5])
    scalar = PGD(model, eps=0.1, steps=5, seed=0)(x[:5], y=y[:5])
    torch.testing.assert_close(same.x_adv, scalar.x_adv)
    with pytest.raises(ValueError, match=r"eps must hold one radius per sample, 3 for this batch"):
        PGD(model, eps=eps, steps=2)(x[:3], y=y[:3])
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        PGD(model, eps=torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="1-D float tensor"):
        PGD(model, eps=torch.tensor([[0.1]]))


def test_pgd_restart_parameters_reach_the_registry():
    from salmap import registry

    params = registry.get_attack("pgd").param_map
    assert params["restarts"].type is int and params["restarts"].default == 1
    assert params["early_stop"].type is bool and params["eps"].type is float
    assert "random starts" in params["restarts"].help
    with pytest.raises(ValueError, match="restarts"):
        registry.get_attack("pgd").check({"restarts": 0})
    with pytest.raises(ValueError, match="restarts must be 1 without a random start"):
        PGD(linear_model(), restarts=3, random_start=False)
    for name in ("fgsm", "pgd", "bim", "jsma", "isi"):
        assert "least-likely" in registry.get_attack(name).targeting


def test_cli_offers_restarts_and_early_stop(capsys):
    from salmap.cli import main

    with pytest.raises(SystemExit):
        main(["attack", "pgd", "--help"])
    text = capsys.readouterr().out
    assert "--restarts N" in text and "--early-stop" in text


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
