"""The result of an attack: adversarial inputs, success, distortions, iterations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from salmap.attacks.result_index import Index, selector
from salmap.metrics import distortion

#: Evaluates the adversarial prediction: ``() -> (pred_after, success, extra)``.
Measure = Callable[[], tuple[Tensor, Tensor, dict[str, Tensor]]]


class AttackResult:
    """What an attack returns: one entry per sample for every tensor field.

    Attributes
    ----------
    x_adv: the adversarial inputs, same shape and device as the input.
    success: bool ``(B,)``: the goal was reached (target predicted, or label changed).
    l0: number of input features changed, float ``(B,)``.
    l2, linf: L2 and Linf norms of the perturbation ``(B,)``. An attack hands the three over
        unevaluated too (``clean_input`` instead): they are computed together, once, when
        one of them is first read, from the clean inputs and the ``x_adv`` of the call.
    iterations: long ``(B,)``: iterations the sample took before it stopped.
    pred_before, pred_after: the model's predictions on the clean and adversarial inputs.
        ``iterations`` and ``pred_before`` may be handed over as functions that compute them
        (no kernel is launched for them during the call): each runs once, when first read.
    labels: the labels the attack was called with (true labels or targets).
    targeted: whether ``labels`` are targets.
    seconds: wall time of the attack itself (the call, without the adversarial prediction).
    extra: attack-specific per-sample tensors (e.g. segmentation pixel accuracy).

    A result is a batch: ``len(r)`` samples, and ``r[i]``, ``r[a:b]``, ``r[mask]`` (bool ``(B,)``)
    or ``r[indices]`` (long tensor or sequence) the result of the samples selected, every
    per-sample field selected and the per-run ones (``targeted``, ``seconds``) kept; ``r[i]`` is
    a one-sample result (the batch dimension kept, as ``r[i:i + 1]``), and iterating gives
    them in turn.

    The adversarial prediction (``success``, ``pred_after`` and ``extra``) costs a forward
    pass that the algorithm itself does not need (one FGSM step is one forward and one
    backward pass), so an attack hands it over unevaluated: it runs once, on the first
    access of any of the three, with the model frozen as during the attack. Reading them
    after the model's parameters or buffers were changed in place (an optimiser step) is
    an error rather than a silently different answer: read them before training on
    ``x_adv`` when they matter.
    """

    def __init__(
        self,
        x_adv: Tensor,
        success: Tensor | None,
        l0: Tensor | None,
        l2: Tensor | None,
        linf: Tensor | None,
        iterations: Tensor | Callable[[], Tensor],
        pred_before: Tensor | Callable[[], Tensor],
        pred_after: Tensor | None,
        labels: Tensor,
        targeted: bool,
        seconds: float = 0.0,
        extra: dict[str, Tensor] | None = None,
        measure: Measure | None = None,
        clean_input: Tensor | None = None,
    ) -> None:
        if measure is None and (success is None or pred_after is None):
            raise ValueError("success and pred_after must be given unless measure is given")
        if clean_input is None and (l0 is None or l2 is None or linf is None):
            raise ValueError("l0, l2 and linf must be given unless clean_input is given")
        self.x_adv = x_adv
        self._norms = None if l0 is None or l2 is None or linf is None else (l0, l2, linf)
        self._clean_and_adv = None if clean_input is None or self._norms is not None else (clean_input, x_adv)
        self._adv_version = _version(x_adv)
        self._iterations, self._pred_before, self.labels = iterations, pred_before, labels
        self.targeted, self.seconds = targeted, seconds
        self._success, self._pred_after, self._extra = success, pred_after, extra or {}
        self._measure = measure

    def _settle(self) -> None:
        if self._measure is not None:
            measure, self._measure = self._measure, None
            self._pred_after, self._success, self._extra = measure()

    def _distortion(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._norms is None:
            assert self._clean_and_adv is not None
            if _version(self._clean_and_adv[1]) != self._adv_version:
                raise RuntimeError(
                    "x_adv was changed in place before l0, l2 or linf were read, so the distortion of the "
                    "attack's result can no longer be measured: read them first, or change a copy"
                )
            self._norms = distortion(*self._clean_and_adv)
            self._clean_and_adv = None
        return self._norms

    @property
    def iterations(self) -> Tensor:
        if not isinstance(self._iterations, Tensor):
            self._iterations = self._iterations()
        return self._iterations

    @property
    def pred_before(self) -> Tensor:
        if not isinstance(self._pred_before, Tensor):
            self._pred_before = self._pred_before()
        return self._pred_before

    @property
    def l0(self) -> Tensor:
        return self._distortion()[0]

    @property
    def l2(self) -> Tensor:
        return self._distortion()[1]

    @property
    def linf(self) -> Tensor:
        return self._distortion()[2]

    def measure(self) -> AttackResult:
        """Evaluate the deferred adversarial prediction, distortions, clean prediction and
        iterations now (and release the inputs they keep); returns self."""
        self._settle()
        self._distortion()
        self.pred_before, self.iterations  # noqa: B018 (evaluated for their side effect)
        return self

    @property
    def success(self) -> Tensor:
        self._settle()
        assert self._success is not None
        return self._success

    @property
    def pred_after(self) -> Tensor:
        self._settle()
        assert self._pred_after is not None
        return self._pred_after

    @property
    def extra(self) -> dict[str, Tensor]:
        self._settle()
        return self._extra

    def __getstate__(self) -> dict[str, Any]:
        """Pickling (``torch.save``, ``copy.deepcopy``, multiprocessing) evaluates the deferred
        fields first: the functions that compute them hold the model and cannot be pickled."""
        self.measure()
        return self.__dict__.copy()

    def __len__(self) -> int:
        return int(self.labels.shape[0])  # not x_adv's: a caller may keep only some adversarial inputs

    def __getitem__(self, index: Index) -> AttackResult:
        """The samples ``index`` selects (see the class docstring), as an :class:`AttackResult`.

        A deferred adversarial prediction stays deferred: it runs once, for the whole batch,
        when first read from this result or from any selection of it. The distortions,
        iterations and clean prediction are made for the whole batch first (no read of the
        device; an index tensor's range is read once).
        """
        sel = selector(index, len(self))
        if self.x_adv.shape[0] != len(self):
            raise IndexError(f"x_adv holds {self.x_adv.shape[0]} inputs for the {len(self)} samples of this "
                             "result, so its samples cannot be selected (expected one adversarial input per sample)")

        def pick(t: Tensor) -> Tensor:
            return t[sel.to(t.device) if isinstance(sel, Tensor) else sel]

        def measure() -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            return pick(self.pred_after), pick(self.success), {k: pick(v) for k, v in self.extra.items()}

        deferred = self._measure is not None
        return AttackResult(
            x_adv=pick(self.x_adv), l0=pick(self.l0), l2=pick(self.l2), linf=pick(self.linf),
            success=None if deferred else pick(self.success), pred_after=None if deferred else pick(self.pred_after),
            extra=None if deferred else measure()[2], measure=measure if deferred else None,
            iterations=pick(self.iterations), pred_before=pick(self.pred_before), labels=pick(self.labels),
            targeted=self.targeted, seconds=self.seconds,
        )

    def __iter__(self) -> Iterator[AttackResult]:
        """One one-sample result per sample, in order."""
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        state = "measured" if self._measure is None else "adversarial prediction not evaluated yet"
        return f"AttackResult({len(self)} samples, targeted={self.targeted}, {state})"

    @property
    def num_features(self) -> int:
        """Number of input features per sample."""
        return int(self.x_adv[0].numel())

    @property
    def l0_fraction(self) -> Tensor:
        """L0 as a fraction of the number of input features."""
        return self.l0 / max(self.num_features, 1)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def to(self, device: torch.device | str) -> AttackResult:
        """The same result with every tensor moved to ``device``."""
        if not isinstance(device, (str, torch.device)):  # (a dtype would turn labels and success into floats)
            raise ValueError(f"device must be a torch.device or a name such as 'cpu', got {device!r} (convert x_adv itself)")
        moved: dict[str, Any] = {}
        for name, value in self._fields().items():
            if isinstance(value, Tensor):
                value = value.to(device)
            elif name == "extra":
                value = {k: v.to(device) for k, v in value.items()}
            moved[name] = value
        return AttackResult(**moved)

    def summary(self) -> dict[str, float]:
        """Mean figures over the batch (distortions averaged over all samples)."""
        return {
            "samples": float(len(self)),
            "success_rate": self.success_rate,
            "l0": float(self.l0.mean()),
            "l0_fraction": float(self.l0_fraction.mean()),
            "l2": float(self.l2.mean()),
            "linf": float(self.linf.mean()),
            "iterations": float(self.iterations.float().mean()),
            "seconds": self.seconds,
        }

    @staticmethod
    def concat(results: list[AttackResult]) -> AttackResult:
        """Join the results of several batches into one."""
        if not results:
            raise ValueError("results must hold at least one AttackResult, got an empty list")
        kinds = {r.targeted for r in results}
        if len(kinds) > 1:
            raise ValueError("results must be all targeted or all untargeted (their labels are targets or "
                             f"true labels), got targeted={[r.targeted for r in results]}")
        joined: dict[str, Any] = {}
        parts = [r._fields() for r in results]
        for name in _FIELDS:
            values = [p[name] for p in parts]
            if name == "extra":
                joined[name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
            elif name == "seconds":
                joined[name] = float(sum(values))
            elif name == "targeted":
                joined[name] = values[0]
            else:
                joined[name] = torch.cat(values)
        return AttackResult(**joined)


def _version(t: Tensor) -> int | None:
    """``t``'s in-place modification counter (None for an inference tensor, which has none)."""
    return None if t.is_inference() else t._version


_FIELDS = ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after", "labels",
           "targeted", "seconds", "extra")
