"""The denoiser (lower reconstruction error; trained on adversarial examples) and the adaptive attacks:
EOT's gradient the mean of the channels' (exact, and Monte Carlo), BPDA's straight-through gradient,
a warning for a randomised model attacked without EOT, the adversarial-training hook, and the adaptive
attack never weaker than the transfer attack."""

from __future__ import annotations

import warnings

import _defense_fixtures as shared
import pytest
import torch
from _defense_fixtures import switch
from torch import nn

from salmap.attacks import FGSM, ISI
from salmap.defenses import (
    BPDA,
    EOT,
    DefenseWarning,
    DenoisingAutoencoder,
    Purified,
    adaptive_model,
    adversarial_hook,
    evaluate_defense,
    reconstruction_error,
    train_denoiser,
)
from salmap.defenses.adaptive import check_gradients, warn_if_unaccounted
from salmap.defenses.evaluation import AttackSpec
from salmap.gradients import output_vjps
from salmap.lrp import lrp_relevance, make_composite

trained = shared.trained  # (a fixture)
dae = shared.dae  # (a fixture)
switched = shared.switched  # (a fixture)


# -- denoiser ---------------------------------------------------------------------

def test_denoiser_lowers_reconstruction_error(digits, dae) -> None:
    _, test = digits
    untrained = DenoisingAutoencoder(in_channels=1, width=8)
    noisy = (test.x + 0.3 * torch.randn(test.x.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    identity_error = float(nn.functional.mse_loss(noisy, test.x))
    with torch.no_grad():
        after = reconstruction_error(dae, test.x, noise_std=0.3, seed=7)
        before = reconstruction_error(untrained, test.x, noise_std=0.3, seed=7)
    assert after < 0.5 * before
    assert after < identity_error  # better than not denoising at all


def test_denoiser_trains_on_adversarial_examples(digits, trained) -> None:
    train, _ = digits
    model, _ = trained
    denoiser = DenoisingAutoencoder(in_channels=1, width=4)
    report = train_denoiser(denoiser, train.x[:128], noise_std=0.1, model=model, y=train.y[:128],
                            attack="pgd", eps=0.2, epochs=2, seed=0, progress=False)
    assert len(report.train_loss) == 2 and report.train_loss[1] < report.train_loss[0]
    assert all(p.requires_grad for p in model.parameters()) and not model.training


# -- adaptive attacks -----------------------------------------------------------------

def test_eot_gradient_is_the_mean_of_the_channel_gradients() -> None:
    model = switch(3, seed=0)
    x = torch.rand(4, 1, 8, 8)
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    eot = EOT(model, average="logits")
    assert eot.exact
    _, (g_eot,) = output_vjps(eot, x, [w])
    per_channel = [output_vjps(lambda z, k=k: model.channel_forward(z, k), x, [w])[1][0] for k in range(3)]
    torch.testing.assert_close(g_eot, torch.stack(per_channel).mean(dim=0))
    assert not torch.allclose(per_channel[0], per_channel[1])  # the average is not trivial


@pytest.mark.parametrize("average", ["loss", "probabilities", "logits"])
def test_eot_relevance_is_the_mean_of_the_channel_relevances(average: str) -> None:
    """LRP has no rule for the log of a mean softmax: EOT's relevance is the mean of its passes' (the logits' mean)."""

    class Channel(nn.Module):
        def __init__(self, switched: nn.Module, k: int) -> None:
            super().__init__()
            self.switched, self.k = switched, k

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.switched.channel_forward(z, self.k)

    model = switch(3, seed=0)
    x = torch.rand(4, 1, 8, 8)
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    composite = make_composite("epsilon")
    _, relevance, _ = lrp_relevance(EOT(model, average=average), x, lambda out: w, composite)
    per_channel = [lrp_relevance(Channel(model, k), x, lambda out: w, composite)[1] for k in range(3)]
    torch.testing.assert_close(relevance, torch.stack(per_channel).mean(dim=0))
    assert not torch.allclose(per_channel[0], per_channel[1])


class _Disagreeing(nn.Module):
    """Three linear channels on ones(1, 4): the mean of their logits favours class 1, EOT's log of the
    mean softmax (what it predicts) class 0."""

    num_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.ch = nn.ModuleList([nn.Linear(4, 2, bias=False) for _ in range(3)])
        with torch.no_grad():
            self.ch[0].weight.copy_(torch.tensor([[0.0] * 4, [5.0] * 4]))
            for k in (1, 2):
                self.ch[k].weight.copy_(torch.tensor([[0.5] * 4, [0.0] * 4]))

    def channel_forward(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return self.ch[k](x)


def test_relevance_of_eot_is_of_eot_s_own_prediction_and_isi_stops_on_it() -> None:
    """The mean of the logits is explained, but the prediction stays EOT's: ISI with relevance attacks
    class 0 (it stopped at once, on the mean logits' class 1), and LRP's default target is class 0."""
    eot, x = EOT(_Disagreeing()), torch.ones(1, 4)
    assert eot(x).argmax(1).item() == 0
    out, relevance, _ = lrp_relevance(eot, x, lambda o: torch.nn.functional.one_hot(o.argmax(1), 2).float(),
                                      make_composite("epsilon"))
    torch.testing.assert_close(out, eot(x).detach())
    torch.testing.assert_close(relevance.sum(), torch.tensor(4 * 0.5 * 2 / 3))  # class 0's mean logit
    for indicator in ("relevance", "sensitivity"):
        result = ISI(eot, indicator=indicator, norm="linf", eps=0.05, max_iter=20)(x, y=torch.tensor([0]))
        assert result.success.item() and result.iterations.item() == 10
    assert eot.average == "loss"


@pytest.mark.filterwarnings("ignore::salmap.defenses.DefenseWarning")
def test_monte_carlo_eot_gradient_is_the_mean_over_its_passes() -> None:
    model = switch(4, seed=0)
    x = torch.rand(3, 1, 8, 8)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    model.reseed(11)
    _, (g_eot,) = output_vjps(EOT(model, samples=5, average="logits"), x, [w])
    model.reseed(11)
    choices = [model.choose(3) for _ in range(5)]
    grads = [output_vjps(lambda z, c=c: model(z, choice=c), x, [w])[1][0] for c in choices]
    torch.testing.assert_close(g_eot, torch.stack(grads).mean(dim=0))


def test_bpda_passes_the_gradient_straight_through(trained) -> None:
    model, _ = trained
    quantize = Purified(model, BPDA(torch.round))
    x = torch.rand(6, 1, 8, 8)
    y = torch.arange(6)
    blocked = Purified(model, _Round())
    with pytest.warns(DefenseWarning, match="zero"):
        assert not check_gradients(blocked, x, y)
    attack_model = adaptive_model(blocked, x, y)
    assert isinstance(attack_model.denoiser, BPDA)
    # Identity backward: d model(round(x)) / dx := (grad model)(round(x)).
    w = torch.randn(6, 10)
    _, (g,) = output_vjps(quantize, x, [w])
    _, (expected,) = output_vjps(model, torch.round(x), [w])
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(quantize(x), model(torch.round(x)))


class _Round(nn.Module):
    """A purifier without a usable gradient (rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)


def test_randomised_model_attacked_without_eot_warns() -> None:
    model = switch(2)
    x = torch.rand(4, 1, 8, 8)
    with pytest.warns(DefenseWarning, match="EOT"):
        assert warn_if_unaccounted(model, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_unaccounted(EOT(model), model, x)
        FGSM(EOT(model), eps=0.1)(x, y=torch.zeros(4, dtype=torch.long))
        FGSM(EOT(model, samples=3), eps=0.1)(x, y=torch.zeros(4, dtype=torch.long))
    with pytest.warns(DefenseWarning, match="single random channel draw"):
        FGSM(model, eps=0.1)(x, y=torch.zeros(4, dtype=torch.long))
    assert isinstance(adaptive_model(model, x, torch.zeros(4, dtype=torch.long)), EOT)


def test_adversarial_hook_appends_fgsm_examples(trained) -> None:
    model, _ = trained
    x = torch.rand(8, 1, 8, 8)
    y = torch.arange(8)
    xb, yb = adversarial_hook("goodfellow", eps=0.1)(model, x, y)
    assert xb.shape == (16, 1, 8, 8) and torch.equal(yb, torch.cat([y, y]))
    torch.testing.assert_close(xb[:8], x)
    torch.testing.assert_close(xb[8:], FGSM(model, eps=0.1)(x, y=y).x_adv)


def test_adaptive_attack_is_never_weaker_than_transfer(digits, trained, dae, switched) -> None:
    _, test = digits
    model, _ = trained
    x, y = test.x[:60], test.y[:60]
    attacks = [
        AttackSpec("fgsm-0.2", "fgsm", {"eps": 0.2}),
        AttackSpec("pgd-0.2", "pgd", {"eps": 0.2, "step": 0.02, "steps": 10}),
    ]
    for defended in (Purified(model, dae), switched[0]):
        modes = [(m, m.training) for m in defended.modules()]
        report = evaluate_defense(defended, model, x, y, attacks, batch_size=30, seed=0, progress=False)
        assert [(m, m.training) for m in defended.modules()] == modes
        for name in ("fgsm-0.2", "pgd-0.2"):
            assert report["adaptive"][name] <= report["transfer"][name]
            assert report["worst"][name] <= min(report["adaptive"][name], report["transfer"][name])
        assert report["adaptive"]["pgd-0.2"] < report["clean_accuracy"]


def test_bpda_refuses_an_approximation_that_cannot_be_called() -> None:
    """(was accepted, failing at the first forward pass with "'str' object is not callable")"""
    with pytest.raises(ValueError, match="^approximation must be a torch.nn.Module, a callable or None, got str$"):
        BPDA(nn.Identity(), "x")  # type: ignore[arg-type]
