"""PGD: per-sample random starts (noise that depends on the sample only), restarts keeping each sample's
worst case, per-sample eps, and the restart parameters in the registry and on the command line."""

from __future__ import annotations

import pytest
import torch
from _fgsm_models import linear_model

from salmap.attacks import BIM, PGD, AttackResult


def test_sample_uniform_depends_on_the_sample_only():
    from salmap.randomness import sample_uniform

    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # 1,024 features: unrelated noise correlates within 0.031 (one sd)
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
