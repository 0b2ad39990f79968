"""Training loops for the zoo's models: seeded, reproducible, with a progress bar."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import as_index_tensor, check_number
from salmap.data.base import Dataset
from salmap.gradients import predict
from salmap.progress import bar as progress_bar

#: ``step_hook(model, xb, yb) -> (xb, yb)`` may replace a batch (e.g. adversarial training).
BatchHook = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class TrainReport:
    """What a training run measured."""

    epochs: int
    seconds: float
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a dedicated one for data shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    batch_hook: BatchHook | None = None,
    desc: str = "train",
    cosine: bool = False,
) -> TrainReport:
    """Train ``model`` on ``(x, y)`` with Adam; returns a :class:`TrainReport`.

    Shuffling and initial randomness come from ``seed`` so that a run is reproducible.
    ``cosine`` decays the learning rate to zero over the run. The model is left in eval mode.
    A loss that is not finite (a learning rate far too high) stops the run with a ``ValueError``
    naming the epoch and batch, before the step that would make every weight ``nan``.
    """
    check_number("epochs", epochs, low=1, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("lr", lr, low=0.0, low_open=True)
    gen = seed_everything(seed)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    steps = (n + batch_size - 1) // batch_size
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps) if cosine else None
    )
    report = TrainReport(epochs=epochs, seconds=0.0)
    start = time.perf_counter()
    bar = progress_bar(total=epochs * steps, desc=desc, enabled=progress, unit="batch")
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                xb, yb = x[idx].to(device), y[idx].to(device)
                if batch_hook is not None:
                    xb, yb = batch_hook(model, xb, yb)
                    model.train()
                loss = loss_fn(model(xb), yb)
                value = float(loss.detach())
                if not math.isfinite(value):  # (the step it would take makes every weight nan)
                    raise ValueError(
                        f"{desc}: the loss became {value} at epoch {epoch + 1}, batch {i // batch_size + 1} of {steps}; "
                        f"lower the learning rate (lr={lr:g}) or look for non-finite values in the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
                total += value * idx.numel()
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
            report.train_loss.append(total / n)
    finally:
        bar.close()
        model.eval()
    report.seconds = time.perf_counter() - start
    return report


def _class_indices(x: Tensor, y: Any, name: str) -> Tensor:
    """``y`` as an integer tensor of one class index per sample of ``x`` (a list or array too)."""
    y = as_index_tensor(y, name)
    if tuple(y.shape) != (len(x),):
        raise ValueError(f"{name} must hold one class index per sample, shape ({len(x)},), got shape {tuple(y.shape)}")
    return y


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    batch_hook: BatchHook | None = None,
    shift: int = 2,
    cosine: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> TrainReport:
    """Train a classifier with cross-entropy; measure test accuracy when a test set is given.

    ``shift`` translates every training image by up to that many pixels (seeded), which
    lifts the lenet on the 4,000-image MNIST sample from about 96.5% to above 97%
    (with the cosine learning-rate decay: 97.4% and 97.6% for seeds 0 and 1 at the defaults).
    Images smaller than 16 pixels are not shifted. ``loss_fn(logits, labels)`` replaces the
    cross-entropy (e.g. a loss over the batch a ``batch_hook`` assembled).
    """
    check_number("shift", shift, low=0, integer=True)
    y = _class_indices(x, y, "y")
    if x_test is not None and y_test is not None:
        y_test = _class_indices(x_test, y_test, "y_test")
    hook = batch_hook
    if shift and min(x.shape[-2:]) >= 16:
        gen = torch.Generator().manual_seed(seed + 1)

        def hook(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
            xb = random_shift(xb, shift, gen)
            return batch_hook(model, xb, yb) if batch_hook is not None else (xb, yb)

    report = fit(
        model, x, y, loss_fn or nn.functional.cross_entropy, epochs, batch_size, lr, seed, progress, hook,
        cosine=cosine
    )
    if x_test is not None and y_test is not None:
        report.test_accuracy = classifier_accuracy(model, x_test, y_test)
        report.test_metrics["accuracy"] = report.test_accuracy
    return report


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own random offset in ``[-max_shift, max_shift]`` pixels
    (zero padding at the border): the classic augmentation for digit classifiers."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift, max_shift, max_shift, max_shift))
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :].expand(b, h, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def classifier_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Test accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        pred = predict(model, x.to(device), batch_size).argmax(dim=1).cpu()
    finally:
        model.train(was_training)
    return float((pred == y.cpu()).float().mean())


def trained_meta(train: Dataset, task: str) -> dict[str, Any]:
    """The ``model.json`` fields of a model salmap trains on ``train``: its input shape, bounds
    ``[0, 1]`` without normalisation, the class names and the task."""
    c, h, w = train.x.shape[1:]
    return {"input_shape": [int(c), int(h), int(w)], "bounds": [0.0, 1.0], "normalization": None,
            "class_names": train.class_names, "task": task}
