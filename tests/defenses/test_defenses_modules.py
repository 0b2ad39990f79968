"""Defended models are ordinary modules: Purified and BlockSwitch round trip through a checkpoint, block
switching routes each sample through a random channel (reproducible with a seed), train_block_switch
follows the paper, and the defended models follow the device."""

from __future__ import annotations

import copy

import _defense_fixtures as shared
import pytest
import torch
from _defense_fixtures import switch

from salmap import models
from salmap.defenses import (
    BlockSwitch,
    Purified,
)

trained = shared.trained  # (a fixture)
dae = shared.dae  # (a fixture)
switched = shared.switched  # (a fixture)


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



def test_train_block_switch_follows_the_paper(switched) -> None:
    model, report = switched
    assert isinstance(model, BlockSwitch) and not model.training
    assert all(p.requires_grad for p in model.parameters())  # channel freezing was undone
    assert report.test_accuracy is not None and report.test_accuracy > 0.75
    # Each channel is the lower part of its own trained copy: they differ.
    w0, w1 = (ch[0].weight for ch in model.channels)
    assert not torch.allclose(w0, w1)


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


def test_denoiser_inputs_are_checked_in_one_line() -> None:
    """Labels that are not one per image (two for four: trained anyway, failing or not by the
    shuffle), and images of other channels than the denoiser's (a raw convolution error)."""
    from salmap.defenses import DenoisingAutoencoder, reconstruction_error, train_denoiser

    net = models.build("lenet", in_channels=1, num_classes=10, input_size=[28, 28]).eval()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for y in (torch.tensor([1]), torch.tensor([1, 2]), [[1, 2, 3, 4]]):
        with pytest.raises(ValueError, match=r"^y must hold one class index per sample of x, shape \(4,\), got "):
            train_denoiser(DenoisingAutoencoder(in_channels=1), x, epochs=1, model=net, y=y, progress=False)
    with pytest.raises(ValueError, match=r"^the denoiser cannot be run on x of shape \(1, 1, 28, 28\): .*channels"):
        train_denoiser(DenoisingAutoencoder(in_channels=3), x, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^the denoiser cannot be run on x of shape \(2, 3, 28, 28\): "):
        reconstruction_error(DenoisingAutoencoder(in_channels=1), torch.rand(2, 3, 28, 28))
