"""The attack base class and its result type (target helpers live in :mod:`salmap.targets`).

An :class:`Attack` holds configuration only. Calling it on a batch validates the
input, runs the subclass's :meth:`Attack._run` with the model frozen (eval mode,
parameters not requiring grad, both restored afterwards), clips to the bounds (unless
``_run`` did in its last step), and measures distortion once, for every attack alike. The
clean prediction is computed once (by the attack's first gradient step where it starts with
one); the clean and adversarial predictions, success and distortions are evaluated once, when
first read (see :class:`AttackResult`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from salmap._validate import (
    READ_LATER,
    BoundsLike,
    InputChecks,
    ReadLater,
    check_bounds,
    check_class_scores,
    check_label_range,
    check_labels,
)
from salmap.attacks.clean_outputs import (
    check_finite_outputs,
    first_forward,
    judge_outputs,
    output_numbers,
)
from salmap.attacks.result import AttackResult, _version
from salmap.frozen import module_tensors, modules_of
from salmap.gradients import Model, check_output_rows, frozen, predict, record_forward
from salmap.precision import autocast
from salmap.targets import all_other_targets, random_targets

__all__ = ["Attack", "AttackResult", "all_other_targets", "random_targets"]


class Attack(ABC):
    """Base class of every attack: configuration at construction, a batch per call.

    Subclasses implement :meth:`_run`; they may override :meth:`_check_labels` and
    :meth:`_is_success` for other kinds of goal (segmentation masks).

    Parameters
    ----------
    model: any ``torch.nn.Module`` or callable mapping a batch to logits ``(B, K)``.
    bounds: ``(low, high)``: the valid range of every input feature: numbers, one value per
        channel (``((0, 0, 0), (1, 1, 1))``) or tensors broadcastable to the input
        (see :func:`salmap._validate.check_bounds`).
    """

    #: whether the attack accepts ``target=`` (targeted) and ``y=`` (untargeted) calls.
    supports_targeted: bool = True
    supports_untargeted: bool = True
    #: arithmetic of the clean pass and of :meth:`_run` (:mod:`salmap.precision`); an attack that
    #: offers a ``precision`` parameter sets it. The adversarial prediction is always float32.
    precision: str = "fp32"
    _outputs_probed: bool = False  # (see _check_after_run)

    def __init__(self, model: Model, bounds: BoundsLike = (0.0, 1.0)) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or callable, got {type(model).__name__}")
        self.model = model
        self.bounds = check_bounds(bounds)

    def __call__(
        self, x: Tensor, y: Any = None, target: Any = None, *, clean: Tensor | None = None
    ) -> AttackResult:
        """Attack a batch: untargeted with the true labels ``y``, or targeted with ``target``.

        Exactly one of ``y`` and ``target`` must be given. ``x`` is not modified. ``clean``:
        the model's outputs on ``x`` when the caller has them already (not computed again).
        """
        if (y is None) == (target is None):
            raise ValueError(
                "exactly one of y (untargeted: true labels) and target (targeted) must be given, "
                f"got y={'None' if y is None else 'given'} and target={'None' if target is None else 'given'}"
            )
        targeted = target is not None
        if targeted and not self.supports_targeted:
            raise ValueError(f"{type(self).__name__} is untargeted only: pass y, not target")
        if not targeted and not self.supports_untargeted:
            raise ValueError(f"{type(self).__name__} is targeted only: pass target, not y")
        raw = target if targeted else y
        # The labels' range is read with the input's, in one transfer: by a sync-free attack with the clean
        # outputs' numbers once its work is queued (the labels clamped into range meanwhile), by the others
        # before the clean pass (they synchronise while running anyway): no transfer of the labels' own.
        check_now = not self._checks_outputs_after_run()
        checks = InputChecks(x, self._labels_read_early(raw), self.bounds)
        known: tuple[int, int] | ReadLater | None
        if check_now:
            known = checks.judge(checks.values.tolist())
        else:
            known = READ_LATER if checks.reads_labels else None
        if check_now:
            return self._attack(x, raw, targeted, known, clean, check_now)[0]
        try:
            result, clean = self._attack(x, raw, targeted, known, clean, check_now)
        except Exception:
            # an error met on the way (the labels' shape, the model's outputs) comes after the
            # input's own, as when the input was read before the work
            checks.judge(checks.values.tolist(), labels=False)
            raise
        # the call's one read of the device, last: the host's work above overlaps the device's
        self._check_after_run(checks, clean, known, "target" if targeted else "y")
        return result

    def _attack(
        self, x: Tensor, raw: Any, targeted: bool, known: tuple[int, int] | ReadLater | None, clean: Tensor | None,
        check_now: bool,
    ) -> tuple[AttackResult, Tensor]:
        """The call's work on the checked input: its result and the clean outputs it used."""
        start = time.perf_counter()
        # The model's modules, walked once for frozen() and for the parameters' version counters.
        modules = modules_of(self.model) if isinstance(self.model, nn.Module) else None
        with frozen(self.model, modules=modules), torch.inference_mode(False):  # (gradients under a caller's)
            x0 = x.detach().clone()
            # The clean prediction is computed once: given by the caller, else by the first gradient step's
            # forward pass when the attack starts with a gradient at the clean input, else by one forward pass.
            with autocast(self.precision, x0.device):
                # (an EOT model computes its own expected loss: its gradient does not start from this pass)
                reuse = self._gradient_at_clean_input() and not callable(getattr(self.model, "expected_loss", None))
                try:
                    first = record_forward(self.model, x0) if reuse else None
                except (RuntimeError, ValueError, TypeError, IndexError):
                    first_forward(self.model, x0)  # names what went wrong (the input's shape)
                    raise
                own_clean = clean is None
                if clean is None:
                    clean = first.output.detach() if first is not None else first_forward(self.model, x0, check_now)
                    check_output_rows(clean, x0.shape[0])
                    if first is not None and check_now:
                        check_finite_outputs(clean, "clean")
                elif clean.shape[0] != x0.shape[0]:
                    raise ValueError(f"clean must hold one output per sample ({x0.shape[0]}), got shape {tuple(clean.shape)}")
                else:
                    clean = clean.detach().to(x0.device)
                    if check_now:
                        check_finite_outputs(clean, "clean")
                labels = self._check_labels(x0, raw, targeted, clean, known)
                if first is None:
                    x_adv, iterations = self._run(x0, labels, targeted, clean)
                else:
                    # An attack that asks for the clean pass takes it (_gradient_at_clean_input).
                    x_adv, iterations = self._run(x0, labels, targeted, clean, first=first)  # type: ignore[call-arg]
                del first
            x_adv = x_adv.detach() if self._run_clamps() else self.bounds.clamp(x_adv.detach())
        steps: Tensor | Callable[[], Tensor]
        if isinstance(iterations, int):  # every sample took as many: the tensor is made when read
            steps = _filled(x.shape[0], iterations, x.device)
        else:
            steps = iterations.to(device=x.device, dtype=torch.long)
        result = AttackResult(
            x_adv=x_adv,
            success=None,
            l0=None,  # with l2 and linf: computed when first read, from x0 and x_adv
            l2=None,
            linf=None,
            iterations=steps,
            pred_before=self._pred_before(clean, own_clean),
            pred_after=None,
            labels=labels,
            targeted=targeted,
            seconds=time.perf_counter() - start,
            measure=self._measure(x0, x_adv, labels, targeted, clean, _state_version(self.model, modules)),
            clean_input=x0,
        )
        return result, clean

    def _check_after_run(self, checks: InputChecks, clean: Tensor, known: object, name: str) -> None:
        """A sync-free call's checks, in one transfer: the input's range, the labels' range
        (``known`` is :data:`READ_LATER`) and the clean outputs' finiteness."""
        probe = not self._outputs_probed  # whether the outputs are probabilities: looked at on the first call only
        read = torch.cat((checks.values, *(n.to(checks.values.device) for n in output_numbers(clean, probe))))
        numbers: list[float] = read.tolist()
        label_range = checks.judge(numbers[: len(checks.values)], labels=known is READ_LATER)
        if known is READ_LATER and label_range is not None:
            check_label_range(label_range, clean.shape[1], name)
        judge_outputs(clean, numbers[len(checks.values):])
        self._outputs_probed = True

    def _measure(
        self, x: Tensor, x_adv: Tensor, labels: Tensor, targeted: bool, clean: Tensor,
        version: tuple[int, ...] | None,
    ) -> Callable[[], tuple[Tensor, Tensor, dict[str, Tensor]]]:
        """The adversarial prediction, success and extra figures, evaluated when first read
        (``version``: the model's :func:`_state_version` after the call)."""
        model, adv_version = self.model, _version(x_adv)

        def measure() -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            if _state_version(model) != version:
                raise RuntimeError(
                    f"the model's parameters or buffers changed after {type(self).__name__} ran, so its "
                    "adversarial prediction (success, pred_after, extra) can no longer be measured: "
                    "read them before changing the model"
                )
            if _version(x_adv) != adv_version:
                raise RuntimeError(
                    f"x_adv was changed in place after {type(self).__name__} ran, so its adversarial "
                    "prediction (success, pred_after, extra) can no longer be measured: read them first, "
                    "or change a copy"
                )
            with frozen(model):
                after = predict(model, x_adv, x_adv.shape[0])
                check_finite_outputs(after, "adversarial")
                return (self._predictions(after), self._is_success(after, labels, targeted),
                        self._extra(x, x_adv, labels, clean, after))

        return measure

    def _pred_before(self, clean: Tensor, own: bool) -> Tensor | Callable[[], Tensor]:
        """The clean prediction: computed when first read from outputs the call computed itself
        (``own``; no kernel during the call), at once from outputs the caller handed over (the
        caller may change those afterwards)."""
        if not own:
            return self._predictions(clean)
        return lambda: self._predictions(clean)

    # -- hooks for subclasses -------------------------------------------------
    @abstractmethod
    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor | int]:
        """Craft adversarial inputs. Returns ``(x_adv, iterations per sample)``; an int for the
        iterations when every sample took that many (the tensor is then made only when read).

        ``x`` is a private copy; ``clean`` are the model's outputs on it. An attack whose
        :meth:`_gradient_at_clean_input` is true is also given ``first=``, the clean forward
        pass with its graph (:class:`salmap.gradients.RecordedPass`), for its first gradient.
        """

    def _gradient_at_clean_input(self) -> bool:
        """Whether the first step of :meth:`_run` is a gradient at the clean input ``x``."""
        return False

    def _checks_outputs_after_run(self) -> bool:
        """Whether :meth:`_run` never synchronises with the device, so the input's range, the
        labels' range and the clean outputs' finiteness are read in one transfer after it (bad
        input and NaN outputs still raise, once the work is queued; the labels are clamped into
        range until then) rather than before the clean pass and between it and the first gradient."""
        return False

    def _run_clamps(self) -> bool:
        """Whether :meth:`_run` returns ``x_adv`` clamped to the bounds already (its last operation),
        so that the base class need not clamp it again."""
        return False

    def _labels_read_early(self, labels: Any) -> Any:
        """The raw labels whose ``(min, max)`` is read with the input's (:class:`InputChecks`:
        before the clean pass, or after the run for a sync-free attack; ``None``: they are
        checked by :meth:`_check_labels` on their own)."""
        return labels

    def _check_labels(
        self, x: Tensor, labels: Any, targeted: bool, clean: Tensor,
        known_range: tuple[int, int] | ReadLater | None = None,
    ) -> Tensor:
        """Validate and return the labels (class indices ``(B,)`` for classifiers); ``known_range``
        is the range :meth:`_labels_read_early` asked for (:data:`READ_LATER`: read after the run,
        the labels clamped into range until then)."""
        check_class_scores(clean, type(self).__name__)
        return check_labels(labels, x.shape[0], clean.shape[1], "target" if targeted else "y", x.device, known_range)

    def _predictions(self, out: Tensor) -> Tensor:
        """The predicted labels stored in the result (arg-max class; masks for segmenters)."""
        return out.argmax(dim=1)

    def _is_success(self, out: Tensor, labels: Tensor, targeted: bool) -> Tensor:
        pred = out.argmax(dim=1)
        return pred == labels if targeted else pred != labels

    def _extra(self, x: Tensor, x_adv: Tensor, labels: Tensor, clean: Tensor, after: Tensor) -> dict[str, Tensor]:
        return {}

    def __repr__(self) -> str:
        skip = {"model"}
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k not in skip and not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _filled(batch: int, count: int, device: torch.device) -> Callable[[], Tensor]:
    return lambda: torch.full((batch,), count, dtype=torch.long, device=device)


def _state_version(model: Model, modules: list[nn.Module] | None = None) -> tuple[int, ...] | None:
    """In-place modification counters of the model's parameters and buffers (None for a callable)."""
    if not isinstance(model, nn.Module):
        return None
    tensors = module_tensors(modules or modules_of(model), buffers=True)
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:  # an inference tensor has no version counter (and cannot be changed in place)
        return tuple(t._version for t in tensors if not t.is_inference())
