"""What is checked before a run claims its output folder, so that a mistake leaves no run behind to refuse
the corrected command: each attack and explainer built once per model (a value its constructor refuses)
and its model checks run (LRP's layers, and its one-sample pass for functions it has no rule for),
and under ``torchrun`` rank 0's ``module:factory`` models opened (their errors, and the models they build
identifying the run: :mod:`salmap.evaluation.identity`)."""

from __future__ import annotations

from salmap import registry
from salmap.evaluation.execute import build
from salmap.evaluation.plan import Plan, plan
from salmap.evaluation.resources import open_resources
from salmap.evaluation.settings import RunConfig


def opened_plan(cfg: RunConfig, device: str) -> Plan:
    """Rank 0's plan with every model open; any error a factory raises as a ``ValueError`` (for every rank)."""
    try:
        open_resources(cfg, device)
    except Exception as err:  # noqa: BLE001 -- reported to every rank, so that none waits at the broadcast
        raise err if isinstance(err, ValueError) else ValueError(f"models: {type(err).__name__}: {err}") from None
    return plan(cfg, cfg.resources)


def check_builds(the_plan: Plan) -> None:
    """Build every attack and explainer once per model (configuration only): a value its constructor
    refuses (JSMA's ``theta=0``) fails now, not after the output folder is claimed."""
    cfg, built = the_plan.cfg, set()
    for unit in the_plan.units:
        loaded = cfg.resources.models[unit.model] if cfg.resources is not None else None
        if loaded is not None and (unit.model, unit.kind, unit.attack) not in built:
            built.add((unit.model, unit.kind, unit.attack))
            build(the_plan, unit, loaded)
            if unit.kind == "explain":
                entry, params = registry.get_explainer(cfg.explanations[unit.attack].explainer), \
                    cfg.explanations[unit.attack].params
            else:
                entry, params = registry.get_attack(cfg.attacks[unit.attack].attack), cfg.attacks[unit.attack].params
            entry.check_module(loaded.module, params, the_plan.dataset.x[:1])  # e.g. ISI's relevance: LRP's


__all__ = ["check_builds", "opened_plan"]
