"""The shared gradient machinery every attack and explainer calls.

One forward pass, then as many vector-Jacobian products (VJPs) as the caller asks
for, over the whole batch at once. The model is put in eval mode with frozen
parameters while it runs and restored afterwards (see :func:`frozen`). Every forward
pass goes through :func:`forward`, which reduces tuples, dicts and ``ModelOutput``s to
their logits (:func:`salmap.logits.logits_of`).
Iterative attacks run their steps through :func:`active_set_loop`, which drops finished
samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from salmap.logits import logits_of

Model = Callable[[Tensor], Tensor]


def forward(model: Model, x: Tensor) -> Tensor:
    """``model(x)`` reduced to its logits: a tuple's first element, a dict's or ``ModelOutput``'s
    ``logits`` (see :func:`salmap.logits.logits_of`)."""
    return logits_of(model(x))


def mode_is_fixed(module: nn.Module) -> bool:
    """Whether ``module``'s train/eval mode cannot be changed: a ``torch.export`` module
    (``ExportedProgram.module()``), whose mode was fixed when it was exported and whose
    ``train()``/``eval()`` raise."""
    return "train" in vars(module)


def set_eval(model: nn.Module) -> nn.Module:
    """``model.eval()``, except for exported submodules, which keep the mode they were exported in.

    Returns ``model``.
    """
    if mode_is_fixed(model):
        return model
    if not any(mode_is_fixed(m) for m in model.modules()):
        return model.eval()
    model.training = False
    for child in model.children():
        set_eval(child)
    return model


@contextmanager
def frozen(model: Model, eval_mode: bool = True) -> Iterator[Model]:
    """Run a block with ``model`` in eval mode and its parameters not requiring grad.

    The model's ``training`` flag (of every submodule) and every parameter's
    ``requires_grad`` are restored on exit, even when the block raises. Plain
    callables pass through unchanged. Exported (``torch.export``) modules keep their
    fixed mode (see :func:`set_eval`).
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    modes = [(m, m.training) for m in model.modules()]
    # a lazy module's parameters are created by its first forward pass: they are left as they are
    flags = [(p, p.requires_grad) for p in model.parameters() if not _uninitialized(p)]
    try:
        if eval_mode:
            set_eval(model)
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def _uninitialized(p: Tensor) -> bool:
    return isinstance(p, nn.parameter.UninitializedParameter)


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
        return torch.nn.functional.one_hot(classes, out.shape[1]).to(out.dtype)

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
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    recorded: RecordedPass | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample loss gradient: returns ``(logits, d loss / d x)``.

    ``loss_fn(logits, labels)`` must return one loss per sample (``reduction='none'``);
    the default is cross-entropy. Gradients of the summed loss are per-sample
    gradients because samples do not interact in eval mode. ``recorded``, the pass of
    :func:`record_forward` on ``x``, saves the forward pass (its graph is consumed). A model
    with an ``expected_loss(x, labels, loss_fn) -> (logits, loss)`` method (EOT) computes the
    loss itself (``recorded`` is then not used).
    """
    fn = loss_fn or (lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"))
    # A model averaging over random passes (salmap.defenses.adaptive.EOT) supplies the expected loss.
    expected = getattr(model, "expected_loss", None)
    if callable(expected):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits, loss = expected(xg, labels, fn)
    else:
        if recorded is None:
            recorded = record_forward(model, x)
        xg, logits = recorded.input, recorded.output
        with torch.enable_grad():
            loss = fn(logits, labels)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    return logits.detach(), torch.zeros_like(xg) if g is None else g.detach()


@torch.no_grad()
def predict(model: Model, x: Tensor, batch_size: int = 256) -> Tensor:
    """Model outputs for ``x`` in batches of ``batch_size``, without gradients."""
    outs = [forward(model, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs)


#: ``step(rows) -> (stepped, updates)`` of :func:`active_set_loop`.
ActiveStep = Callable[[dict[str, Tensor]], tuple[Tensor | None, dict[str, Tensor]]]


def active_set_loop(state: dict[str, Tensor], step: ActiveStep, max_steps: int | None = None) -> Tensor:
    """Iterate ``step`` over the samples still running, dropping each sample when it finishes.

    The loop every iterative attack shares (auto-attack's "re-attack only what is still
    robust"): each iteration hands ``step`` the rows of the active samples of every tensor of
    ``state``, writes the updated rows of the samples that took a step back into ``state``
    and keeps only those samples. It stops when no sample is left or after ``max_steps``
    iterations. A sample's computation never depends on which other samples are still
    running (batched equals one by one), and finished samples cost nothing. While every
    sample is still running nothing is gathered (``step`` gets the state's own tensors), and
    a step that reports ``stepped=None`` costs the loop no host synchronisation.

    Parameters
    ----------
    state:
        Per-sample tensors sharing their first dimension ``B`` (inputs being changed, labels,
        masks, ...). Updated in place: the returned rows of each step are written back.
    step:
        ``step(rows) -> (stepped, updates)``. ``rows`` maps every name of ``state`` to the rows
        of the active samples ``(A, ...)``, in ascending sample order: the state's own tensors
        while all ``B`` samples are active, copies afterwards, so a step may change in place
        only the rows of the samples it reports as stepped. ``stepped`` is a bool ``(A,)``:
        the samples that took a step (they stay active); the others are finished and keep
        their state from before this call; ``None`` means every active sample took a step.
        ``updates`` maps names of ``state`` to new rows ``(A, ...)``; only the rows of
        stepped samples are written back.
    max_steps:
        Iteration budget; ``None`` runs until every sample has finished.

    Returns
    -------
    Tensor
        Long ``(B,)``: the steps each sample took.

    Examples
    --------
    >>> state = {"x": torch.tensor([0.0, 5.0, 2.0])}
    >>> def step(rows):
    ...     going = rows["x"] < 3
    ...     return going, {"x": rows["x"] + 1}
    >>> active_set_loop(state, step, max_steps=10), state["x"]
    (tensor([3, 0, 1]), tensor([3., 5., 3.]))
    """
    if not state:
        raise ValueError("state must hold at least one per-sample tensor, got an empty dict")
    first = next(iter(state.values()))
    batch = first.shape[0]
    for name, value in state.items():
        if value.shape[0] != batch:
            raise ValueError(
                f"state tensors must share their first dimension {batch}, got {name!r} of shape {tuple(value.shape)}"
            )
    if max_steps is not None and max_steps < 0:
        raise ValueError(f"max_steps must be >= 0 or None, got {max_steps}")
    iterations = torch.zeros(batch, dtype=torch.long, device=first.device)
    active = torch.arange(batch, device=first.device)
    everyone = True  # no sample has finished: the state's own tensors are the rows
    taken = 0
    while active.numel() and (max_steps is None or taken < max_steps):
        rows = dict(state) if everyone else {name: value[active] for name, value in state.items()}
        stepped, updates = step(rows)
        taken += 1
        if stepped is None:
            for name, new in updates.items():
                if everyone and new is not state[name]:
                    state[name].copy_(new)
                elif not everyone:
                    state[name][active] = new
            iterations[active] += 1
            continue
        moved = active[stepped]
        for name, new in updates.items():
            if not (everyone and new is state[name]):  # the state's own rows were changed in place
                state[name][moved] = new[stepped]
        iterations[moved] += 1
        active = moved
        everyone = everyone and moved.numel() == batch
    return iterations
