"""The block-switching module: K parallel channels below a shared upper part, one channel drawn
at random for every sample (Wang et al. 2019, arXiv 2002.07920; built and trained by
:mod:`salmap.defenses.block_switch`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import check_number, check_seed
from salmap.defenses.adaptive import DefenseWarning


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
