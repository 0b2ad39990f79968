"""PGD (Madry et al. 2017): FGSM steps projected onto the Linf ball, with random restarts."""

from __future__ import annotations

import torch
from torch import Tensor

from salmap._repr import short as _short
from salmap._validate import BoundsLike, check_flag, check_number, check_seed
from salmap.active_set import active_set_loop
from salmap.attacks.base import Attack
from salmap.gradients import LossFn, Model, RecordedPass, forward, loss_grad
from salmap.precision import PRECISIONS, check_precision
from salmap.randomness import sample_uniform
from salmap.registry import register_attack


@register_attack(
    "pgd", ranges={"eps": "[0, inf)", "step": "(0, inf)", "steps": "[1, inf)", "restarts": "[1, inf)"},
    choices={"precision": PRECISIONS},
    budget={"linf": "eps"},
)
class PGD(Attack):
    """Projected gradient descent in the Linf ball (iterative FGSM with projection).

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", 2017.
    Each step moves by ``step`` along the sign of the loss gradient, then projects onto
    the ``eps``-ball around the clean input and onto the bounds. ``random_start`` begins
    at a uniform point in the ball. Samples that reach the goal stop early when
    ``early_stop`` is set (then fewer gradient evaluations are spent).

    Randomness: the start of a sample is a function of ``seed``, the restart's number and
    the sample's own values (:func:`salmap.randomness.sample_uniform`), so a sample starts
    from the same point whichever batch it is in and at whatever position (a batch gives
    exactly the results of its samples attacked one by one), while different samples start
    from independent points and every restart from a new one.

    Restarts (Madry et al.'s evaluation, AutoAttack's "worst case per sample"): the attack
    runs ``restarts`` times from different random starts and keeps, per sample, the worst
    case for the model: a successful example before an unsuccessful one, then the one with
    the higher objective (the loss untargeted, minus the loss towards the target targeted).
    With ``early_stop``, a sample that has succeeded is not restarted again. ``iterations``
    counts the steps of all restarts.

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``.
    eps: Linf radius, ``>= 0``: a number, or (Python API only) a tensor ``(B,)`` with one
        radius per sample of the batch the attack is called on.
    step: step size per iteration, ``> 0``. Default ``eps / 4`` (per sample for a tensor ``eps``).
    steps: number of iterations per restart, ``>= 1``.
    random_start: start from a random point of the ball.
    seed: seed of the random starts (combined with each sample's values).
    loss_fn: per-sample loss; cross-entropy by default.
    early_stop: stop samples as soon as they succeed (and do not restart them).
    restarts: random starts per sample, ``>= 1``; the per-sample worst case is kept.
    bounds: valid input range.
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` forward and backward passes (see :class:`FGSM`).

    Examples
    --------
    >>> result = PGD(model, eps=0.3, step=0.01, steps=40, restarts=10)(x, y=y)   # doctest: +SKIP
    >>> PGD(model, eps=torch.tensor([0.1, 0.2, 0.3]))(x[:3], y=y[:3])          # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        eps: float | Tensor = 0.3,
        step: float | None = None,
        steps: int = 40,
        random_start: bool = True,
        seed: int = 0,
        loss_fn: LossFn | None = None,
        early_stop: bool = False,
        restarts: int = 1,
        bounds: BoundsLike = (0.0, 1.0),
        precision: str = "fp32",
    ) -> None:
        super().__init__(model, bounds)
        self.precision = check_precision(precision)
        self.eps = _check_eps(eps)
        largest = float(self.eps.max()) if isinstance(self.eps, Tensor) else self.eps
        if step is None:
            # A per-sample eps gets a per-sample default step at call time.
            self.step: float | None = None if isinstance(self.eps, Tensor) else self.eps / 4
        else:
            self.step = float(check_number("step", step, low=0.0, low_open=largest > 0))
        self.steps = check_number("steps", steps, low=1, integer=True)
        self.random_start = check_flag("random_start", random_start)
        self.seed = check_seed(seed)
        self.loss_fn = loss_fn
        self.early_stop = check_flag("early_stop", early_stop)
        self.restarts = check_number("restarts", restarts, low=1, integer=True)
        if self.restarts > 1 and not self.random_start:
            raise ValueError(f"restarts must be 1 without a random start (every restart would be the same), "
                             f"got restarts={restarts} with random_start=False")

    def _radius(self, x: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """``(eps, step)`` as floats, or as ``(B, 1, ..., 1)`` tensors for a per-sample ``eps``."""
        if not isinstance(self.eps, Tensor):
            return self.eps, self.eps / 4 if self.step is None else self.step
        # One radius per sample: the batch must be the one the radii were given for.
        if self.eps.numel() != x.shape[0]:
            raise ValueError(f"eps must hold one radius per sample, {x.shape[0]} for this batch, "
                             f"got a tensor of shape {tuple(self.eps.shape)}")
        eps = self.eps.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return eps, eps / 4 if self.step is None else self.step

    def _gradient_at_clean_input(self) -> bool:
        # then the first step's forward pass is the clean prediction (early_stop: the shared active-set loop)
        return not self.random_start and not self.early_stop

    def _checks_outputs_after_run(self) -> bool:
        return not self.early_stop  # without early stopping the steps never synchronise

    def _run_clamps(self) -> bool:
        # every sample takes every step of one attempt, the last clipping to the bounds
        return not self.early_stop and self.restarts == 1 and self.steps >= 1

    def _run(
        self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor, first: RecordedPass | None = None
    ) -> tuple[Tensor, Tensor | int]:
        eps, step = self._radius(x)
        if self.restarts == 1:
            return self._attempt(x, labels, targeted, eps, step, 0, first)
        fn = self.loss_fn or _cross_entropy
        sign = -1.0 if targeted else 1.0
        best = x.clone()
        best_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_score = torch.full((x.shape[0],), float("-inf"), device=x.device)
        iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        todo = torch.arange(x.shape[0], device=x.device)
        for restart in range(self.restarts):
            if self.early_stop:
                todo = todo[~best_success[todo]]
                if todo.numel() == 0:
                    break
            x_r, it_r = self._attempt(x[todo], labels[todo], targeted, _rows(eps, todo), _rows(step, todo), restart)
            with torch.no_grad():
                logits = forward(self.model, x_r)
                score = sign * fn(logits, labels[todo]).to(best_score.dtype)
            success = self._is_success(logits, labels[todo], targeted)
            old_success, old_score = best_success[todo], best_score[todo]
            better = (success & ~old_success) | ((success == old_success) & (score > old_score))
            best[todo] = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_r, best[todo])
            best_success[todo] = torch.where(better, success, old_success)
            best_score[todo] = torch.where(better, score, old_score)
            iterations[todo] += it_r
        return best, iterations

    def _attempt(
        self, x: Tensor, labels: Tensor, targeted: bool, eps: float | Tensor, step: float | Tensor, restart: int,
        first: RecordedPass | None = None,
    ) -> tuple[Tensor, Tensor | int]:
        """One run of PGD from the random start of restart number ``restart`` (``first``: the
        forward pass at ``x``, for the first step when there is no random start)."""
        low, high = self.bounds.like(x)
        direction = -1.0 if targeted else 1.0
        x_adv = x.clone()
        if self.random_start:
            noise = sample_uniform(x, self.seed, restart)
            x_adv = torch.clamp(x + (2 * noise - 1) * eps, low, high)  # type: ignore[arg-type]
        if not self.early_stop:
            return self._steps(x, x_adv, labels, direction * step, eps, first)
        state = {"x_adv": x_adv, "x": x, "labels": labels}
        if isinstance(eps, Tensor):
            state["eps"] = eps
        if isinstance(step, Tensor):
            state["step"] = step

        def one_step(rows: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, Tensor]]:
            logits, grad = loss_grad(self.model, rows["x_adv"], rows["labels"], self.loss_fn, batch_mean=self.precision != "fp16")
            going = None  # without early stopping every sample steps (and the loop does not sync)
            if self.early_stop:
                pred = logits.argmax(dim=1)
                going = pred != rows["labels"] if targeted else pred == rows["labels"]
            eps_a, step_a = rows.get("eps", eps), rows.get("step", step)
            moved = rows["x_adv"] + direction * step_a * grad.sign()
            x0 = rows["x"]
            moved = torch.clamp(torch.max(torch.min(moved, x0 + eps_a), x0 - eps_a), low, high)  # type: ignore[arg-type]
            return going, {"x_adv": moved}

        iterations = active_set_loop(state, one_step, self.steps)
        return x_adv, iterations

    def _steps(
        self, x: Tensor, x_adv: Tensor, labels: Tensor, step: float | Tensor, eps: float | Tensor,
        first: RecordedPass | None,
    ) -> tuple[Tensor, int]:
        """Every sample takes every step: the whole batch at once, in place, with no host sync.

        ``step`` carries the direction's sign. Clipping to the ball and then to the bounds is
        clipping to their intersection, computed once.
        """
        lower, upper = self.bounds.clamp(x - eps), self.bounds.clamp(x + eps)
        for i in range(self.steps):
            _, grad = loss_grad(self.model, x_adv, labels, self.loss_fn, recorded=first if i == 0 else None,
                               batch_mean=self.precision != "fp16")
            direction = grad.sign_()
            if isinstance(step, Tensor):
                x_adv.addcmul_(direction, step)
            else:
                x_adv.add_(direction, alpha=step)
            torch.clamp(x_adv, lower, upper, out=x_adv)
        return x_adv, self.steps  # every sample took every step


def _rows(value: float | Tensor, rows: Tensor) -> float | Tensor:
    return value[rows] if isinstance(value, Tensor) else value


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def _check_eps(eps: float | Tensor) -> float | Tensor:
    """A non-negative float, or a non-negative finite 1-D float tensor of per-sample radii."""
    if not isinstance(eps, Tensor):
        return float(check_number("eps", eps, low=0.0))
    if eps.dim() != 1 or eps.numel() == 0 or not eps.is_floating_point():
        raise ValueError(f"eps must be a number or a 1-D float tensor of per-sample radii, "
                         f"got a {eps.dtype} tensor of shape {tuple(eps.shape)}")
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError(f"eps must be finite and >= 0 for every sample, got {_short(eps)}")
    return eps.detach().clone()
