"""The shared gradient machinery every attack and explainer calls.

One forward pass, then as many vector-Jacobian products (VJPs) as the caller asks
for, over the whole batch at once. Every forward pass goes through :func:`forward`, which
reduces tuples, dicts and ``ModelOutput``s to their logits (:func:`salmap.logits.logits_of`).
The model is put in eval mode with frozen parameters while it runs and restored afterwards
(:func:`salmap.frozen.frozen`); iterative attacks run their steps through
:func:`salmap.active_set.active_set_loop`, which drops finished samples. Both are
re-exported here, where the algorithms import the machinery from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from salmap.active_set import ActiveStep, active_set_loop
from salmap.frozen import frozen, mode_is_fixed, set_eval
from salmap.logits import logits_of

Model = Callable[[Tensor], Tensor]
#: ``loss_fn(logits, labels) -> (B,)``: a per-sample loss (``reduction='none'``), as :func:`loss_grad` takes it.
LossFn = Callable[[Tensor, Tensor], Tensor]


def forward(model: Model, x: Tensor) -> Tensor:
    """``model(x)`` reduced to its logits: a tuple's first element, a dict's or ``ModelOutput``'s
    ``logits`` (see :func:`salmap.logits.logits_of`)."""
    return logits_of(model(x))


def output_vjps(
    model: Model,
    x: Tensor,
    cotangents: Sequence[Tensor | Callable[[Tensor], Tensor]],
    transform: Callable[[Tensor], Tensor] | None = None,
    wrt: Callable[[], Tensor] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """One forward pass of ``model`` on ``x`` and one VJP per cotangent.

    Parameters
    ----------
    model:
        Maps a batch to outputs (logits for a classifier, ``(B, C, H, W)`` for a segmenter).
    x:
        The input batch. It is not modified; gradients are taken on a detached copy.
    cotangents:
        For each VJP, a tensor shaped like the (transformed) output, or a function
        of that output returning one. The VJP is the gradient of
        ``(cotangent * output).sum()`` with respect to ``x``, per sample.
    transform:
        Applied to the model's output before the VJPs (e.g. ``softmax``).
    wrt:
        Called after the forward pass; returns the tensor to differentiate with respect to
        instead of ``x`` (e.g. a layer's activation captured by a forward hook, for
        Grad-CAM), so that the backward pass stops there. Default: ``x``.

    Returns
    -------
    (output, grads):
        The detached (transformed) output and one gradient per cotangent, each shaped like
        ``x`` (or like ``wrt()``).
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward(model, xg)
        if transform is not None:
            out = transform(out)
        inp = xg if wrt is None else wrt()
        grads: list[Tensor] = []
        for i, cot in enumerate(cotangents):
            weight = cot(out.detach()) if callable(cot) else cot
            (g,) = torch.autograd.grad(
                out, inp, grad_outputs=weight.to(out.dtype), retain_graph=i < len(cotangents) - 1,
                allow_unused=True,
            )
            grads.append(torch.zeros_like(inp) if g is None else g.detach())
    return out.detach(), grads


def softmax_classes(out: Tensor) -> Tensor:
    """Softmax over the class dimension (dim 1)."""
    return torch.softmax(out, dim=1)


def class_score_grads(
    model: Model, x: Tensor, classes: Tensor, probabilities: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the chosen class's score and of the sum of all other classes' scores.

    This is the forward derivative that JSMA (Papernot et al. 2016) reads: with
    ``Z`` the logits (or softmax probabilities when ``probabilities=True``),
    ``alpha = dZ_t/dx`` and ``beta = sum_{j != t} dZ_j/dx``. It costs one forward
    pass and two VJPs (the target, and the sum of all classes), never one backward
    pass per class.

    Parameters
    ----------
    model: classifier mapping ``(B, ...)`` to ``(B, K)``.
    x: input batch ``(B, ...)``.
    classes: long tensor ``(B,)``, the class ``t`` for each sample.
    probabilities: differentiate softmax outputs instead of logits.

    Returns
    -------
    (scores, alpha, beta): scores ``(B, K)`` (logits or probabilities), and two tensors shaped like ``x``.
    """

    def target_onehot(out: Tensor) -> Tensor:
        # (scatter, not one_hot: one_hot reads the classes' range back from the device)
        return torch.zeros_like(out).scatter_(1, classes.reshape(-1, 1), 1.0)

    scores, (alpha, total) = output_vjps(
        model,
        x,
        [target_onehot, torch.ones_like],
        transform=softmax_classes if probabilities else None,
    )
    return scores, alpha, total - alpha


@dataclass
class RecordedPass:
    """A forward pass kept for a later backward pass: the leaf ``input`` (requiring grad)
    and the model's ``output`` with its graph. Made by :func:`record_forward`."""

    input: Tensor
    output: Tensor


def record_forward(model: Model, x: Tensor) -> RecordedPass:
    """One forward pass of ``model`` on (a detached view of) ``x`` that keeps its graph, so that
    the same pass gives a prediction first and a gradient later (see :func:`loss_grad`)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return RecordedPass(xg, forward(model, xg))


def loss_grad(
    model: Model,
    x: Tensor,
    labels: Tensor,
    loss_fn: LossFn | None = None,
    recorded: RecordedPass | None = None,
    batch_mean: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-sample loss gradient: returns ``(logits, d loss / d x)``.

    ``loss_fn(logits, labels)`` must return one loss per sample (``reduction='none'``);
    the default is cross-entropy. Gradients of the summed loss are per-sample
    gradients because samples do not interact in eval mode. ``batch_mean``: differentiate
    the batch mean instead (each gradient divided by the batch size), the reduction of
    ``nn.CrossEntropyLoss()``: sign methods use it so that their float32 rounding is that of
    torchattacks and of most training code, which matters only where a gradient is within
    rounding error of zero. ``recorded``, the pass of
    :func:`record_forward` on ``x``, saves the forward pass (its graph is consumed). A model
    with an ``expected_loss(x, labels, loss_fn) -> (logits, loss)`` method (EOT) computes the
    loss itself (``recorded`` is then not used).
    """
    fn = loss_fn or _per_sample_cross_entropy
    # A model averaging over random passes (salmap.defenses.adaptive.EOT) supplies the expected loss.
    expected = getattr(model, "expected_loss", None)
    with torch.enable_grad():
        if callable(expected):
            xg = x.detach().requires_grad_(True)
            logits, loss = expected(xg, labels, fn)
            total = loss.mean() if batch_mean else loss.sum()
        else:
            if recorded is None:
                recorded = record_forward(model, x)
            xg, logits = recorded.input, recorded.output
            if loss_fn is None:  # one reduced cross-entropy: the arithmetic of nn.CrossEntropyLoss()
                total = torch.nn.functional.cross_entropy(logits, labels, reduction="mean" if batch_mean else "sum")
            else:
                loss = loss_fn(logits, labels)
                total = loss.mean() if batch_mean else loss.sum()
        (g,) = torch.autograd.grad(total, xg, allow_unused=True)
    return logits.detach(), torch.zeros_like(xg) if g is None else g.detach()


def _per_sample_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


@torch.no_grad()
def predict(model: Model, x: Tensor, batch_size: int = 256) -> Tensor:
    """Model outputs for ``x`` in batches of ``batch_size``, without gradients."""
    outs = [forward(model, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs)


def predict_checked(model: Model, x: Tensor) -> Tensor:
    """:func:`predict`, or a ``ValueError`` naming ``x``'s shape when the model cannot take ``x``
    (a 3-D image without its batch dimension, the wrong image size or dtype)."""
    try:
        out = predict(model, x)
    except torch.cuda.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        text = " ".join(str(err).split())
        raise ValueError(
            f"the model cannot be run on x of shape {tuple(x.shape)}: {text[-300:]} "
            "(x must be a batch (B, ...) of the inputs the model expects, e.g. (B, C, H, W) images)"
        ) from err
    check_output_rows(out, x.shape[0])
    return out


def check_output_rows(out: Tensor, batch: int) -> None:
    """Refuse a model's output that is not one row per sample of a batch of ``batch`` (a model that
    keeps the first row, or merges the batch: every later step would read the wrong rows)."""
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(f"the model must return one output row per sample of x: x holds {batch} samples, the "
                         f"model returned an output of shape {tuple(out.shape)}")


__all__ = [
    "ActiveStep", "LossFn", "Model", "RecordedPass", "active_set_loop", "class_score_grads", "forward", "frozen", "loss_grad",
    "check_output_rows", "mode_is_fixed", "output_vjps", "predict", "predict_checked", "record_forward", "set_eval", "softmax_classes",
]
