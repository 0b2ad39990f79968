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
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import check_input, check_number, check_seed
from salmap.defenses.adaptive import DefenseWarning
from salmap.models.registry import build, register
from salmap.progress import bar as progress_bar
from salmap.training import TrainReport, train_classifier


class BlockSwitch(nn.Module):
    """A classifier whose lower part is one of K channels, picked at random for every sample.

    The choice is drawn per sample on every forward pass, in training and in eval mode
    alike (the randomness *is* the defense), from a ``torch.Generator`` held by the module
    and seeded with ``seed``: the same seed and the same inputs give the same choices.
    :meth:`reseed` restarts the sequence. ``last_choice`` holds the channels of the last pass.

    Parameters
    ----------
    channels: K >= 2 modules with the same output shape (the switching block).
    upper: the shared upper part, fed with a channel's output.
    seed: seed of the channel choices.

    Examples
    --------
    >>> switched = BlockSwitch([lower_a, lower_b, lower_c, lower_d], upper, seed=0)  # doctest: +SKIP
    >>> switched(x).shape        # (B, classes), a different channel mix every call  # doctest: +SKIP
    """

    #: marks the module as randomised for :mod:`salmap.defenses.adaptive`.
    randomized = True
    #: the zoo architecture, when the channels are copies of one zoo model.
    salmap_arch: dict[str, Any]

    def __init__(self, channels: list[nn.Module] | nn.ModuleList, upper: nn.Module, seed: int = 0) -> None:
        super().__init__()
        channels = list(channels)
        if len(channels) < 2:
            raise ValueError(f"channels must hold K >= 2 sub-networks for block switching, got K={len(channels)}")
        for i, ch in enumerate(channels):
            if not isinstance(ch, nn.Module):
                raise ValueError(f"channels[{i}] must be a torch.nn.Module, got {type(ch).__name__}")
        if not isinstance(upper, nn.Module):
            raise ValueError(f"upper must be a torch.nn.Module, got {type(upper).__name__}")
        self.channels = nn.ModuleList(channels)
        self.upper = upper
        self.seed = check_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_choice: Tensor | None = None
        self._frozen_channels = False

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def reseed(self, seed: int) -> BlockSwitch:
        """Restart the channel choices from ``seed``; returns the module."""
        self.seed = check_seed(seed)
        self.generator.manual_seed(seed)
        return self

    def choose(self, batch: int) -> Tensor:
        """Draw one channel index per sample (CPU generator, so the draw is device-independent)."""
        return torch.randint(self.num_channels, (batch,), generator=self.generator)

    def forward(self, x: Tensor, choice: Tensor | None = None) -> Tensor:
        """Classify ``x`` with a random channel per sample, or the channels given by ``choice`` ``(B,)``."""
        if choice is None:
            choice = self.choose(x.shape[0])
        elif choice.shape != (x.shape[0],) or int(choice.min()) < 0 or int(choice.max()) >= self.num_channels:
            raise ValueError(
                f"choice must be {x.shape[0]} channel indices in [0, {self.num_channels - 1}], got {choice.tolist()}"
            )
        if x.requires_grad and torch.is_grad_enabled() and not any(p.requires_grad for p in self.parameters()):
            # A frozen model differentiated with respect to its input through one random draw:
            # a gradient attack that ignores the switching (training, with parameters that
            # require grad, and plain forward passes behind a denoiser are not warned about).
            warnings.warn(
                "gradient taken through a single random channel draw of BlockSwitch: the attack does not "
                "account for the randomness; wrap the model in salmap.defenses.adaptive.EOT",
                DefenseWarning,
                stacklevel=2,
            )
        choice = choice.to(x.device)
        self.last_choice = choice.detach().cpu()
        # Run each channel once on the samples that drew it, then undo the grouping.
        order = torch.argsort(choice, stable=True)
        parts = [ch(x[choice == k]) for k, ch in enumerate(self.channels) if bool((choice == k).any())]
        grouped = torch.cat(parts)
        features = torch.empty_like(grouped)
        features = features.index_copy(0, order, grouped)
        return self.upper(features)

    def channel_forward(self, x: Tensor, k: int) -> Tensor:
        """The network with channel ``k`` for every sample (deterministic)."""
        check_number("k", k, low=0, high=self.num_channels - 1, integer=True)
        return self.upper(self.channels[k](x))

    def train(self, mode: bool = True) -> BlockSwitch:
        super().train(mode)
        if self._frozen_channels:
            self.channels.eval()
        return self

    @contextmanager
    def frozen_channels(self) -> Iterator[BlockSwitch]:
        """Keep the channels fixed (eval mode, no gradients) while the upper part trains."""
        flags = [(p, p.requires_grad) for p in self.channels.parameters()]
        self._frozen_channels = True
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            self.channels.eval()
            yield self
        finally:
            self._frozen_channels = False
            for p, flag in flags:
                p.requires_grad_(flag)


def sequential_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a feed-forward model, in order: an ``nn.Sequential`` (nested ones flattened)
    or a model with ``features`` and ``classifier`` sequentials (the zoo's lenet)."""
    if isinstance(model, nn.Sequential):
        layers: list[nn.Module] = []
        for child in model:
            layers.extend(sequential_layers(child) if isinstance(child, nn.Sequential) else [child])
        return layers
    features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential):
        return sequential_layers(features) + sequential_layers(classifier)
    raise ValueError(
        "model must be an nn.Sequential or have nn.Sequential 'features' and 'classifier' to be split into "
        f"lower and upper parts for block switching, got {type(model).__name__}"
    )


def default_split(layers: list[nn.Module]) -> int:
    """Where the switching block ends by default: after the first ``Linear`` layer and the
    parameter-free layers right after it (its activation, dropout), so that a channel holds
    the convolutional layers and the first fully connected layer (Wang et al. 2019, §4.1.3);
    after half of the layers when no ``Linear`` layer leaves a non-empty upper part."""
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            end = i + 1
            while end < len(layers) and not any(True for _ in layers[end].parameters()):
                end += 1
            if end < len(layers):
                return end
            break
    return max(1, len(layers) // 2)


def split_model(model: nn.Module, split: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """``(lower, upper)``: the first ``split`` layers of ``model`` and the rest (sharing parameters)."""
    layers = sequential_layers(model)
    at = default_split(layers) if split is None else split
    check_number("split", at, low=1, high=len(layers) - 1, integer=True)
    return nn.Sequential(*layers[:at]), nn.Sequential(*layers[at:])


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
