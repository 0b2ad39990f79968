"""The models the tests of ``test_defenses_modules``, ``test_defenses_adaptive`` and ``test_defenses_cli``
share: the tiny CNN trained on the 8x8 digits, a denoising autoencoder, block switching (built and trained)."""

from __future__ import annotations

import pytest
import torch
from _tiny_defense import ARCH, TINY
from torch import nn

from salmap import models
from salmap.defenses import (
    BlockSwitch,
    DenoisingAutoencoder,
    train_block_switch,
    train_denoiser,
)
from salmap.defenses.block_switch import block_switch
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


@pytest.fixture(scope="module")
def switched(digits) -> tuple[BlockSwitch, TrainReport]:
    train, test = digits
    return train_block_switch(ARCH, train.x, train.y, channels=2, epochs=3, lr=1e-2, seed=0,
                              x_test=test.x, y_test=test.y, progress=False)
