"""ISI: the input-significance-indicator attack (sensitivity or LRP relevance; L0, L2, Linf)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salmap._validate import BoundsLike, check_choice, check_number, clip_features
from salmap.attacks.base import Attack
from salmap.gradients import Model, active_set_loop, output_vjps
from salmap.lrp import (
    COMPOSITES,
    Composite,
    LRPPlan,
    check_supported,
    lrp_input_bounds,
    lrp_plan,
    lrp_relevance,
    make_composite,
)
from salmap.registry import register_attack

INDICATORS = ("relevance", "sensitivity")
NORMS = ("l0", "l2", "linf")
OBJECTIVES = ("logit", "margin")
L2_RULES = ("authors", "gradient")


@register_attack(
    "isi", needs_module={"indicator": "relevance"}, model_check=check_supported, input_check=lrp_plan,
    choices={"indicator": ("relevance", "sensitivity"), "norm": ("l0", "l2", "linf"), "objective": ("logit", "margin"),
             "l2_rule": ("authors", "gradient")},
    ranges={"eps": "(0, inf)", "max_iter": "[1, inf)", "n_features": "[1, inf)"},
)
class ISI(Attack):
    """Input Significance Indicator attack: change the most significant features until the label flips.

    Qiu et al., "Generating Adversarial Examples with Input Significance Indicator",
    Neurocomputing 2020. Each iteration backpropagates the model's score to every input
    feature once for the whole batch and changes features by their significance:

    - ``norm="l0"``: the ``n_features`` (default 1, as in the paper) most significant
      features not changed before are set to the bound in the direction that helps the
      attack, then masked out;
    - ``norm="l2"``: the ``n_features`` (default 10) most significant features are each moved
      by ``eps`` (they may be chosen again later): by default (``l2_rule="authors"``) towards
      the middle of the bounds, see below; with ``l2_rule="gradient"`` in the direction above;
    - ``norm="linf"``: every feature is moved by ``eps`` in its direction.

    Everything is clipped to ``bounds``. A sample stops as soon as it succeeds, after
    ``max_iter`` iterations, or when no feature can move any more; finished samples
    leave the batch.

    Indicators (of the score ``F`` the attack lowers):

    - ``"sensitivity"``: ``g = dF/dx``; significance ``|g|``; direction ``-sign(g)``.
    - ``"relevance"``: LRP relevance ``R`` of ``F`` (:func:`salmap.lrp.lrp_relevance`)
      and the LRP-modified gradient ``g~`` at ``x`` (``R = x * g~`` for the gradient-form
      rules). Direction ``-sign(g~)``, the way that removes the feature's contribution;
      significance ``R - b * g~ = (x - b) g~`` with ``b`` the bound in that direction: the
      relevance the feature gives up when moved there. With bounds ``(0, 1)`` this equals
      ``R`` where ``g~ > 0`` (``b = 0``) and is ``(1 - x) |g~| >= 0`` where ``g~ < 0``, where
      ``R = x g~ <= 0``: ranking by ``R`` itself (the authors' rule) never picks those
      features (dark pixels whose increase lowers ``F``); this ranking does. On the MNIST
      lenet of ``salmap demo`` (first 100 test images, untargeted, relevance, L0, 30
      features at most) ranking by ``R`` instead, with the same moves, gave the same
      adversarial image for 31 of 100 images, 93% success with 14.6 features changed on
      average against 99% with 10.6 (``benchmarks/isi_rules.py`` prints these figures).

    The L2 rule (``l2_rule``). The authors' code moves the top-``n`` features by relevance
    by ``eps`` towards zero (``x -= eps * sign(x)``) on data in ``[-1, 1]``. Translated to
    salmap's bounds ``[low, high]`` with middle ``m = (low + high) / 2``: the relevance of
    the centred input, ``(x - m) g~`` (``R - m g~``; ``(x - m) g`` for ``"sensitivity"``),
    ranks the features and each picked feature moves by ``eps`` (in salmap's units) towards
    ``m`` (a feature at ``m`` does not move). ``"gradient"`` ranks by the significance above
    and moves along ``-sign(g~)``. On the same 100 images (relevance, ``n_features=10``,
    ``eps=0.1``, 30 iterations): the authors' rule 92% success, mean L2 1.92, Linf 0.41,
    14.3 iterations; the gradient-signed rule 99%, L2 2.07, Linf 0.64, 11.2 iterations
    (``benchmarks/isi_rules.py``). Moving the features by ``eps / 2``, the authors' step
    measured in their ``[-1, 1]`` units, gave 58%, L2 1.62, Linf 0.38.

    Interpretations (the paper gives the scheme, not every detail):

    - The score ``F`` (``objective``). ``"logit"``: untargeted, ``F = Z_y``, the true
      class's logit, as in the paper, which backpropagates the true class's confidence;
      targeted, ``F = -Z_t``. ``"margin"``: untargeted ``F = Z_y - Z_r``, targeted
      ``F = Z_r - Z_t``, with ``r`` the top class other than the label, re-chosen at every
      iteration, so that one backward pass pushes the label down (up) and its strongest rival
      up (down). The default (``None``) is ``"logit"`` untargeted and ``"margin"`` targeted:
      on the Papernot lenet of benchmarks/isi.py (970 correctly classified MNIST test
      images, 30 features at most, relevance) the margin changed fewer features (9.4 on
      average against 10.8) but succeeded less often untargeted (97.8% against 98.8%; on 197
      images of digits 0 and 1, 90.4% against 97.0%): its rival keeps changing, and the features spent
      on one rival are wasted when another takes over, while lowering ``Z_y`` alone helps
      against every rival at once. Targeted, the rival term is what makes the target win.
    - Only features that can still move in their direction (not at that bound) are
      candidates, so every L0 iteration changes exactly one new feature.
    - Every iteration is one forward and one backward pass over the samples still running;
      the success test reads the logits of that same forward pass, so a sample that has
      succeeded leaves before it is changed again.
    - The default LRP composite is ``"epsilon"`` (LRP-epsilon, eps=1e-6, on every layer;
      the original code used iNNvestigate's LRP analysers): it costs one forward and one
      backward pass (see :mod:`salmap.lrp`), and on the Papernot lenet it gave far
      higher success than ``"epsilon-plus"``, whose z+ redistribution says little about
      which way a pixel should move, and than a larger epsilon (0.01, 0.1, 0.5 lost 0.3,
      6.6 and 17 points of success on those 197 images).

    Parameters
    ----------
    model: classifier returning logits ``(B, K)``; a ``torch.nn.Module`` for ``"relevance"``.
    indicator: ``"relevance"`` or ``"sensitivity"``.
    norm: ``"l0"``, ``"l2"`` or ``"linf"``.
    eps: step per iteration for L2 and Linf, ``> 0``. Default 0.1.
    max_iter: iterations per sample, ``>= 1``. Default 30 (with L0: at most 30 features).
    n_features: features changed per iteration for L0 and L2, ``>= 1``; default 1 (L0) or
        10 (L2). Not used by Linf.
    bounds: valid input range ``(low, high)``.
    lrp_composite: the LRP rules for ``"relevance"``: a name from
        :data:`salmap.lrp.COMPOSITES` or a :class:`~salmap.lrp.Composite`.
    objective: the score ``F`` that is lowered: ``"logit"``, ``"margin"`` or ``None`` (``"logit"``
        untargeted, ``"margin"`` targeted; see above).
    l2_rule: how ``norm="l2"`` ranks and moves features: ``"authors"`` (towards the middle of the
        bounds, ranked by centred relevance) or ``"gradient"`` (along the gradient's sign).

    Examples
    --------
    >>> result = ISI(model, indicator="relevance", norm="l0", max_iter=30)(x, y=y)   # doctest: +SKIP
    >>> result.success.float().mean(), result.l0.mean()                              # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        indicator: str = "relevance",
        norm: str = "l0",
        eps: float = 0.1,
        max_iter: int = 30,
        n_features: int | None = None,
        bounds: BoundsLike = (0.0, 1.0),
        lrp_composite: str | Composite = "epsilon",
        objective: str | None = None,
        l2_rule: str = "authors",
    ) -> None:
        super().__init__(model, bounds)
        self.indicator = check_choice("indicator", indicator, INDICATORS)
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = float(check_number("eps", eps, low=0.0, low_open=True))
        self.max_iter = check_number("max_iter", max_iter, low=1, integer=True)
        if n_features is None:
            n_features = 10 if norm == "l2" else 1
        self.n_features = check_number("n_features", n_features, low=1, integer=True)
        self._lrp_bounds = lrp_input_bounds(model, self.bounds)
        if isinstance(lrp_composite, str):
            check_choice("lrp_composite", lrp_composite, COMPOSITES)
            self._composite = make_composite(lrp_composite, self._lrp_bounds)
        elif isinstance(lrp_composite, Composite):
            self._composite = lrp_composite
        else:
            raise ValueError(
                f"lrp_composite must be one of {list(COMPOSITES)} or a Composite, got {type(lrp_composite).__name__}"
            )
        self.lrp_composite = lrp_composite
        if objective is not None:
            check_choice("objective", objective, OBJECTIVES)
        self.objective = objective
        self.l2_rule = check_choice("l2_rule", l2_rule, L2_RULES)
        if indicator == "relevance" and not isinstance(model, nn.Module):
            raise ValueError(f"indicator='relevance' needs a torch.nn.Module model, got {type(model).__name__}")

    def significance(
        self, x: Tensor, labels: Tensor, targeted: bool, plan: LRPPlan | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, significance and direction (``-1``, ``0`` or ``+1``) of every feature of ``x``.

        One forward and one (LRP-modified, for ``"relevance"``) backward pass; the logits are those
        of that forward pass. The direction is the way each feature should move to lower ``F``
        (see the class docstring). ``plan``: :func:`~salmap.lrp.lrp_plan` of the model, reused.
        """
        objective = self.objective or ("margin" if targeted else "logit")

        def cotangent(out: Tensor) -> Tensor:
            onehot = torch.nn.functional.one_hot(labels, out.shape[1]).to(out.dtype)
            sign = -1.0 if targeted else 1.0  # F = Z_y (untargeted), F = -Z_t (targeted)
            if objective == "logit":
                return sign * onehot
            # The runner-up: the top class other than the label, re-chosen at every iteration.
            rival = out.masked_fill(onehot.bool(), float("-inf")).argmax(dim=1)
            return sign * (onehot - torch.nn.functional.one_hot(rival, out.shape[1]).to(out.dtype))

        authors = self.norm == "l2" and self.l2_rule == "authors"
        if authors:
            low, high = self.bounds.like(x)
            towards_middle = -torch.sign(x - (low + high) / 2)  # type: ignore[operator]
        if self.indicator == "sensitivity":
            out, (grad,) = output_vjps(self.model, x, [cotangent])
            if authors:
                return out, (x - (low + high) / 2) * grad, towards_middle  # type: ignore[operator]
            return out, grad.abs(), -grad.sign()
        assert isinstance(self.model, nn.Module)
        out, relevance, grad = lrp_relevance(self.model, x, cotangent, self._composite, plan)
        if authors:
            # The relevance of the centred input, in the space LRP explains (normalised for a Normalized model).
            lrp_low, lrp_high = self._lrp_bounds.like(x)
            return out, relevance - (lrp_low + lrp_high) / 2 * grad, towards_middle  # type: ignore[operator]
        direction = -grad.sign()
        # In the space LRP explains (normalised for a Normalized model; the direction's sign is the same).
        low, high = self._lrp_bounds.like(x)
        # The relevance the feature gives up when set to its bound: R(x) - R(bound) = (x - bound) * g~.
        bound = torch.where(direction > 0, high, low)
        return out, relevance - bound * grad, direction

    def _run(self, x: Tensor, labels: Tensor, targeted: bool, clean: Tensor) -> tuple[Tensor, Tensor]:
        low, high = self.bounds.features(x)
        batch, shape = x.shape[0], x.shape[1:]
        plan = lrp_plan(self.model, x) if isinstance(self.model, nn.Module) and self.indicator == "relevance" else None
        x_adv = x.clone().reshape(batch, -1)
        k = min(self.n_features, x_adv.shape[1])

        def one_step(rows: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
            xa, la, used = rows["x"], rows["labels"], rows["used"]
            out, sig, direction = self.significance(xa.view(-1, *shape), la, targeted, plan)
            pred = out.argmax(dim=1)
            done = pred == la if targeted else pred != la
            sig, direction = sig.reshape(xa.shape), direction.reshape(xa.shape)
            # A feature is a candidate only if it can still move its way (not at that bound yet).
            movable = ((direction > 0) & (xa < high)) | ((direction < 0) & (xa > low))
            if self.norm == "linf":
                stuck = ~movable.any(dim=1)
                moved = torch.clamp(xa + self.eps * direction * movable, low, high)  # type: ignore[arg-type]
            else:
                if self.norm == "l0":
                    movable &= ~used
                top, idx = sig.masked_fill(~movable, float("-inf")).topk(k, dim=1)
                picked = torch.isfinite(top)
                step = direction.gather(1, idx)
                old = xa.gather(1, idx)
                if self.norm == "l0":
                    new = torch.where(step > 0, *_at(high, low, idx)).to(xa.dtype)  # type: ignore[arg-type]
                    used = used.scatter(1, idx, picked | used.gather(1, idx))
                else:
                    new = clip_features(old + self.eps * step, low, high, idx)
                # Ties among fewer than k candidates: keep the feature as it was where nothing was picked.
                moved = xa.scatter(1, idx, torch.where(picked, new, old))
                stuck = ~picked.any(dim=1)
            return ~(done | stuck), {"x": moved, "used": used}

        used = torch.zeros_like(x_adv, dtype=torch.bool)
        iterations = active_set_loop({"x": x_adv, "labels": labels, "used": used}, one_step, self.max_iter)
        return x_adv.view_as(x), iterations


def _at(high: float | Tensor, low: float | Tensor, idx: Tensor) -> tuple[float | Tensor, float | Tensor]:
    """The per-feature bounds (``(1, n)`` tensors) of the features ``idx``; scalars as they are."""
    if isinstance(high, Tensor) and isinstance(low, Tensor):
        return high[0][idx], low[0][idx]
    return high, low
