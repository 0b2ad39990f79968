"""Defenses: purification, block switching, adversarial training, EOT/BPDA and their evaluation."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from _tiny_defense import ARCH, TINY
from torch import nn

from salmap import models
from salmap.attacks import FGSM
from salmap.cli import main
from salmap.defenses import (
    BPDA,
    EOT,
    BlockSwitch,
    DefenseWarning,
    DenoisingAutoencoder,
    Purified,
    adaptive_model,
    adversarial_hook,
    adversarial_training,
    check_trained,
    default_attacks,
    evaluate_defense,
    reconstruction_error,
    train_block_switch,
    train_denoiser,
)
from salmap.defenses.adaptive import check_gradients, warn_if_unaccounted
from salmap.defenses.block_switch import block_switch
from salmap.defenses.evaluation import AttackSpec
from salmap.gradients import output_vjps
from salmap.training import TrainReport, train_classifier


@pytest.fixture(scope="module")
def trained(digits) -> tuple[nn.Module, float]:
    train, test = digits
    torch.manual_seed(0)
    model = models.build(TINY, **ARCH["kwargs"])
    report = train_classifier(model, train.x, train.y, test.x, test.y, epochs=6, lr=1e-2, seed=0,
                              progress=False)
    return model, float(report.test_accuracy or 0.0)


@pytest.fixture(scope="module")
def dae(digits) -> DenoisingAutoencoder:
    train, _ = digits
    torch.manual_seed(0)
    denoiser = DenoisingAutoencoder(in_channels=1, width=16)
    train_denoiser(denoiser, train.x, noise_std=0.3, epochs=4, lr=1e-2, seed=0, progress=False)
    return denoiser


def switch(k: int = 4, seed: int = 0) -> BlockSwitch:
    torch.manual_seed(1)
    return block_switch(ARCH, channels=k, seed=seed).eval()


# -- ordinary modules ---------------------------------------------------------------

def test_purified_is_an_ordinary_module_and_round_trips(tmp_path, trained, dae) -> None:
    model, _ = trained
    defended = Purified(model, dae, input_shape=(1, 8, 8))
    x = torch.rand(5, 1, 8, 8)
    assert defended.eval() is defended and not defended.training
    out = defended(x)
    assert out.shape == (5, 10) and out.device == x.device
    torch.testing.assert_close(out, model(dae(x)))
    models.save(defended, tmp_path / "p", {"metrics": {"test_accuracy": 0.9}})
    loaded = models.load(tmp_path / "p")
    assert isinstance(loaded, Purified)
    torch.testing.assert_close(loaded(x), out)
    assert copy.deepcopy(defended).to(torch.float64)(x.double()).dtype == torch.float64


def test_block_switch_is_an_ordinary_module_and_round_trips(tmp_path) -> None:
    model = switch(4, seed=3)
    x = torch.rand(16, 1, 8, 8)
    assert model(x).shape == (16, 10)
    models.save(model, tmp_path / "b")
    loaded = models.load(tmp_path / "b")
    assert isinstance(loaded, BlockSwitch) and loaded.num_channels == 4 and not loaded.training
    model.reseed(3)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.to(torch.float64)(x.double()).dtype == torch.float64


def test_switching_is_random_per_sample_and_matches_each_channel() -> None:
    model = switch(4, seed=0)
    x = torch.rand(1, 1, 8, 8).expand(64, 1, 8, 8).contiguous()
    with torch.no_grad():
        out = model(x)
    choice = model.last_choice
    assert choice is not None and choice.shape == (64,)
    assert len(set(choice.tolist())) == 4  # all channels drawn within one batch
    with torch.no_grad():
        for i in (0, 7, 33, 63):
            # Batched routing equals running sample i alone through its channel.
            torch.testing.assert_close(out[i], model.channel_forward(x[i : i + 1], int(choice[i]))[0])
        distinct = {tuple(model.channel_forward(x[:1], k)[0].round(decimals=5).tolist()) for k in range(4)}
    assert len(distinct) == 4  # channels differ, so the switching changes the output


def test_switching_is_reproducible_with_a_seed() -> None:
    model = switch(4, seed=0)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        first, c1 = model.reseed(5)(x), model.last_choice
        second = model(x)
        again, c2 = model.reseed(5)(x), model.last_choice
        other = model.reseed(6)(x)
    torch.testing.assert_close(first, again)
    assert torch.equal(c1, c2)
    assert not torch.equal(first, second)  # the generator moves on between passes
    assert not torch.equal(first, other)


@pytest.fixture(scope="module")
def switched(digits) -> tuple[BlockSwitch, TrainReport]:
    train, test = digits
    return train_block_switch(ARCH, train.x, train.y, channels=2, epochs=3, lr=1e-2, seed=0,
                              x_test=test.x, y_test=test.y, progress=False)


def test_train_block_switch_follows_the_paper(switched) -> None:
    model, report = switched
    assert isinstance(model, BlockSwitch) and not model.training
    assert all(p.requires_grad for p in model.parameters())  # channel freezing was undone
    assert report.test_accuracy is not None and report.test_accuracy > 0.75
    # Each channel is the lower part of its own trained copy: they differ.
    w0, w1 = (ch[0].weight for ch in model.channels)
    assert not torch.allclose(w0, w1)


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


# -- bad input ------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(trained, digits) -> None:
    model, _ = trained
    with pytest.raises(ValueError, match="K >= 2.*K=1"):
        BlockSwitch([nn.Identity()], nn.Identity())
    with pytest.raises(ValueError, match="channels must be in"):
        block_switch(ARCH, channels=1)
    with pytest.raises(ValueError, match="channels must be in"):
        train_block_switch(ARCH, digits[0].x[:8], digits[0].y[:8], channels=0)
    shrinking = nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match=r"denoiser must return a tensor shaped like its input \(1, 1, 8, 8\), got \(1, 1, 6, 6\)"):
        Purified(model, shrinking, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="denoiser must return"):
        Purified(model, shrinking)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="no test accuracy"):
        check_trained({"arch": ARCH, "metrics": {}})
    with pytest.raises(ValueError, match="near chance"):
        check_trained({"arch": ARCH, "metrics": {"test_accuracy": 0.11}}, 10)
    assert check_trained({"metrics": {"test_accuracy": 0.95}}, 10) == 0.95
    torch.manual_seed(0)
    untrained = models.build(TINY, **ARCH["kwargs"])
    with pytest.raises(ValueError, match="undefended model accuracy .* near chance"):
        evaluate_defense(model, untrained, digits[1].x, digits[1].y, [], progress=False)
    with pytest.raises(ValueError, match="samples must be"):
        EOT(switch(2), samples=0)



def test_adversarial_training_takes_labels_as_a_list_and_refuses_others(digits) -> None:
    # a list or array of class indices is labels like a tensor (was "only integer tensors of a single
    # element can be converted to an index" from the batch indexing); a shape or dtype that is not, one line
    x, y = digits[0].x[:16], digits[0].y[:16]
    torch.manual_seed(0)
    model = models.build(TINY, **ARCH["kwargs"])
    state = copy.deepcopy(model.state_dict())
    by_list = adversarial_training(model, x, y.tolist(), epochs=1, progress=False)
    model.load_state_dict(state)
    by_tensor = adversarial_training(model, x, y, epochs=1, progress=False)
    assert by_list.train_loss == by_tensor.train_loss
    with pytest.raises(ValueError, match=r"^y must hold one class index per sample, shape \(16,\), got shape \(8,\)$"):
        adversarial_training(model, x, y[:8], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^y_test must be an integer tensor of class indices, got dtype torch.float32$"):
        train_classifier(model, x, y, x, y.float(), epochs=1, progress=False)

# -- command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, trained) -> str:
    model, accuracy = trained
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    models.save(model, folder, {"bounds": [0.0, 1.0], "input_shape": [1, 8, 8],
                                "class_names": [str(i) for i in range(10)],
                                "metrics": {"test_accuracy": accuracy}})
    return str(folder)


@pytest.mark.parametrize("kind, extra", [
    ("dae", ["--width", "16", "--adversarial", "fgsm"]),
    ("block-switch", ["--channels", "2"]),
    ("dae+block-switch", ["--channels", "2", "--width", "8", "--freeze-channels"]),
    ("adv-train", ["--mode", "goodfellow", "--eps", "0.2"]),
    ("adv-train", ["--mode", "trades", "--steps", "3", "--step", "0.1"]),
    ("adv-train", ["--mode", "madry", "--steps", "3", "--step", "0.1", "--eps-warmup", "1"]),
])
def test_cli_defend_end_to_end(tmp_path, checkpoint, kind, extra, capsys) -> None:
    out = tmp_path / kind
    rc = main(["defend", kind, "--model", checkpoint, "--data", "digits", "--out", str(out), "--epochs", "2",
               "--lr", "0.01", "-n", "30", "--attacks", "fgsm-0.1,pgd-0.3", "--pgd-steps", "5", *extra])
    assert rc == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["defense"] == kind and report["samples"] == 30
    if "--mode" in extra:
        assert report["settings"]["mode"] == extra[1]
        assert report["settings"].get("eps_warmup", 0) == (1.0 if "--eps-warmup" in extra else 0)
    assert set(report["transfer"]) == set(report["adaptive"]) == {"fgsm-0.1", "pgd-0.3"}
    defended, meta = models.load_with_meta(out)
    assert meta["defense"]["kind"] == kind and meta["metrics"]["test_accuracy"] > 0.3
    assert check_trained(meta) == meta["metrics"]["test_accuracy"]
    assert defended(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    printed = capsys.readouterr().out
    assert "adaptive" in printed and "transfer" in printed and "evaluation.json" in printed


def test_cli_rejects_an_untrained_checkpoint(tmp_path, capsys) -> None:
    folder = tmp_path / "untrained"
    models.save(models.build(TINY, **ARCH["kwargs"]), folder, {"bounds": [0.0, 1.0]})
    rc = main(["defend", "dae", "--model", str(folder), "--data", "digits", "--out", str(tmp_path / "o")])
    assert rc == 2  # its model.json records no accuracy: measured on the test split, near chance
    assert "measured test accuracy" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_targets_avoid_true_class_and_prediction(trained, digits, tmp_path) -> None:
    # A targeted attack aims at seeded random classes other than the true one; a sample the
    # undefended model already predicts as its target is not attacked (no perturbation).
    model, _ = trained
    x, y = digits[1].x[:100], digits[1].y[:100]
    specs = [AttackSpec("jsma", "jsma", {"theta": 1.0, "gamma": 0.05}, targeted=True)]
    evaluate_defense(model, model, x, y, specs, batch_size=50, progress=False, out=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    pred = model(x).argmax(dim=1)
    assert len(rows) == 100 and all(r["target"] is not None and r["target"] != r["label"] for r in rows)
    for r in rows:
        assert r["pred_before"] == int(pred[r["index"]])
        if r["pred_before"] == r["target"]:
            assert r["success"] and r["l0"] == 0 and r["iterations"] == 0


def test_default_attacks_run_on_every_defended_model(trained, dae, digits, switched) -> None:
    model, _ = trained
    x, y = digits[1].x[:6], digits[1].y[:6]
    specs = [s for s in default_attacks(isi_iterations=3)
             if s.name in ("jsma-0.145", "isi-l0")]
    assert [s.name for s in specs] == ["jsma-0.145", "isi-l0"]
    for defended in (Purified(model, dae), switched[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report = evaluate_defense(defended, model, x, y, specs, batch_size=6, progress=False)
        for name in ("jsma-0.145", "isi-l0"):
            assert report["worst"][name] < report["clean_accuracy"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_defended_models_follow_the_device(trained, dae) -> None:
    model, _ = trained
    device = torch.device("cuda")
    x = torch.rand(8, 1, 8, 8, device=device)
    for defended in (copy.deepcopy(Purified(model, dae)), switch(3)):
        defended = defended.to(device)
        assert defended(x).device.type == "cuda"
    switched = switch(3, seed=4).to(device)
    cpu = switch(3, seed=4)
    torch.testing.assert_close(switched(x).cpu(), cpu(x.cpu()), rtol=1e-4, atol=1e-5)  # same draws on any device
