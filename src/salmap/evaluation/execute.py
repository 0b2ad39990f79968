"""The execute step: run one unit (any registered attack or explainer) and build its rows.

Every command goes through :func:`execute`: ``salmap evaluate``, ``attack``, ``explain``
and ``defend``. The clean batch is predicted once per unit (and handed to the attack);
rows are built from the :class:`~salmap.attacks.base.AttackResult` in one place
(:func:`attack_rows`); what the figures need (adversarial inputs of the figure samples,
segmentation masks, attribution maps) is kept with the unit, so figures never run a model.

Row schema (``results.jsonl``, one JSON object a line): :data:`ROW_FIELDS` --
``model``, ``defense``, ``attack`` (its name in the run), ``index`` (the sample's index
in the dataset split), ``label`` (true class), ``target`` (target class, null when
untargeted), ``success``, ``l0``, ``l2``, ``linf``, ``iterations``, ``seconds`` (the
unit's attack time divided by its rows), ``pred_before``, ``pred_after``; with
``save_png`` also ``success_png`` (still adversarial once rounded to 8 bits). A model with a
judge (:class:`~salmap.evaluation.loaded.LoadedModel`, ``salmap defend``: the defended model)
adds :data:`JUDGE_FIELDS`: ``judge_before`` and ``judge_after``, the judge's predictions on the
clean and on the adversarial input.
Segmentation rows carry ``label``, ``pred_before``, ``pred_after`` as null, ``target``
as the goal (``hide``, ``relabel``, ``add``) and the attack's per-sample extras
(``pixel_accuracy``, ``pixel_accuracy_before``, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from salmap import registry
from salmap.attacks.base import Attack, AttackResult
from salmap.evaluation.explaining import attribute, explain_samples
from salmap.evaluation.plan import Plan, Unit, derive_seed
from salmap.evaluation.resources import LoadedModel
from salmap.gradients import frozen, predict
from salmap.metrics import mask_from_output
from salmap.targets import already_reached, expand, next_positions, segmentation_goal

ROW_FIELDS = ("model", "defense", "attack", "index", "label", "target", "success", "l0", "l2", "linf",
              "iterations", "seconds", "pred_before", "pred_after")
#: the row fields of a model with a judge (see the module docstring)
JUDGE_FIELDS = ("judge_before", "judge_after")


@dataclass
class UnitOutput:
    """What one unit produced: its rows, the tensors the figures need, and the saved examples."""

    rows: list[dict[str, Any]]
    examples: dict[str, Tensor] = field(default_factory=dict)
    adversarial: dict[str, Tensor] = field(default_factory=dict)
    #: ``(file name, uint8 (C, H, W))`` of the 8-bit PNGs to write (``save_png``)
    pngs: list[tuple[str, Tensor]] = field(default_factory=list)


def build(plan: Plan, unit: Unit, model: LoadedModel) -> Any:
    """The configured attack or explainer of a unit, built through :mod:`salmap.registry`
    with the model's bounds; a ``seed`` parameter defaults to one derived from the run's."""
    cfg = plan.cfg
    if unit.kind == "explain":
        spec = cfg.explanations[unit.attack]
        return registry.get_explainer(spec.explainer).build(model.module, bounds=model.bounds, **spec.params)
    attack = cfg.attacks[unit.attack]
    entry = registry.get_attack(attack.attack)
    params = dict(attack.params)
    if "seed" in entry.param_map and "seed" not in params:
        params["seed"] = derive_seed(cfg.seed, "attack", attack.name) % (2**31)
    return entry.build(model.module, bounds=model.bounds, **params)


def execute(plan: Plan, unit: Unit, runnable: Any, model: LoadedModel, device: str,
            save_adversarial: bool = False, save_png: bool = False, attacked: Tensor | None = None) -> UnitOutput:
    """Run ``runnable`` (an attack or explainer built by :func:`build`) on ``unit``; ``attacked``:
    the adversarial examples of the unit's samples an explanation unit explains too (:meth:`Plan.paired`)."""
    torch.manual_seed(unit.seed)  # for algorithms drawing from the global generator
    if unit.kind == "explain":
        return _explain(plan, unit, runnable, model, device, attacked)
    ds, spec = plan.dataset, plan.cfg.attacks[unit.attack]
    pos = unit.positions
    x, y = ds.x[pos].to(device), ds.y[pos].to(device)
    target: Tensor | None
    judged = None
    if plan.task(unit.attack) == "segmentation":
        batch = x
        if spec.targets == "add":  # the next selected sample of the last one may lie outside the unit
            batch = torch.cat([x, ds.x[next_positions(pos[-1:], len(ds))].to(device)])
        with frozen(runnable.model):
            out = predict(runnable.model, batch)
        masks = mask_from_output(out)
        goal = segmentation_goal(spec.targets, masks[: len(pos)], masks[1:] if spec.targets == "add" else None,
                                 max(int(out.shape[1]), 2), spec.to)
        source = torch.arange(len(pos), device=x.device)
        result = run_attack(runnable, x, None, goal, out[: len(pos)], skip_reached=False)
        rows_y, target = None, goal
    else:
        with frozen(runnable.model):
            clean = predict(runnable.model, x)
        fixed = plan.targets[unit.attack]  # random and next targets, drawn for the whole selection
        rows = expand("none" if fixed is not None else spec.targets, x, y, ds.num_classes, logits=clean)
        target = fixed[pos].to(device) if fixed is not None else rows.target
        source = rows.source
        result = run_attack(runnable, rows.x, rows.y, target, clean[source])
        rows_y = rows.y
        if model.judge is not None:
            judged = judge(model.judge, rows.x, result.x_adv, unit.seed)
    result = result.to("cpu")
    source = source.cpu()
    index = plan.indices[pos][source]
    output = UnitOutput(attack_rows(result, plan, unit, index, rows_y, target, judged))
    if save_png:
        _rounding(output, runnable, result, model, unit, index, device)
    keep = torch.isin(pos[source], torch.tensor(plan.figure_indices, dtype=torch.long))
    if bool(keep.any()):
        output.examples = {"x_adv": result.x_adv[keep], "position": pos[source][keep],
                           "target": (target.cpu()[keep] if target is not None and target.dim() == 1
                                      else torch.full((int(keep.sum()),), -1))}
        if target is not None and target.dim() > 1:  # segmentation: the masks of the figure
            output.examples.update(goal=target.cpu()[keep], pred_before=result.pred_before[keep],
                                   pred_after=result.pred_after[keep])
    if save_adversarial:
        output.adversarial = adversarial_record(result, index, rows_y, target)
    return output


def run_attack(attack: Any, x: Tensor, y: Tensor | None, target: Tensor | None, clean: Tensor,
               skip_reached: bool = True) -> AttackResult:
    """Call ``attack`` on rows (untargeted when ``target`` is None) with their clean outputs.

    A targeted row whose clean prediction already is its target (:func:`salmap.targets.already_reached`)
    is not attacked (some attacks, JSMA among them, refuse it): it records success with no
    perturbation and no iterations, as an untargeted attack does for a misclassified sample.
    """
    extra: dict[str, Any] = {"clean": clean} if isinstance(attack, Attack) else {}
    if target is None:
        return attack(x, y=y, **extra)  # type: ignore[no-any-return]
    if not skip_reached:
        return attack(x, target=target, **extra)  # type: ignore[no-any-return]
    start = time.perf_counter()
    before = clean.argmax(dim=1)
    todo = torch.nonzero(~already_reached(before, target)).flatten()
    if todo.numel() == x.shape[0]:
        return attack(x, target=target, **extra)  # type: ignore[no-any-return]
    n = x.shape[0]
    base = AttackResult(
        x_adv=x.detach().clone(), success=torch.ones(n, dtype=torch.bool, device=x.device),
        l0=torch.zeros(n, device=x.device), l2=torch.zeros(n, device=x.device), linf=torch.zeros(n, device=x.device),
        iterations=torch.zeros(n, dtype=torch.long, device=x.device), pred_before=before, pred_after=before.clone(),
        labels=target, targeted=True,
    )
    if todo.numel():
        part = attack(x[todo], target=target[todo], **({"clean": clean[todo]} if extra else {}))
        for name in ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after"):
            getattr(base, name)[todo] = getattr(part, name).to(getattr(base, name).dtype)
        for name, values in part.extra.items():
            filled = torch.full((n, *values.shape[1:]), float("nan"), device=x.device)
            filled[todo] = values.float()
            base.extra[name] = filled
    base.seconds = time.perf_counter() - start
    return base


def judge(model: Any, x: Tensor, x_adv: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """The judge's predicted classes ``(on x, on x_adv)``, on the CPU.

    A randomised judge (block switching: it has ``reseed``) draws from the unit's seed, the
    same draws for both inputs, so a unit is judged alike in any process, order or resume.
    """
    preds = []
    for inputs in (x, x_adv):
        reseed = getattr(model, "reseed", None)
        if callable(reseed):
            reseed(derive_seed(seed, "judge") % (2**31))
        with frozen(model):
            preds.append(predict(model, inputs).argmax(dim=1).cpu())
    return preds[0], preds[1]


def attack_rows(result: AttackResult, plan: Plan, unit: Unit, index: Tensor, y: Tensor | None,
                target: Tensor | None, judged: tuple[Tensor, Tensor] | None = None) -> list[dict[str, Any]]:
    """The rows of a unit from its :class:`AttackResult` (the one place rows are built);
    ``judged``: the judge's predictions (:func:`judge`) when the model has one."""
    spec, model_cfg = plan.cfg.attacks[unit.attack], plan.cfg.models[unit.model]
    per_row = result.seconds / max(len(result), 1)
    segmentation = target is not None and target.dim() > 1
    y_cpu = y.cpu() if y is not None else None
    rows = []
    for i in range(len(result)):
        row: dict[str, Any] = {
            "model": model_cfg.name, "defense": model_cfg.defense, "attack": spec.name, "index": int(index[i]),
            "label": None if y_cpu is None else int(y_cpu[i]),
            "target": spec.targets if segmentation else None if target is None else int(target[i]),
            "success": bool(result.success[i]), "l0": float(result.l0[i]), "l2": float(result.l2[i]),
            "linf": float(result.linf[i]), "iterations": int(result.iterations[i]), "seconds": per_row,
            "pred_before": None if segmentation else int(result.pred_before[i]),
            "pred_after": None if segmentation else int(result.pred_after[i]),
        }
        if judged is not None:
            row.update(judge_before=int(judged[0][i]), judge_after=int(judged[1][i]))
        row.update({k: float(v[i]) for k, v in sorted(result.extra.items()) if v.dim() == 1})
        rows.append(row)
    return rows


def adversarial_record(result: AttackResult, index: Tensor, y: Tensor | None, target: Tensor | None,
                       ) -> dict[str, Tensor]:
    """The tensors of a save-adv shard: every adversarial example with its index, label,
    target (``-1``: untargeted; segmentation: the goal masks) and success."""
    n = len(result)
    record = {"x_adv": result.x_adv, "index": index.long(), "success": result.success,
              "label": y.cpu().long() if y is not None else torch.full((n,), -1)}
    if target is not None and target.dim() > 1:
        record["goal"] = target.cpu().long()
        record["target"] = torch.full((n,), -1)
    else:
        record["target"] = target.cpu().long() if target is not None else torch.full((n,), -1)
    return record


def quantize(x: Tensor, bounds: tuple[Any, Any]) -> tuple[Tensor, Tensor]:
    """``x`` rounded to 8 bits within ``bounds``: ``(uint8 levels, the rounded values as x's dtype)``."""
    low = torch.as_tensor(bounds[0], dtype=x.dtype, device=x.device)
    high = torch.as_tensor(bounds[1], dtype=x.dtype, device=x.device)
    if low.dim() == 1:  # per channel
        low, high = low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)
    levels = ((x - low) / (high - low) * 255).round().clamp(0, 255)
    return levels.to(torch.uint8), low + levels / 255 * (high - low)


def _rounding(output: UnitOutput, attack: Any, result: AttackResult, model: LoadedModel, unit: Unit,
              index: Tensor, device: str) -> None:
    """8-bit PNGs of the adversarial examples, and whether each is still adversarial once rounded."""
    levels, rounded = quantize(result.x_adv, model.bounds)
    with frozen(attack.model):
        out = predict(attack.model, rounded.to(device)).cpu()
    if hasattr(attack, "_is_success"):
        still = attack._is_success(out, result.labels.cpu(), result.targeted).cpu()
    else:
        pred = out.argmax(dim=1)
        still = pred == result.labels.cpu() if result.targeted else pred != result.labels.cpu()
    for i, row in enumerate(output.rows):
        row["success_png"] = bool(still[i]) and bool(row["success"])
        suffix = f"-t{row['target']}" if isinstance(row["target"], int) else ""
        output.pngs.append((f"{unit.key}-{int(index[i])}{suffix}.png", levels[i]))


def _explain(plan: Plan, unit: Unit, explainer: Any, model: LoadedModel, device: str,
             attacked: Tensor | None = None) -> UnitOutput:
    """An explanation unit: attribution maps of its samples (the figure samples; with
    ``salmap explain``'s settings a batch of every sample, :func:`~salmap.evaluation.explaining.explain_samples`)."""
    ds, spec, settings = plan.dataset, plan.cfg.explanations[unit.attack], plan.cfg.explain
    pos = unit.positions
    x, y = ds.x[pos].to(device), ds.y[pos].to(device)
    if settings is not None:
        found, kept = explain_samples(explainer, model.module, x, y, pos, ds.task == "segmentation", settings.target,
                                      settings.region, settings.rows,
                                      None if attacked is None else attacked.to(device))
        name = plan.cfg.models[unit.model].name
        rows = [{"model": name, "explainer": spec.name, "index": int(i), **r}
                for i, r in zip(plan.indices[pos], found, strict=True)]
        return UnitOutput(rows, examples=kept if kept["position"].numel() else {})
    # a segmenter is explained for its own predicted mask; a classifier for the true class
    heat, seconds = attribute(explainer, x, y if ds.task == "classification" else None)
    row = {"model": plan.cfg.models[unit.model].name, "explainer": spec.name, "samples": len(pos),
           "seconds": seconds}
    return UnitOutput([row], examples={"heat": heat.detach().cpu().float(), "position": pos})


__all__ = ["JUDGE_FIELDS", "ROW_FIELDS", "UnitOutput", "adversarial_record", "attack_rows", "attribute", "build",
           "execute", "judge", "quantize", "run_attack"]
