"""Defenses as published: block switching's two rounds, DAE + block switching, the adversarial-training
modes of Goodfellow, Madry and TRADES, and EOT's expectation of the loss gradient."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _tiny_defense import ARCH, TINY
from torch import nn

from salmap import models
from salmap.attacks import FGSM, PGD
from salmap.defenses import (
    BPDA,
    EOT,
    PUBLISHED,
    BlockSwitch,
    DenoisingAutoencoder,
    Purified,
    PurifiedChannels,
    adaptive_model,
    adversarial_hook,
    adversarial_training,
    dae_block_switch,
    evaluate_defense,
    train_block_switch,
    train_dae_block_switch,
)
from salmap.defenses.adversarial import adversarial_loss, kl_perturbation, recipe, warmup_eps
from salmap.defenses.block_switch import (
    assemble_block_switch,
    block_switch,
    default_split,
    sequential_layers,
    train_sub_models,
)
from salmap.defenses.evaluation import AttackSpec
from salmap.gradients import loss_grad


@pytest.fixture(scope="module")
def copies(digits) -> list[nn.Module]:
    train, _ = digits
    nets, _ = train_sub_models(ARCH, train.x, train.y, channels=3, epochs=2, lr=1e-2, seed=0, progress=False)
    return nets


# -- block switching ----------------------------------------------------------------------

def test_default_split_holds_the_convolutions_and_the_first_fully_connected_layer() -> None:
    lenet = models.build("lenet", in_channels=1, num_classes=10)
    layers = sequential_layers(lenet)
    at = default_split(layers)
    lower, upper = layers[:at], layers[at:]
    assert sum(isinstance(m, nn.Linear) for m in lower) == 1 and isinstance(lower[-1], nn.ReLU)
    assert all(isinstance(m, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.Dropout)) for m in lower)
    assert sum(isinstance(m, nn.Conv2d) for m in lower) == sum(isinstance(m, nn.Conv2d) for m in layers)
    assert isinstance(upper[0], nn.Linear) and sum(isinstance(m, nn.Linear) for m in upper) == 2
    # No Linear layer: half of the layers; a single trailing Linear stays in the upper part.
    assert default_split([nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Conv2d(1, 1, 3), nn.ReLU()]) == 2
    assert default_split([nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Linear(4, 2)]) == 1


def test_five_channels_by_default_and_the_split_is_recorded() -> None:
    model = block_switch(ARCH)
    assert model.num_channels == 5
    assert model.salmap_arch["kwargs"]["split"] == 6  # conv, relu, pool, flatten, fc, relu
    assert block_switch(ARCH, channels=4).num_channels == 4


def test_round_two_updates_only_the_active_channels_and_the_upper_part(copies) -> None:
    model = block_switch(ARCH, channels=3, seed=0).train()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    choice = torch.tensor([0, 0, 2, 2])  # channel 1 is not active for any sample
    nn.functional.cross_entropy(model(x, choice=choice), y).backward()
    grads = [[p.grad for p in ch.parameters()] for ch in model.channels]
    assert all(g is not None and bool((g != 0).any()) for g in grads[0] + grads[2])
    assert all(g is None or bool((g == 0).all()) for g in grads[1])
    assert all(p.grad is not None for p in model.upper.parameters())


def test_both_round_two_variants_from_the_same_channels(digits, copies) -> None:
    train, test = digits
    before = [copy.deepcopy(c.state_dict()) for c in copies]
    paper, report = assemble_block_switch(ARCH, copies, train.x, train.y, epochs=2, lr=1e-2, seed=0,
                                          x_test=test.x, y_test=test.y, progress=False)
    frozen, frozen_report = assemble_block_switch(ARCH, copies, train.x, train.y, epochs=2, lr=1e-2, seed=0,
                                                  x_test=test.x, y_test=test.y, progress=False,
                                                  freeze_channels=True)
    # The copies are left as they were; the frozen variant's channels are the copies' lower parts.
    for c, state in zip(copies, before, strict=True):
        for k, v in c.state_dict().items():
            torch.testing.assert_close(v, state[k])
    for k in range(3):
        torch.testing.assert_close(frozen.channels[k][0].weight, copies[k][0][0].weight)
        assert not torch.allclose(paper.channels[k][0].weight, copies[k][0][0].weight)
    assert all(p.requires_grad for p in frozen.parameters()) and not paper.training
    assert report.test_accuracy is not None and frozen_report.test_accuracy is not None
    assert report.test_accuracy > 0.5 and frozen_report.test_accuracy > 0.5


def test_train_block_switch_is_round_one_then_round_two(digits) -> None:
    train, _ = digits
    x, y = train.x[:200], train.y[:200]
    model, _ = train_block_switch(ARCH, x, y, channels=2, epochs=1, lr=1e-2, seed=3, progress=False,
                                  freeze_channels=True)
    nets, _ = train_sub_models(ARCH, x, y, channels=2, epochs=1, lr=1e-2, seed=3, progress=False)
    again, _ = assemble_block_switch(ARCH, nets, x, y, epochs=1, lr=1e-2, seed=3, progress=False,
                                     freeze_channels=True)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# -- EOT: expectation of the loss gradient ----------------------------------------------------

def test_eot_loss_gradient_is_the_expected_loss_gradient() -> None:
    torch.manual_seed(1)
    model = block_switch(ARCH, channels=3, seed=0).eval()
    x, y = torch.rand(5, 1, 8, 8), torch.arange(5)
    _, g = loss_grad(EOT(model), x, y)
    per_channel = [loss_grad(lambda z, k=k: model.channel_forward(z, k), x, y)[1] for k in range(3)]
    torch.testing.assert_close(g, torch.stack(per_channel).mean(dim=0))
    # The logit average differentiates the loss of the mean logits: another direction.
    _, g_logits = loss_grad(EOT(model, average="logits"), x, y)
    assert not torch.allclose(g, g_logits)
    cosine = nn.functional.cosine_similarity(g.flatten(1), g_logits.flatten(1)).mean()
    assert float(cosine) > 0.5
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model.channel_forward(x, k), 1) for k in range(3)]).mean(0)
        torch.testing.assert_close(EOT(model)(x), probs.log())
    with pytest.raises(ValueError, match="average must be one of"):
        EOT(model, average="mean")


def test_pgd_on_eot_follows_the_expected_loss() -> None:
    torch.manual_seed(2)
    model = block_switch(ARCH, channels=2, seed=0).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = FGSM(EOT(model), eps=0.1)(x, y=y)
    per_channel = [loss_grad(lambda z, k=k: model.channel_forward(z, k), x, y)[1] for k in range(2)]
    expected = (x + 0.1 * torch.stack(per_channel).mean(0).sign()).clamp(0, 1)
    torch.testing.assert_close(result.x_adv, expected)


# -- DAE + block switching -------------------------------------------------------------------

class _Round(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)


def test_dae_block_switch_is_attacked_with_eot_through_the_denoiser() -> None:
    torch.manual_seed(3)
    switched = block_switch(ARCH, channels=3, seed=0).eval()
    dae = DenoisingAutoencoder(1, width=4).eval()
    defended = dae_block_switch(switched, dae)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    attack_model = adaptive_model(defended, x, y)
    assert isinstance(attack_model, EOT) and attack_model.exact
    assert isinstance(attack_model.model, PurifiedChannels) and attack_model.model.denoiser is dae
    _, g = loss_grad(attack_model, x, y)
    per_channel = [loss_grad(lambda z, k=k: switched.channel_forward(dae(z), k), x, y)[1] for k in range(3)]
    torch.testing.assert_close(g, torch.stack(per_channel).mean(0))
    # A denoiser without a gradient: BPDA in its place, still EOT over the channels.
    masked = adaptive_model(Purified(switched, _Round()), x, y)
    assert isinstance(masked, EOT) and isinstance(masked.model.denoiser, BPDA)
    assert bool((loss_grad(masked, x, y)[1] != 0).any())
    # Monte-Carlo EOT when asked for samples.
    sampled = adaptive_model(defended, x, y, samples=4)
    assert isinstance(sampled, EOT) and not sampled.exact and isinstance(sampled.model, Purified)
    with pytest.raises(ValueError, match="switched must be a BlockSwitch"):
        dae_block_switch(nn.Linear(2, 2), dae)  # type: ignore[arg-type]


def test_dae_block_switch_trains_evaluates_and_round_trips(tmp_path, digits) -> None:
    train, test = digits
    torch.manual_seed(0)
    protected = models.build(TINY, **ARCH["kwargs"])
    from salmap.training import train_classifier

    train_classifier(protected, train.x, train.y, epochs=4, lr=1e-2, progress=False)
    defended, report = train_dae_block_switch(ARCH, train.x, train.y, protected=protected, channels=2,
                                              width=8, epochs=2, lr=1e-2, seed=0, progress=False)
    assert isinstance(defended, Purified) and isinstance(defended.model, BlockSwitch) and report.seconds > 0
    attacks = [AttackSpec("pgd-0.2", "pgd", {"eps": 0.2, "step": 0.05, "steps": 5})]
    result = evaluate_defense(defended, protected, test.x[:40], test.y[:40], attacks, batch_size=40,
                              progress=False)
    assert result["attack_model"] == "EOT"
    assert result["adaptive"]["pgd-0.2"] <= result["transfer"]["pgd-0.2"] + 0.05
    models.save(defended, tmp_path / "d", {"metrics": {"test_accuracy": 0.9}})
    loaded = models.load(tmp_path / "d")
    assert isinstance(loaded, Purified) and isinstance(loaded.model, BlockSwitch)
    x = test.x[:8]
    defended.model.reseed(5)
    loaded.model.reseed(5)
    torch.testing.assert_close(loaded(x), defended(x))


# -- adversarial training modes -------------------------------------------------------------

def test_published_recipes() -> None:
    assert PUBLISHED["goodfellow"].alpha == 0.5 and PUBLISHED["goodfellow"].eps == 0.25
    madry = PUBLISHED["madry"]
    assert (madry.eps, madry.steps, madry.step) == (0.3, 40, 0.01)
    trades = PUBLISHED["trades"]
    assert (trades.eps, trades.steps, trades.step, trades.beta) == (0.3, 40, 0.01, 6.0)
    assert recipe("madry", eps=0.1).eps == 0.1 and recipe("madry", eps=0.1).step == 0.01
    assert recipe("goodfellow", eps=0.1).step == 0.1
    with pytest.raises(ValueError, match="mode must be one of"):
        recipe("pgd")
    with pytest.raises(ValueError, match="alpha must be in"):
        recipe("goodfellow", alpha=1.5)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(TINY, **ARCH["kwargs"]).eval()


def test_goodfellow_loss_mixes_clean_and_fgsm_losses() -> None:
    model = _net()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    xb, yb = adversarial_hook("goodfellow", eps=0.1)(model, x, y)
    torch.testing.assert_close(xb[6:], FGSM(model, eps=0.1)(x, y=y).x_adv)
    logits = model(xb)
    ce = nn.functional.cross_entropy
    expected = 0.3 * ce(logits[:6], y) + 0.7 * ce(logits[6:], y)
    torch.testing.assert_close(adversarial_loss("goodfellow", alpha=0.3)(logits, yb), expected)


def test_madry_trains_on_pgd_examples_only() -> None:
    model = _net()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    xb, yb = adversarial_hook("madry", eps=0.2, steps=3, step=0.05, seed=4)(model, x, y)
    assert xb.shape == x.shape and torch.equal(yb, y)
    torch.testing.assert_close(xb, PGD(model, eps=0.2, step=0.05, steps=3, seed=4)(x, y=y).x_adv)
    logits = model(xb)
    torch.testing.assert_close(adversarial_loss("madry")(logits, yb), nn.functional.cross_entropy(logits, y))


def test_eps_warmup_is_off_by_default_and_grows_the_radius_linearly() -> None:
    assert [warmup_eps(0.3, b, 0) for b in range(3)] == [0.3, 0.3, 0.3]
    assert [round(warmup_eps(0.3, b, 3), 6) for b in range(5)] == [0.1, 0.2, 0.3, 0.3, 0.3]
    model = _net()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    hook = adversarial_hook("madry", eps=0.2, steps=3, step=0.05, seed=4, warmup=2)
    for batch, (radius, size) in enumerate([(0.1, 0.025), (0.2, 0.05), (0.2, 0.05)]):
        expected = PGD(model, eps=radius, step=size, steps=3, seed=4 + batch)(x, y=y).x_adv
        torch.testing.assert_close(hook(model, x, y)[0], expected)
    fgsm = adversarial_hook("goodfellow", eps=0.2, warmup=4)
    torch.testing.assert_close(fgsm(model, x, y)[0][6:], FGSM(model, eps=0.05)(x, y=y).x_adv)
    with pytest.raises(ValueError, match="eps_warmup"):
        adversarial_training(_net(), x, y, mode="madry", eps_warmup=-1.0, progress=False)


def test_trades_loss_and_inner_maximisation_as_in_the_authors_code() -> None:
    model = _net()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    gen = torch.Generator().manual_seed(0)
    x_adv = kl_perturbation(model, x, eps=0.1, step=0.02, steps=5, generator=gen)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and float(x_adv.min()) >= 0
    with torch.no_grad():
        p = torch.softmax(model(x), 1)

        def kl(z: torch.Tensor) -> float:
            return float(nn.functional.kl_div(torch.log_softmax(model(z), 1), p, reduction="sum"))

        assert kl(x_adv) > kl(x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    # The loss: natural cross-entropy + beta * sum KL / batch size, gradients through both terms.
    logits = model(torch.cat([x, x_adv])).detach().requires_grad_(True)
    loss = adversarial_loss("trades", beta=6.0)(logits, torch.cat([y, y]))
    clean, adv = logits[:6], logits[6:]
    kl_ref = (torch.softmax(clean, 1) * (torch.log_softmax(clean, 1) - torch.log_softmax(adv, 1))).sum() / 6
    torch.testing.assert_close(loss, nn.functional.cross_entropy(clean, y) + 6.0 * kl_ref)
    loss.backward()
    assert logits.grad is not None and bool((logits.grad[:6] != 0).any()) and bool((logits.grad[6:] != 0).any())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["goodfellow", "madry", "trades"])
def test_every_mode_trains(digits, mode) -> None:
    # Robustness itself is measured on MNIST by benchmarks/defenses.py; on 8x8 digits with a tiny
    # net the PGD-accuracy gap is within the noise of 100 images, so this checks the training.
    train, test = digits
    kwargs = {"eps": 0.1, "steps": 3, "step": 0.04} if mode != "goodfellow" else {"eps": 0.1}
    robust = _net(1)
    report = adversarial_training(robust, train.x[:600], train.y[:600], mode=mode, epochs=6, lr=1e-2, seed=0,
                                  x_test=test.x, y_test=test.y, progress=False, **kwargs)
    assert report.test_accuracy is not None and report.test_accuracy > 0.5, report.test_accuracy
    assert report.train_loss[-1] < 0.8 * report.train_loss[0], report.train_loss
    assert not robust.training and all(p.requires_grad for p in robust.parameters())
