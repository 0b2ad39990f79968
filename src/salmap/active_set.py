"""The loop every iterative attack shares: step the samples still running, drop the finished."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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
        ``stepped`` may also be a long tensor of the stepped rows' positions in ascending
        order (a step that has them already saves the loop its one host read per step).
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
        # positions of the stepped rows: the loop's one read from the device per step, unless given
        kept = stepped if stepped.dtype == torch.long else stepped.nonzero().flatten()
        moved = active[kept]
        for name, new in updates.items():
            if not (everyone and new is state[name]):  # the state's own rows were changed in place
                state[name][moved] = new[kept]
        iterations[moved] += 1
        active = moved
        everyone = everyone and moved.numel() == batch
    return iterations
