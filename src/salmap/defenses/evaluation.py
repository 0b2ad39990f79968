"""Honest evaluation of a defense: clean accuracy, transfer attacks and adaptive white-box attacks.

Following Carlini et al., "On Evaluating Adversarial Robustness", 2019, and Athalye et al.
2018: a defense is reported under attacks crafted on the undefended model and
transferred (the setting of the papers that propose these defenses) *and* under
adaptive attacks that see the defense (gradients through the denoiser, EOT over
block switching's random channels, BPDA where gradients vanish). The ``worst`` figure
counts a sample as robust only if it survives both.

The evaluation is a run of the evaluation pipeline (:mod:`salmap.evaluation`: plan ->
execute -> store -> summary), like ``salmap attack`` and ``salmap evaluate``: two models,
``transfer`` (the undefended model) and ``adaptive`` (:func:`~salmap.defenses.adaptive.adaptive_model`
of the defended one), each judged by the defended model (the rows' ``judge_before`` and
``judge_after``), every attack a list of units with their seeds, samples and targets. So it
resumes after a crash, shows progress and reports the same metrics (``l2_mean``,
``l2_mean_success``, ...) as the other commands.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salmap import data as datasets
from salmap._validate import (
    Bounds,
    BoundsLike,
    check_bounds,
    check_input,
    check_labels,
    check_number,
)
from salmap.defenses.adaptive import adaptive_model, warn_if_unaccounted
from salmap.defenses.specs import AttackSpec, check_accuracy, check_trained, default_attacks
from salmap.devices import resolve_device
from salmap.evaluation.identity import module_digest
from salmap.evaluation.loaded import LoadedModel, Resources
from salmap.evaluation.plan import Plan, plan
from salmap.evaluation.runner import run_claimed
from salmap.evaluation.settings import (
    DataConfig,
    FigureConfig,
    ModelConfig,
    RunConfig,
)
from salmap.evaluation.store import RunStore, read_results
from salmap.gradients import Model, frozen, predict

#: the models of a defense's run: examples crafted on the undefended model, and by the adaptive attack
TRANSFER, ADAPTIVE = "transfer", "adaptive"


@torch.no_grad()
def correct(model: Model, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Bool ``(N,)``: ``model`` (in eval mode) classifies each sample correctly."""
    with frozen(model):
        return predict(model, x, batch_size).argmax(dim=1) == y


def plan_defense(
    specs: list[AttackSpec], dataset: datasets.Dataset, *, output: str | Path, source: str, defense: str,
    seed: int = 0, batch_size: int = 100, device: str = "cpu", adaptive: bool = True, num: int | None = None,
    description: Mapping[str, Any] | None = None, save_adversarial: bool = False, save_png: bool = False,
    model: nn.Module | None = None,
) -> Plan:
    """The plan of a defense's evaluation on the first ``num`` samples of ``dataset`` (all when None).

    Made before the defense is trained (it runs no model), so that the output folder can be
    claimed first and a training finished by an interrupted run reused. ``source`` names the
    undefended model (a checkpoint path is hashed into the fingerprint), ``description``
    everything else the results depend on (the defense's settings, its training). ``model`` is the
    undefended model opened from ``source``: a ``module:factory``'s is identified in the fingerprint by
    the model it built (:func:`~salmap.evaluation.identity.model_hash`).
    """
    models = [ModelConfig(name=TRANSFER, path=source, defense=defense)]
    if adaptive:
        models.append(ModelConfig(name=ADAPTIVE, path=f"the adaptive attack on {defense}", defense=defense))
    cfg = RunConfig(
        output=str(output), models=models, attacks=[s.config() for s in specs],
        data=DataConfig(name=dataset.name, split=str(dataset.info.get("split", "test")), num=num, select="first"),
        name=f"salmap defend {defense} " + repr(sorted((description or {}).items())), seed=seed,
        batch_size=batch_size, device=device, figures=FigureConfig(samples=0, enabled=False), report=False,
        save_adversarial=save_adversarial, save_png=save_png,
    )
    opened = None if model is None else LoadedModel(source, model, {}, (0.0, 1.0))  # (the plan reads its module only)
    cfg.resources = Resources(dataset, [opened] + [None] * (len(models) - 1), device)
    return plan(cfg, cfg.resources)


def run_defense(
    the_plan: Plan, store: RunStore, defended: nn.Module, undefended: nn.Module, bounds: Bounds,
    samples: int | None = None, progress: bool = True, resumed: bool = False, adaptive: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a planned defense evaluation (:func:`plan_defense`) into a claimed ``store``;
    returns the report (see :func:`evaluate_defense`)."""
    start = time.perf_counter()
    cfg, ds = the_plan.cfg, the_plan.dataset
    device = resolve_device(cfg.device)
    x, y = ds.x.to(device), ds.y.to(device)
    num_classes = ds.num_classes
    _reseed(defended, cfg.seed)
    base_ok = correct(undefended, x, y, cfg.batch_size)
    check_accuracy(float(base_ok.float().mean()), num_classes, "undefended model")
    clean_ok = correct(defended, x, y, cfg.batch_size)
    check_accuracy(float(clean_ok.float().mean()), num_classes, "defended model")
    pair = (bounds.low, bounds.high)
    loaded = [LoadedModel(cfg.models[0].path, undefended, {}, pair, "classification", judge=defended)]
    report: dict[str, Any] = {"samples": len(ds), "clean_accuracy": float(clean_ok.float().mean()),
                              "undefended_clean_accuracy": float(base_ok.float().mean())}
    if len(cfg.models) > 1:
        attack_model = adaptive_model(defended, x[: cfg.batch_size], y[: cfg.batch_size], samples=samples)
        warn_if_unaccounted(attack_model, defended)
        report["attack_model"] = type(attack_model).__name__
        loaded.append(LoadedModel(cfg.models[1].path, attack_model, {}, pair, "classification", judge=defended))
    elif adaptive:
        report["attack_model"] = "undefended (transfer is white-box)"
    cfg.resources = Resources(ds, list(loaded), device)
    outcome = run_claimed(the_plan, store, progress=progress, resumed=resumed)
    summary = outcome.summary or {}
    report.update(defense_figures(read_results(store.out), [a.name for a in cfg.attacks],
                                  adaptive=adaptive))
    report["results"] = summary.get("results", [])
    report["units_resumed"] = outcome.resumed
    _reseed(defended, cfg.seed)
    report["seconds"] = time.perf_counter() - start
    return report


def defense_figures(rows: list[dict[str, Any]], attacks: list[str], adaptive: bool = True) -> dict[str, Any]:
    """Accuracies of the defended model (the judge) from a defense run's rows.

    Per attack: ``transfer`` and ``adaptive`` (the defended model's accuracy on the examples
    crafted on the undefended model and by the adaptive attack), ``worst`` (a sample counts
    only if it is classified correctly under both); ``robust_accuracy``: a sample counts only
    if the defended model classifies it correctly clean and under every attack in both
    settings (the per-sample worst case). Without an adaptive model (the defended model is the
    undefended one) the transfer attack is white-box and counts as adaptive too.
    """
    out: dict[str, Any] = {TRANSFER: {}, ADAPTIVE: {}, "worst": {}}
    every: dict[int, bool] = {}
    for name in attacks:
        robust: dict[int, bool] = {}
        for setting in (TRANSFER, ADAPTIVE):
            mine = [r for r in rows if r["attack"] == name and r["model"] == setting]
            if not mine:
                continue
            ok = [r["judge_after"] == r["label"] for r in mine]
            out[setting][name] = sum(ok) / len(ok)
            for r, good in zip(mine, ok, strict=True):
                robust[r["index"]] = robust.get(r["index"], True) and good
                every[r["index"]] = every.get(r["index"], r["judge_before"] == r["label"]) and good
        if not adaptive:
            continue
        if name not in out[ADAPTIVE] and name in out[TRANSFER]:
            out[ADAPTIVE][name] = out[TRANSFER][name]
        out["worst"][name] = sum(robust.values()) / len(robust) if robust else float("nan")
    if not adaptive:
        out[ADAPTIVE], out["worst"] = {}, {}
    out["robust_accuracy"] = sum(every.values()) / len(every) if every else float("nan")
    return out


def evaluate_defense(
    defended: nn.Module,
    undefended: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: list[AttackSpec] | None = None,
    bounds: BoundsLike = (0.0, 1.0),
    batch_size: int = 100,
    seed: int = 0,
    adaptive: bool = True,
    samples: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Clean accuracy and accuracy under transfer and adaptive attacks of a defended classifier.

    Parameters
    ----------
    defended: the defended classifier (``Purified``, ``BlockSwitch``, adversarially trained, ...).
    undefended: the classifier the defense protects; transfer attacks are crafted on it.
    x, y: test images and true labels.
    attacks: the attacks (default :func:`default_attacks`).
    bounds: valid input range.
    batch_size: samples per attack call (one unit of the run).
    seed: seeds targets, attacks and (via ``reseed``) a randomised model's choices.
    adaptive: also run the adaptive white-box attacks (:func:`~salmap.defenses.adaptive.adaptive_model`).
    samples: EOT passes for randomised models (``None``: exact expectation over channels).
    progress: show progress bars.
    out: the run folder (rows, summary; a rerun with the same models and settings resumes);
        None: a temporary folder, removed afterwards.
    overwrite: replace a different run in ``out`` (only salmap's files are removed).

    Returns
    -------
    dict with ``clean_accuracy``, ``undefended_clean_accuracy``, ``samples``, and per attack
    name the accuracies under ``transfer``, ``adaptive`` and ``worst`` (a sample counts only
    if it resists both), ``robust_accuracy`` (the per-sample worst case over every attack),
    ``attack_model`` (what the adaptive attack differentiated), ``results`` (per setting and
    attack the summary of :mod:`salmap.evaluation.summary`: ``success_rate``, ``l2_mean``,
    ``l2_mean_success``, ..., ``judge_accuracy``) and ``seconds``.

    Examples
    --------
    >>> report = evaluate_defense(Purified(lenet, dae), lenet, x_test[:200], y_test[:200])  # doctest: +SKIP
    >>> report["adaptive"]["pgd-0.3"]                                                      # doctest: +SKIP
    """
    bounds = check_bounds(bounds)
    x = check_input(x, bounds)
    check_number("batch_size", batch_size, low=1, integer=True)
    specs = default_attacks() if attacks is None else attacks
    with frozen(undefended):
        num_classes = int(predict(undefended, x[:1]).shape[1])
    y = check_labels(y, x.shape[0], num_classes, "y", x.device)
    ds = datasets.Dataset(x.detach().cpu(), y.cpu(), [str(c) for c in range(num_classes)], "tensors")
    description = {"undefended": module_digest(undefended), "defended": module_digest(defended),
                   "bounds": repr(bounds), "samples": samples}
    with tempfile.TemporaryDirectory(prefix="salmap-defend-") as scratch:
        folder = Path(out) if out is not None else Path(scratch)
        the_plan = plan_defense(specs, ds, output=folder, source="undefended", defense=type(defended).__name__,
                                seed=seed, batch_size=batch_size, device=str(x.device),
                                adaptive=adaptive and defended is not undefended, description=description)
        with RunStore(folder, "defend") as store:
            resumed = store.claim(the_plan.fingerprint, the_plan.cfg.to_dict(), overwrite, the_plan.extra)
            return run_defense(the_plan, store, defended, undefended, bounds, samples, progress, resumed, adaptive)


def _reseed(model: nn.Module, seed: int) -> None:
    # Randomised defenses are evaluated on a fixed seed so that a table can be reproduced.
    reseed = getattr(model, "reseed", None)
    if callable(reseed):
        reseed(seed)


def table_rows(defense: str, report: dict[str, Any], train_seconds: float | None = None) -> list[dict[str, Any]]:
    """Rows ``{defense, attacks, clean, <attack>: accuracy, ...}`` for the transfer, adaptive and
    worst-case settings of one :func:`evaluate_defense` report."""
    rows = []
    for setting in ("transfer", "adaptive", "worst"):
        if not report.get(setting):
            continue
        row: dict[str, Any] = {"defense": defense, "attacks": setting, "clean": report["clean_accuracy"]}
        row.update(report[setting])
        if train_seconds is not None:
            row["train_s"] = train_seconds
        rows.append(row)
    return rows


__all__ = [
    "ADAPTIVE", "TRANSFER", "AttackSpec", "check_accuracy", "check_trained", "correct", "default_attacks",
    "defense_figures", "evaluate_defense", "module_digest", "plan_defense", "run_defense", "table_rows",
]
