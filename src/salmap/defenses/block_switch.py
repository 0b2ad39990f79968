"""Block switching: the lower part of a network replaced by K parallel channels, one drawn at random.

Wang, Wang, Chen, Chen, Liu, Lin and Lin, "Block Switching: A Stochastic Approach for
Deep Learning Security", 2019 (arXiv 2002.07920), with the hierarchical form of Wang et
al., "Protecting Neural Networks with Hierarchical Random Switching", IJCAI 2019. The
switching block holds K channels; for every input one channel is chosen at random and
its output feeds a shared upper part. Training (§3.1): round one trains K copies of the
network independently as sub-models and assembles their lower parts as the channels with
a freshly initialised upper part; round two trains the assembled model with the channel
switched at random for every sample, so that "only weights parameters in the active
channel will be updated" together with the upper part. Defaults follow the paper's
experiments (§4.1.3): the channels hold every convolutional layer and the first fully
connected layer, K = 5 (the seed's repository used 4: ``channels=4``).

The module itself is :class:`~salmap.defenses.switching.BlockSwitch` and the cut into lower
and upper parts :mod:`salmap.defenses.layer_split`; both are importable from here. This
module builds block-switching classifiers from models and trains them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import check_input, check_number
from salmap.defenses.layer_split import default_split, sequential_layers, split_model
from salmap.defenses.switching import BlockSwitch
from salmap.models.registry import build, register
from salmap.progress import bar as progress_bar
from salmap.training import TrainReport, train_classifier


def from_models(models: list[nn.Module], split: int | None = None, seed: int = 0,
                upper: nn.Module | None = None) -> BlockSwitch:
    """A :class:`BlockSwitch` whose channels are the lower parts of ``models`` (K >= 2 copies of
    one architecture) and whose upper part is ``upper`` or a deep copy of the first model's."""
    if len(models) < 2:
        raise ValueError(f"models must hold K >= 2 networks for block switching, got K={len(models)}")
    parts = [split_model(m, split) for m in models]
    top = parts[0][1] if upper is None else split_model(upper, split)[1]
    switched = BlockSwitch([lower for lower, _ in parts], copy.deepcopy(top) if upper is None else top, seed)
    archs = [getattr(m, "salmap_arch", None) for m in [*models, *([] if upper is None else [upper])]]
    if archs[0] and all(a == archs[0] for a in archs):
        # Copies of one zoo architecture: the switched model is a zoo model too (checkpoints round-trip).
        switched.salmap_arch = {"name": "block-switch", "kwargs": {
            "base": archs[0], "channels": len(models), "split": len(parts[0][0]), "seed": seed}}
    return switched


@register("block-switch")
def block_switch(base: dict[str, Any], channels: int = 5, split: int | None = None, seed: int = 0) -> BlockSwitch:
    """Build an (untrained) :class:`BlockSwitch` of ``channels`` copies of the architecture ``base``
    (``{"name": ..., "kwargs": {...}}``), split after layer ``split`` (zoo name ``"block-switch"``)."""
    check_number("channels", channels, low=2, integer=True)
    if not isinstance(base, dict) or "name" not in base:
        raise ValueError(f"base must be an architecture dict {{'name': ..., 'kwargs': {{...}}}}, got {base!r}")
    copies = [build(base["name"], **base.get("kwargs", {})) for _ in range(channels + 1)]
    return from_models(copies[:channels], split, seed, upper=copies[channels])


def train_block_switch(
    base: dict[str, Any],
    x: Tensor,
    y: Tensor,
    channels: int = 5,
    split: int | None = None,
    epochs: int = 5,
    upper_epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    progress: bool = True,
    freeze_channels: bool = False,
) -> tuple[BlockSwitch, TrainReport]:
    """Train a block-switching classifier in Wang et al.'s two rounds (arXiv 2002.07920, §3.1).

    1. Round one: train ``channels`` full copies of the architecture ``base`` as independent
       sub-models, from different random initialisations (seeds ``seed``, ``seed + 1``, ...),
       and keep the lower part (the first ``split`` layers) of each as a channel.
    2. Round two: assemble the channels with a freshly initialised upper part and train the
       whole model while the channel is switched at random for every sample: a sample's loss
       reaches only its active channel, so each step updates the upper part and, in every
       channel, what the samples that drew it ask for.

    ``freeze_channels=True`` keeps the channels fixed in round two and trains the upper part
    only (salmap's earlier variant, and the seed repository's). Side by side on the lenet and
    the MNIST sample, see ``benchmarks/defenses.py``.

    Parameters
    ----------
    base: architecture dict ``{"name": zoo name, "kwargs": {...}}`` of the network.
    x, y: training images and labels.
    channels: K, the number of parallel channels (``>= 2``); 5 as in the paper's experiments.
    split: number of leading layers forming a channel (default: the convolutional layers and
        the first fully connected layer, see :func:`default_split`).
    epochs: epochs for each copy in round one; ``upper_epochs`` (default ``epochs``) for round two.
    batch_size, lr, seed, progress: as in :func:`salmap.training.train_classifier`.
    x_test, y_test: optional test set; the report then holds the switched model's accuracy.
    freeze_channels: train only the upper part in round two.

    Returns
    -------
    (model, report): the trained :class:`BlockSwitch` (eval mode, reseeded with ``seed``)
    and a report whose ``seconds`` is the total training time of both rounds.

    Examples
    --------
    >>> arch = {"name": "lenet", "kwargs": {"in_channels": 1, "num_classes": 10}}
    >>> model, report = train_block_switch(arch, x_train, y_train)                  # doctest: +SKIP
    >>> frozen, _ = train_block_switch(arch, x_train, y_train, freeze_channels=True)  # doctest: +SKIP
    """
    copies, seconds = train_sub_models(base, x, y, channels, epochs, batch_size, lr, seed, progress)
    return assemble_block_switch(base, copies, x, y, split, epochs if upper_epochs is None else upper_epochs,
                                 batch_size, lr, seed, x_test, y_test, progress, freeze_channels, seconds)


def train_sub_models(
    base: dict[str, Any], x: Tensor, y: Tensor, channels: int = 5, epochs: int = 5, batch_size: int = 64,
    lr: float = 1e-3, seed: int = 0, progress: bool = True,
) -> tuple[list[nn.Module], float]:
    """Round one of :func:`train_block_switch`: ``channels`` independently trained copies of
    ``base`` (seeds ``seed + k``) and the seconds it took. Reusable: both round-two variants
    can be trained from the same copies."""
    check_number("channels", channels, low=2, integer=True)
    check_input(x, min_dim=4)
    copies: list[nn.Module] = []
    seconds = 0.0
    for k in progress_bar(range(channels), desc="block-switch channels", enabled=progress):
        torch.manual_seed(seed + k)
        net = build(base["name"], **base.get("kwargs", {})).to(x.device)
        seconds += train_classifier(net, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + k,
                                    progress=progress).seconds
        copies.append(net)
    return copies, seconds


def assemble_block_switch(
    base: dict[str, Any], copies: list[nn.Module], x: Tensor, y: Tensor, split: int | None = None,
    epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, x_test: Tensor | None = None,
    y_test: Tensor | None = None, progress: bool = True, freeze_channels: bool = False, seconds: float = 0.0,
) -> tuple[BlockSwitch, TrainReport]:
    """Round two of :func:`train_block_switch` on trained ``copies`` (deep-copied, left as they were)."""
    check_number("epochs", epochs, low=1, integer=True)
    torch.manual_seed(seed + len(copies))
    fresh = build(base["name"], **base.get("kwargs", {})).to(x.device)
    model = from_models([copy.deepcopy(c) for c in copies], split, seed, upper=fresh)
    args = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + len(copies), progress=progress)
    if freeze_channels:
        with model.frozen_channels():
            report = train_classifier(model, x, y, x_test, y_test, **args)  # type: ignore[arg-type]
    else:
        report = train_classifier(model, x, y, x_test, y_test, **args)  # type: ignore[arg-type]
    model.eval().reseed(seed)
    report.seconds += seconds
    return model, report


__all__ = [
    "BlockSwitch", "assemble_block_switch", "block_switch", "default_split", "from_models", "sequential_layers",
    "split_model", "train_block_switch", "train_sub_models",
]
