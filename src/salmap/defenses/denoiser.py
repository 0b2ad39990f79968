"""Denoising-autoencoder purification: a convolutional autoencoder put in front of a classifier.

Gu and Rigazio, "Towards Deep Neural Network Architectures Robust to Adversarial
Examples", 2014, and Meng and Chen, "MagNet: a Two-Pronged Defense against Adversarial
Examples", 2017: an autoencoder trained to map corrupted inputs back to clean ones
removes part of an adversarial perturbation before the classifier sees it. Training
inputs are the clean images plus Gaussian noise and, optionally, FGSM/PGD examples
crafted on the classifier to be protected (Liao et al. 2018 train on adversarial
examples as well); the target is always the clean image.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from salmap._validate import (
    Bounds,
    BoundsLike,
    as_index_tensor,
    check_bounds,
    check_choice,
    check_input,
    check_number,
)
from salmap.defenses.adversarial import training_attack
from salmap.gradients import Model
from salmap.models.registry import build, register
from salmap.training import TrainReport, fit


class DenoisingAutoencoder(nn.Module):
    """Convolutional denoising autoencoder whose output has the input's shape and lies in ``bounds``.

    Encoder: ``conv3x3(width) - ReLU - conv3x3 stride 2 (2*width) - ReLU``; decoder:
    ``transposed conv 2x2 stride 2 (width) - ReLU - conv3x3(in_channels)``, then a sigmoid
    scaled to ``bounds`` (MagNet's autoencoders end in a sigmoid for the same reason: the
    purified image must be a valid image). Odd sizes are handled by resizing the decoder's
    output back to the input's size.

    Parameters
    ----------
    in_channels: channels of the images.
    width: feature maps of the first layer (the bottleneck has ``2 * width``), at most 4096.
    bounds: ``(low, high)`` of valid inputs; the output is squashed into this range.

    Examples
    --------
    >>> dae = DenoisingAutoencoder(in_channels=1)
    >>> dae(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 1, 28, 28])
    """

    def __init__(self, in_channels: int = 1, width: int = 32, bounds: BoundsLike = (0.0, 1.0)) -> None:
        super().__init__()
        check_number("in_channels", in_channels, low=1, integer=True)
        check_number("width", width, low=1, high=4096, integer=True)  # (4096: 436 million weights)
        self.bounds = check_bounds(bounds)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU(),
            nn.Conv2d(width, in_channels, 3, padding=1),
        )
        if not self.bounds.scalar:
            # Per-channel bounds as buffers (not saved: the arch holds them), moved by .to(device) also in a
            # TorchScript copy (salmap.defenses.saving), where bounds.like would pin the tracing device.
            self.register_buffer("bound_low", torch.as_tensor(self.bounds.low).clone(), persistent=False)
            self.register_buffer("bound_high", torch.as_tensor(self.bounds.high).clone(), persistent=False)
        # A zoo model even when constructed directly, so that Purified checkpoints round-trip.
        self.salmap_arch = {"name": "dae", "kwargs": {"in_channels": in_channels, "width": width,
                                                      "bounds": self.bounds.tolist()}}

    def forward(self, x: Tensor) -> Tensor:
        out = self.decoder(self.encoder(x))
        if out.shape[-2:] != x.shape[-2:]:
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        low, high = self._range(out)
        return low + (high - low) * torch.sigmoid(out)

    def _range(self, out: Tensor) -> tuple[Any, Any]:
        if self.bounds.scalar:
            return self.bounds.like(out)
        low, high = cast(Tensor, self.bound_low), cast(Tensor, self.bound_high)
        if low.dim() == 1:  # one value per channel: (1, C, 1, ...), as Bounds.like shapes it
            shape = (1, low.shape[0]) + (1,) * (out.dim() - 2)
            low, high = low.reshape(shape), high.reshape(shape)
        return low.to(out.dtype), high.to(out.dtype)


@register("dae")
def dae(in_channels: int = 1, width: int = 32, bounds: Any = (0.0, 1.0)) -> DenoisingAutoencoder:
    """Build a :class:`DenoisingAutoencoder` (zoo name ``"dae"``)."""
    return DenoisingAutoencoder(in_channels=in_channels, width=width, bounds=tuple(bounds))


def check_denoiser_shape(denoiser: Model, x: Tensor, out: Tensor | None = None) -> Tensor:
    """Raise ``ValueError`` unless ``denoiser(x)`` has ``x``'s shape; returns the output."""
    if out is None:
        try:
            with torch.no_grad():
                out = denoiser(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:  # e.g. x's channels not the denoiser's
            text = " ".join(str(err).split())
            raise ValueError(f"the denoiser cannot be run on x of shape {tuple(x.shape)}: {text[-300:]}") from err
    if not isinstance(out, Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"denoiser must return a tensor shaped like its input {tuple(x.shape)}, got {got}"
        )
    return out


class Purified(nn.Module):
    """Denoise, then classify: ``model(denoiser(x))``, an ordinary ``nn.Module``.

    Gradients flow through the denoiser, so attacking a ``Purified`` module with any
    gradient attack *is* the adaptive white-box attack on the purification defense
    (Carlini and Wagner, "MagNet and 'Efficient Defenses...' Are Not Robust", 2017).

    Parameters
    ----------
    model: the classifier to protect.
    denoiser: a module mapping a batch to a batch of the same shape.
    input_shape: optional ``(C, H, W)``; when given, the denoiser's output shape is checked now.

    Examples
    --------
    >>> defended = Purified(classifier, DenoisingAutoencoder(1))   # doctest: +SKIP
    >>> defended(x).argmax(1)                                        # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, denoiser: nn.Module, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        for name, value in (("model", model), ("denoiser", denoiser)):
            if not isinstance(value, nn.Module):
                raise ValueError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
        self.model = model
        self.denoiser = denoiser
        if input_shape is not None:
            param = next(denoiser.parameters(), None)
            probe = torch.zeros(1, *input_shape, device=None if param is None else param.device)
            check_denoiser_shape(denoiser, probe)
        archs = getattr(model, "salmap_arch", None), getattr(denoiser, "salmap_arch", None)
        if all(archs):
            self.salmap_arch = {"name": "purified", "kwargs": {"model": archs[0], "denoiser": archs[1]}}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(check_denoiser_shape(self.denoiser, x, self.denoiser(x)))


@register("purified")
def purified(model: dict[str, Any], denoiser: dict[str, Any]) -> Purified:
    """Build a :class:`Purified` from the architecture dicts (``{"name", "kwargs"}``) of its parts."""
    return Purified(_build_arch("model", model), _build_arch("denoiser", denoiser))


def _build_arch(name: str, arch: Any) -> nn.Module:
    if not isinstance(arch, dict) or "name" not in arch:
        raise ValueError(f"{name} must be an architecture dict {{'name': ..., 'kwargs': {{...}}}}, got {arch!r}")
    return build(arch["name"], **arch.get("kwargs", {}))


def gaussian_noise(x: Tensor, std: float, generator: torch.Generator, bounds: Bounds) -> Tensor:
    """``x`` plus Gaussian noise of standard deviation ``std`` (seeded), clipped to ``bounds``."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return check_bounds(bounds).clamp(x + std * noise)


def train_denoiser(
    denoiser: nn.Module,
    x: Tensor,
    noise_std: float = 0.3,
    model: nn.Module | None = None,
    y: Tensor | None = None,
    attack: str = "fgsm",
    eps: float = 0.3,
    adversarial_fraction: float = 0.5,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    bounds: BoundsLike = (0.0, 1.0),
    progress: bool = True,
) -> TrainReport:
    """Train ``denoiser`` to map corrupted images back to clean ones (mean squared error).

    Every batch is corrupted with Gaussian noise of standard deviation ``noise_std``.
    When a classifier ``model`` and labels ``y`` are given, a fraction
    ``adversarial_fraction`` of every batch is instead replaced by FGSM or PGD examples
    (``attack``, Linf radius drawn uniformly from ``[0, eps]`` per batch) crafted on
    ``model``, so the denoiser also learns to remove the attack's perturbations.

    Parameters
    ----------
    denoiser: the autoencoder to train (in place); left in eval mode.
    x: clean training images ``(N, C, H, W)`` within ``bounds``.
    noise_std: Gaussian noise level, ``>= 0``.
    model, y: optional classifier and true labels for adversarial training examples.
    attack: ``"fgsm"`` or ``"pgd"`` (10 steps, see :func:`~salmap.defenses.adversarial.training_attack`).
    eps: largest Linf radius of the adversarial examples.
    adversarial_fraction: share of each batch replaced by adversarial examples, in ``[0, 1]``.
    epochs, batch_size, lr, seed, progress: as in :func:`salmap.training.fit`.
    bounds: valid input range.

    Returns
    -------
    TrainReport with the training loss (MSE) per epoch and the time taken.

    Examples
    --------
    >>> dae = DenoisingAutoencoder(1)
    >>> report = train_denoiser(dae, x_train, noise_std=0.3, epochs=3)      # doctest: +SKIP
    """
    bounds = check_bounds(bounds)
    x = check_input(x, bounds, min_dim=4)
    check_number("noise_std", noise_std, low=0.0)
    check_number("eps", eps, low=0.0)
    check_number("adversarial_fraction", adversarial_fraction, low=0.0, high=1.0)
    check_choice("attack", attack, ("fgsm", "pgd"))
    if (model is None) != (y is None):
        raise ValueError("model and y must be given together (adversarial examples need true labels), "
                         f"got model={'None' if model is None else 'given'} and y={'None' if y is None else 'given'}")
    if y is not None and (shape := tuple(as_index_tensor(y, "y").shape)) != (x.shape[0],):
        raise ValueError(f"y must hold one class index per sample of x, shape ({x.shape[0]},), got {shape}")
    check_denoiser_shape(denoiser, x[:1].to(_device_of(denoiser)))
    gen = torch.Generator().manual_seed(seed + 1)
    labels = y

    def corrupt(_: nn.Module, xb: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        noisy = gaussian_noise(xb, noise_std, gen, bounds)
        if model is not None and labels is not None and adversarial_fraction > 0:
            n_adv = int(round(adversarial_fraction * xb.shape[0]))
            if n_adv:
                radius = float(torch.rand((), generator=gen)) * eps
                craft = training_attack(attack, model, radius, 10, seed, bounds)
                yb = labels[idx[:n_adv].cpu()].to(xb.device)
                noisy = torch.cat([craft(xb[:n_adv], y=yb).x_adv, noisy[n_adv:]])
        return noisy, xb

    def mse(out: Tensor, clean: Tensor) -> Tensor:
        return nn.functional.mse_loss(out, clean)

    # fit() feeds (images, indices); the hook turns them into (corrupted, clean) pairs.
    index = torch.arange(x.shape[0])
    return fit(denoiser, x, index, mse, epochs, batch_size, lr, seed, progress, corrupt, desc="denoiser")


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device


@torch.no_grad()
def reconstruction_error(
    denoiser: Model, x: Tensor, noise_std: float = 0.3, seed: int = 0, bounds: BoundsLike = (0.0, 1.0)
) -> float:
    """Mean squared error between ``denoiser(x + noise)`` and ``x`` (noise seeded by ``seed``)."""
    noisy = gaussian_noise(x, noise_std, torch.Generator().manual_seed(seed), check_bounds(bounds))
    return float(nn.functional.mse_loss(check_denoiser_shape(denoiser, noisy), x))
