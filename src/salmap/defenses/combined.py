"""DAE + block switching: a denoising autoencoder in front of a block-switching classifier.

The defense of salmap's seed repository (there on CIFAR-10): inputs are first purified by a
denoising autoencoder (:mod:`salmap.defenses.denoiser`), then classified by a block-switching
model (:mod:`salmap.defenses.block_switch`). As a module it is simply
``Purified(switched, denoiser)``: a checkpoint round-trips like either part, and
:func:`salmap.defenses.adaptive.adaptive_model` attacks it adaptively with EOT over the
channels through the denoiser (through BPDA where the denoiser's gradient is masked).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import BoundsLike, check_bounds
from salmap.defenses.block_switch import BlockSwitch, train_block_switch
from salmap.defenses.denoiser import DenoisingAutoencoder, Purified, train_denoiser
from salmap.training import TrainReport


def dae_block_switch(switched: BlockSwitch, denoiser: nn.Module) -> Purified:
    """The composition ``switched(denoiser(x))`` (a :class:`Purified` around a :class:`BlockSwitch`)."""
    if not isinstance(switched, BlockSwitch):
        raise ValueError(f"switched must be a BlockSwitch, got {type(switched).__name__}")
    return Purified(switched, denoiser)


def train_dae_block_switch(
    base: dict[str, Any],
    x: Tensor,
    y: Tensor,
    protected: nn.Module | None = None,
    channels: int = 5,
    split: int | None = None,
    freeze_channels: bool = False,
    width: int = 32,
    noise_std: float = 0.3,
    attack: str = "fgsm",
    eps: float = 0.3,
    epochs: int = 5,
    upper_epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    bounds: BoundsLike = (0.0, 1.0),
    progress: bool = True,
) -> tuple[Purified, TrainReport]:
    """Train block switching on ``base`` and a denoising autoencoder, and compose them.

    The block-switching model is trained as :func:`~salmap.defenses.block_switch.train_block_switch`
    does (``channels``, ``split``, ``freeze_channels``, ``upper_epochs``); the autoencoder as
    :func:`~salmap.defenses.denoiser.train_denoiser` does, on Gaussian noise of ``noise_std`` and
    (when ``protected`` is given, usually the undefended classifier) on ``attack`` examples of
    ``protected`` up to ``eps``, exactly as ``salmap defend dae`` trains it, so that the parts
    are the ones the separate defenses use.

    Returns
    -------
    (model, report): ``Purified(switched, denoiser)`` in eval mode, and the block-switching
    report with ``seconds`` the training time of both parts.

    Examples
    --------
    >>> defended, report = train_dae_block_switch(arch, x_train, y_train, protected=lenet)  # doctest: +SKIP
    """
    bounds = check_bounds(bounds)
    switched, report = train_block_switch(base, x, y, channels=channels, split=split, epochs=epochs,
                                          upper_epochs=upper_epochs, batch_size=batch_size, lr=lr, seed=seed,
                                          progress=progress, freeze_channels=freeze_channels)
    torch.manual_seed(seed)
    denoiser = DenoisingAutoencoder(in_channels=int(x.shape[1]), width=width, bounds=bounds).to(x.device)
    dae_report = train_denoiser(denoiser, x, noise_std=noise_std, model=protected,
                                y=None if protected is None else y, attack=attack, eps=eps, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed, bounds=bounds, progress=progress)
    report.seconds += dae_report.seconds
    return dae_block_switch(switched, denoiser).eval(), report
