"""Running a command's attack through the evaluation pipeline (plan -> execute -> store).

``salmap attack`` describes its work as a one-model, one-attack run and hands it to
:func:`salmap.evaluation.runner.evaluate`: so it resumes after a crash, locks its output
folder, refuses a folder holding something else unless ``--overwrite``, shows progress on
a terminal, can save every adversarial example (``--save-adv``, ``--save-png``) and reports
the same metrics as ``salmap evaluate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from salmap import data as datasets
from salmap import registry
from salmap.cli.flags import as_flags
from salmap.evaluation.distributed import World
from salmap.evaluation.execute import build
from salmap.evaluation.figures import stored_examples
from salmap.evaluation.plan import Plan
from salmap.evaluation.resources import LoadedModel, Resources, module_problem
from salmap.evaluation.runner import evaluate, prepare
from salmap.evaluation.settings import (
    AttackConfig,
    DataConfig,
    FigureConfig,
    ModelConfig,
    RunConfig,
)
from salmap.evaluation.store import RunStore, read_results


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """``--overwrite``, ``--save-adv`` and ``--save-png`` (the run-folder flags of every command)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different salmap run in the output folder (only salmap's files are removed)")
    p.add_argument("--save-adv", action="store_true",
                   help="write every adversarial example losslessly to adversarial/*.safetensors "
                        "(read back with salmap.evaluation.load_adversarial)")
    p.add_argument("--save-png", action="store_true",
                   help="also write them as 8-bit PNGs under png/ and count those no longer adversarial once rounded")


@dataclass
class Ran:
    """A finished single-attack run: its plan, rows, summary entry, figure examples and attack."""

    plan: Plan
    rows: list[dict[str, Any]]
    entry: dict[str, Any]
    examples: dict[str, Tensor]
    attack: Any
    resumed: int


def run_attack(args: argparse.Namespace, model: nn.Module, meta: dict[str, Any], bounds: Any,
               ds: datasets.Dataset, data: str, targets: str, params: dict[str, Any], to: int | None = None) -> Ran:
    """Run ``args.attack`` on the samples ``ds`` (the first ``--num`` of the split) through the pipeline."""
    if problem := module_problem(registry.get_attack(args.attack), params, model):  # the flags that help
        why, instead = problem
        hint = f", or run it with {as_flags(instead)} on this model" if instead else ""
        raise ValueError(f"{args.attack} cannot run on --model {args.model}: {why}; use the eager model "
                         f"(checkpoint folder or module:factory){hint}")
    options = {k: getattr(args, k, None) for k in ("mean", "std", "output_key", "model_arg")}
    cfg = RunConfig(
        output=args.out, models=[ModelConfig(name=Path(args.model).name or args.model, path=args.model)],
        attacks=[AttackConfig(name=args.attack, attack=args.attack, targets=targets, params=params, to=to)],
        data=DataConfig(name=data, split=args.split, num=len(ds), select="first",
                        image_size=getattr(args, "image_size", None)),
        name=f"salmap attack {args.attack} {json.dumps(options, sort_keys=True)}", seed=args.seed,
        batch_size=args.batch_size, device=args.device, figures=FigureConfig(samples=8, enabled=False),
        report=False, save_adversarial=bool(getattr(args, "save_adv", False)),
        save_png=bool(getattr(args, "save_png", False)),
    )
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    loaded = LoadedModel(args.model, model, meta, bounds, task=ds.task)
    cfg.resources = Resources(ds, [loaded], args.device)
    outcome = evaluate(cfg, overwrite=bool(getattr(args, "overwrite", False)), progress=sys.stderr.isatty(),
                       world=World(), command="attack")
    plan = outcome.plan or prepare(cfg)
    summary = outcome.summary or {}
    return Ran(plan, read_results(outcome.output), summary["results"][0],
               stored_examples(RunStore(outcome.output), plan, 0, 0), build(plan, plan.units[0], loaded),
               outcome.resumed)


def legacy_summary(e: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The attack summary of ``salmap attack``'s results.json and ``salmap explain``'s summary.json
    from a summary entry and its rows: the earlier keys (``l0``, ``l2``, ``linf``: means over all
    samples) beside the names ``salmap evaluate`` uses (``l2_mean``, ``l2_mean_success``, ...)."""
    old = {"samples": float(len(rows)), "success_rate": e["success_rate"], "l0": e["l0_mean"],
           "l0_fraction": e["l0_fraction_mean"], "l2": e["l2_mean"], "linf": e["linf_mean"],
           "iterations": e["iterations_mean"], "seconds": e["seconds"]}
    skip = {"model", "defense", "attack", "kind", "targets", "params", "rows", "samples"}
    return {**old, **{k: v for k, v in e.items() if k not in skip}}


def first_rows(ran: Ran, count: int = 8) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x, x_adv, y, pred_before, pred_after)`` of the first ``count`` stored rows (for grid.png)."""
    ex, ds = ran.examples, ran.plan.dataset
    n = min(count, int(ex["position"].numel()))
    pos = ex["position"][:n]
    lookup = {(r["index"], r["target"]): r for r in ran.rows}
    keys = [(int(ran.plan.indices[p]), None if int(t) < 0 else int(t)) for p, t in zip(pos, ex["target"][:n],
                                                                                       strict=True)]
    before = torch.tensor([lookup[k]["pred_before"] for k in keys])
    after = torch.tensor([lookup[k]["pred_after"] for k in keys])
    return ds.x[pos], ex["x_adv"][:n], ds.y[pos], before, after


__all__ = ["Ran", "add_run_flags", "first_rows", "legacy_summary", "run_attack"]
