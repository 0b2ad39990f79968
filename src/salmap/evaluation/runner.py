"""The evaluation: plan -> execute -> store -> summary -> figures -> report, resumable and shardable.

:func:`evaluate` plans the run (:mod:`~salmap.evaluation.plan`), claims and locks the
output folder (:mod:`~salmap.evaluation.store`), runs every pending unit through the one
execute step (:mod:`~salmap.evaluation.execute`), then merges the units into
``results.jsonl``, writes ``summary.json`` (:mod:`~salmap.evaluation.summary`), the
figures (:mod:`~salmap.evaluation.figures`, from the store only) and ``report.html``.

Each finished unit is written atomically and its rows file is the only record that it
is done, so a run killed at any moment (even ``kill -9``) and started again computes
exactly the missing units. Every unit takes its randomness from the run's seed and its
own identity, so the merged results equal those of an uninterrupted run, and under
``torchrun`` the ranks share the pending units and give the single-process rows. Each
model is loaded once per process (during validation, :mod:`~salmap.evaluation.resources`).

Row and summary schemas: :mod:`salmap.evaluation.execute` and :mod:`salmap.evaluation.summary`.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from salmap.devices import resolve_device
from salmap.evaluation.distributed import World, from_environment
from salmap.evaluation.execute import ROW_FIELDS, build, execute
from salmap.evaluation.plan import Plan, Unit, derive_seed, plan
from salmap.evaluation.preflight import check_builds, opened_plan
from salmap.evaluation.resources import Resources, open_resources
from salmap.evaluation.settings import RunConfig
from salmap.evaluation.store import (
    BATCHES,
    FIGURES,
    REPORT,
    RESULTS,
    RUN_FILE,
    SCHEMA_VERSION,
    SUMMARY,
    RunStore,
    clean_json,
    read_results,
)
from salmap.evaluation.summary import summarize
from salmap.progress import bar as progress_bar
from salmap.targets import rows_per_sample

log = logging.getLogger(__name__)

#: what the runner owns in an output folder (removed by ``overwrite`` for a run salmap recognises)
OWNED = (RUN_FILE, BATCHES, RESULTS, SUMMARY, REPORT, FIGURES)
#: the plan of a run (named ``Prepared`` before the plan had its own module)
Prepared = Plan


def prepare(cfg: RunConfig) -> Plan:
    """The plan of ``cfg`` (its samples, targets, units and fingerprint); runs no model."""
    return plan(cfg, cfg.resources)


def versions() -> dict[str, str]:
    import numpy

    import salmap

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "salmap": salmap.__version__, "platform": platform.platform()}


@dataclass
class Outcome:
    """What :func:`evaluate` hands back: where things are and the summary."""

    output: Path
    summary: dict[str, Any] | None
    computed: int
    resumed: int
    #: the run's plan (its fingerprint identifies the models opened for the run)
    plan: Plan | None = None


def evaluate(cfg: RunConfig, overwrite: bool = False, progress: bool = True, world: World | None = None,
             command: str = "evaluate") -> Outcome:
    """Run (or resume) an evaluation; under ``torchrun`` the units are shared among the ranks.

    Rank 0 locks and claims the output folder, every rank computes its shard of the pending
    units, and rank 0 merges them into ``results.jsonl``, ``summary.json``, figures and the
    report. Returns the outcome (``summary`` is None on ranks other than 0).
    """
    start = time.perf_counter()
    own_world = world is None
    device = resolve_device(cfg.device)  # "auto": CUDA when available
    if world is None:
        world, device = from_environment(device)
    try:
        return _evaluate(cfg, overwrite, progress, world, device, start, command)
    finally:
        if own_world:
            world.close()


def _evaluate(cfg: RunConfig, overwrite: bool, progress: bool, world: World, device: str, start: float,
              command: str) -> Outcome:
    # module:factory models (opened by --allow-code only) and the constructors' own checks fail before the
    # folder is claimed, and the models the factories build are in the fingerprint (salmap.evaluation.identity)
    unopened = any(m is None for m in (cfg.resources.models if cfg.resources else [None]))
    if world.size == 1 and unopened:
        open_resources(cfg, device)
    the_plan = prepare(cfg)
    if world.size == 1:
        check_builds(the_plan)
    store = RunStore(cfg.output, command)
    claim: tuple[bool, str | None] = (False, None)
    if world.is_main:
        try:
            if world.size > 1 and unopened:  # (the other ranks open theirs when they compute)
                the_plan = opened_plan(cfg, device)
            store.lock()
            claim = (store.claim(the_plan.fingerprint, cfg.to_dict(), overwrite, the_plan.extra), None)
        except (ValueError, OSError) as err:
            store.unlock()
            claim = (False, str(err))
    resumed, error = world.broadcast(claim)
    if error:
        raise ValueError(error)
    try:
        return _run(the_plan, store, world, device, start, progress, bool(resumed))
    finally:
        store.unlock()


def run_claimed(the_plan: Plan, store: RunStore, progress: bool = True, resumed: bool = False) -> Outcome:
    """Run (or resume) the pending units of ``the_plan`` in one process into ``store``, which the
    caller has locked and claimed (``salmap defend`` claims its folder before it trains the
    defense), then merge them and write ``summary.json`` (figures and report as ``cfg`` says)."""
    device = resolve_device(the_plan.cfg.device)
    return _run(the_plan, store, World(), device, time.perf_counter(), progress, resumed)


def _run(the_plan: Plan, store: RunStore, world: World, device: str, start: float, progress: bool,
         resumed: bool) -> Outcome:
    cfg = the_plan.cfg
    done = {u.key for u in the_plan.units if u.key in store.done([u.key]) and unit_is_whole(the_plan, u, store)}
    world.barrier()  # every rank has listed the finished units before any rank adds to them
    mine = world.shard([u for u in the_plan.units if u.key not in done])
    if resumed and world.is_main:
        log.info("resuming %s: %d of %d units already done", store.out, len(done), len(the_plan.units))
    failure = None
    try:
        if mine:
            resources = open_resources(cfg, device)
            compute(the_plan, mine, store, resources, device, progress and world.is_main)
    except Exception as err:  # reported to every rank so that none waits forever at the merge
        failure = f"rank {world.rank}: {type(err).__name__}: {err}"
        if world.size == 1:
            raise
    failures = [f for f in world.gather(failure) if f]
    if failures:
        raise RuntimeError("evaluation failed on " + "; ".join(failures))
    summary = finalize(the_plan, store, start, len(done), world.size) if world.is_main else None
    world.barrier()
    return Outcome(store.out, summary, len(mine), len(done), the_plan)


def compute(the_plan: Plan, units: list[Unit], store: RunStore, resources: Resources, device: str,
            progress: bool) -> None:
    """Run ``units`` through the execute step and commit each to the store as it finishes."""
    cfg = the_plan.cfg
    bar = progress_bar(total=sum(u.stop - u.start for u in units), desc=store.command, unit="img", enabled=progress,
                       leave=True)
    try:
        for m in sorted({u.model for u in units}):
            loaded = resources.models[m]
            if loaded is None:
                raise RuntimeError(f"models[{m}] was not opened")
            built: dict[tuple[str, int], Any] = {}
            for unit in (u for u in units if u.model == m):
                if (unit.kind, unit.attack) not in built:
                    built[(unit.kind, unit.attack)] = build(the_plan, unit, loaded)
                job = cfg.attacks[unit.attack] if unit.kind == "attack" else cfg.explanations[unit.attack]
                bar.set_postfix_str(f"{cfg.models[m].name} / {job.name}", refresh=False)
                out = execute(the_plan, unit, built[(unit.kind, unit.attack)], loaded, device,
                              save_adversarial=cfg.save_adversarial, save_png=cfg.save_png,
                              attacked=attacked(the_plan, unit, store))
                store.write_unit(unit.key, out.rows, out.examples, out.adversarial, out.pngs)
                bar.update(unit.stop - unit.start)
    finally:
        bar.close()


def attacked(the_plan: Plan, unit: Unit, store: RunStore) -> Tensor | None:
    """The adversarial examples an explanation unit of ``salmap explain`` explains too: those its
    paired attack unit (:meth:`Plan.paired`, computed before it) kept in the store; else None."""
    pair = the_plan.paired(unit)
    if pair is None:
        return None
    kept = store.examples(pair.key)
    if not kept or not torch.equal(kept["position"], unit.positions):
        raise RuntimeError(f"unit {pair.key} holds no adversarial examples for the samples of unit {unit.key}")
    return kept["x_adv"]


def explanations(the_plan: Plan, store: RunStore) -> list[tuple[int, int, dict[str, Any]]]:
    """Per model and explainer ``(model, explainer, {model, explainer, samples, seconds, figure})``,
    from the rows of its explanation units."""
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for u in (u for u in the_plan.units if u.kind == "explain"):
        for row in store.read_unit(u.key):
            entry = found.setdefault((u.model, u.attack), {"model": row["model"], "explainer": row["explainer"],
                                                           "samples": 0, "seconds": 0.0, "figure": None})
            entry["samples"] += row.get("samples", 1)
            entry["seconds"] += row["seconds"]
    return [(m, e, entry) for (m, e), entry in found.items()]


def expected_rows(the_plan: Plan, unit: Unit) -> int:
    """Rows a finished attack unit holds: one per sample, or one per other class with ``targets: all``."""
    targets = the_plan.cfg.attacks[unit.attack].targets
    return (unit.stop - unit.start) * rows_per_sample(targets, the_plan.dataset.num_classes)


def unit_is_whole(the_plan: Plan, unit: Unit, store: RunStore) -> bool:
    """Whether a unit's files on disk are complete; a corrupt or short one (rows, kept examples or
    adversarial shard) is named in a warning and recomputed (salmap's own files: the recomputed unit
    replaces them atomically)."""
    try:
        rows = store.read_unit(unit.key)
        # (an attack unit keeps its figure samples' examples; an evaluate explanation unit, its maps)
        kept = bool(torch.isin(unit.positions, torch.tensor(the_plan.figure_indices)).any()) \
            if unit.kind == "attack" else the_plan.cfg.explain is None
        store.check_tensors(unit.key, examples=kept, adversarial=unit.kind == "attack" and the_plan.cfg.save_adversarial)
    except (ValueError, OSError) as err:
        log.warning("%s; recomputing the unit", err)
        return False
    if unit.kind == "attack" and len(rows) != expected_rows(the_plan, unit):
        log.warning("unit file %s holds %d rows, expected %d; recomputing the unit", store.unit_path(unit.key),
                    len(rows), expected_rows(the_plan, unit))
        return False
    return True


def merge(the_plan: Plan, store: RunStore) -> list[dict[str, Any]]:
    """Join every attack unit's rows in plan order into ``results.jsonl`` (checking each unit is whole)."""
    rows: list[dict[str, Any]] = []
    for unit in the_plan.attack_units():
        part = store.read_unit(unit.key)
        expected = expected_rows(the_plan, unit)
        if len(part) != expected:
            raise RuntimeError(f"unit {unit.key} holds {len(part)} rows, expected {expected}")
        rows.extend(part)
    store.write_results(rows)
    return rows


def finalize(the_plan: Plan, store: RunStore, start: float, resumed: int, processes: int) -> dict[str, Any]:
    """Merge the units, then write ``summary.json``, the figures and the report.

    ``start`` is the ``time.perf_counter()`` at which this invocation began.
    """
    cfg = the_plan.cfg
    rows = merge(the_plan, store)
    summary = summarize(the_plan, rows)
    explained = explanations(the_plan, store)
    summary["figures"] = []
    if cfg.figures.enabled:
        from salmap.evaluation.figures import draw

        summary["figures"] = draw(the_plan, store, rows, explained)
    summary["explanations"] = [entry for _, _, entry in explained]
    summary["timings"] = {
        "wall_seconds": time.perf_counter() - start, "compute_seconds": sum(r["seconds"] for r in rows),
        "units": len(the_plan.units), "units_resumed": resumed, "processes": processes,
    }
    summary["versions"] = versions()
    summary["settings"] = cfg.to_dict()
    store.write_json(SUMMARY, summary)
    if cfg.report:
        from salmap.evaluation.report import write_report

        write_report(store.out / REPORT, clean_json(summary), store.out)
    return summary


__all__ = [
    "OWNED", "ROW_FIELDS", "SCHEMA_VERSION", "Outcome", "Prepared", "Unit", "compute", "derive_seed", "evaluate",
    "finalize", "merge", "plan", "prepare", "read_results", "run_claimed", "summarize", "versions",
]
