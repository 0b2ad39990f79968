"""salmap explain: explain a model's predictions; write heat-map PNGs and a JSON summary.

Methods: every registered explainer (salmap.registry, plugins included); several may be
given (--method gradient --method gradcam, or --method gradient,gradcam). Each method's
parameters are flags generated from the registry: --PARAM sets it for every chosen
method that has it, --METHOD-PARAM for one method only (e.g. --lrp-eps). With
--attack NAME the maps are also computed on the attacked inputs and drawn before and
after the attack. The batches of each method and of the attack are units of the evaluation
pipeline (plan -> execute -> store, as in salmap attack): a rerun with the same arguments and
--out resumes, the folder is locked, and the attack's summary has the metric names of
salmap attack and salmap evaluate.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from salmap import registry
from salmap.cli.checks import check_layer, flag_of, named_by_flag, take
from salmap.cli.common import (
    add_model_data_args,
    bounds_of,
    load_data,
    load_model,
    model_options,
    print_table,
    write_json,
)
from salmap.cli.flags import add_entry_flags, as_flags, listing, params_from_args
from salmap.cli.pipeline import legacy_summary
from salmap.evaluation.distributed import World
from salmap.evaluation.execute import build
from salmap.evaluation.explaining import choose_target, parse_region, patch_problem
from salmap.evaluation.figures import stored_examples
from salmap.evaluation.loaded import LoadedModel, Resources
from salmap.evaluation.plan import Plan
from salmap.evaluation.resources import module_problem
from salmap.evaluation.runner import evaluate, prepare
from salmap.evaluation.settings import (
    AttackConfig,
    DataConfig,
    ExplainConfig,
    ExplainRun,
    FigureConfig,
    ModelConfig,
    RunConfig,
)
from salmap.evaluation.store import RunStore, read_results
from salmap.explain import Explainer, GradCAM
from salmap.gradients import forward
from salmap.plot import attack_grid, explanation_grid

#: samples drawn in the pictures when ``--rows`` is not given
DEFAULT_ROWS = 8

#: explainer parameters the command sets itself: the seed from --seed; a progress bar
RESERVED = frozenset({"seed", "progress"})


def add_parser(sub: argparse._SubParsersAction) -> None:
    entries = registry.explainers()
    attacks = [n for n, e in registry.attacks().items() if "classification" in e.tasks and e.untargeted]
    p = sub.add_parser("explain", help="explain predictions (" + ", ".join(entries) + ")",
                       description=__doc__, epilog="methods:\n" + listing(entries),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_data_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different salmap run in the output folder (only salmap's files are removed); "
                        "the same arguments and --out resume an earlier run")
    p.add_argument("--method", action="append", default=None, metavar="NAME",
                   help=f"explanation method(s), repeatable or comma-separated: {', '.join(entries)} "
                        "(default gradient)")
    p.add_argument("--target", default="pred",
                   help="class to explain: pred (predicted, default), label (true label) or a class index")
    p.add_argument("--region", default=None, metavar="Y0:Y1,X0:X1",
                   help="segmenters: explain the target class's summed score over this pixel box "
                        "(default: the pixels predicted as the target class)")
    a = p.add_argument_group("before/after an attack")
    a.add_argument("--attack", default=None, metavar="NAME",
                   help=f"attack the inputs (untargeted, true labels), one of {', '.join(attacks)}; the maps "
                        "after the attack explain the same class as before")
    a.add_argument("--eps", type=float, default=None, help="the attack's eps (default: the attack's own)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"samples drawn in the pictures (default {DEFAULT_ROWS}; more than -n: all of them)")
    taken: dict[str, Any] = {}
    for name, entry in entries.items():
        add_entry_flags(p.add_argument_group(f"{name} ({entry.cls.__name__})"), entry, reserved=RESERVED,
                        scoped=True, taken=taken)
    p.set_defaults(func=run)


def parse_methods(values: list[str] | None) -> list[str]:
    """``["gradient,occlusion", "gradcam"]`` to ``["gradient", "occlusion", "gradcam"]``, checked."""
    known = registry.explainers()
    names: list[str] = []
    for value in values or ["gradient"]:
        for name in (v.strip().lower() for v in value.split(",")):
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"--method must be among {list(known)}, got {name!r}{hint}")
            if name not in names:
                names.append(name)
    return names


def check_flags_used(methods: list[str], args: argparse.Namespace) -> None:
    """A method's flag given for none of the chosen methods, or ``--eps`` without ``--attack``, is
    refused: it would change nothing."""
    entries = registry.explainers()
    for dest in (k for k in vars(args) if "." in k):
        scope, _, param = dest.partition(".")
        owners = [n for n, e in entries.items() if param in e.param_map] if scope == "param" else [scope]
        if not set(owners) & set(methods):
            flag = "--" + (param if scope == "param" else f"{scope}-{param}").replace("_", "-")
            raise ValueError(f"{flag} applies to {', '.join(owners)}, which is not among the methods "
                             f"({', '.join(methods)}); add it with --method or drop the flag")
    if args.eps is not None and args.attack is None:
        raise ValueError(f"--eps is the attack's budget and needs --attack NAME, got --eps {args.eps} alone")


def explainer_params(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters of explainer ``name`` from the parsed flags (checked)."""
    return params_from_args(registry.get_explainer(name), args, base={"seed": args.seed, "progress": True})


def build_explainer(name: str, args: argparse.Namespace, model: torch.nn.Module, bounds: Any) -> Explainer:
    """The explainer ``name`` configured from the parsed flags."""
    return build_named(name, explainer_params(name, args), args, model, bounds)


def build_named(name: str, params: dict[str, Any], args: argparse.Namespace, model: Any, bounds: Any) -> Explainer:
    """The explainer ``name`` with ``params``; an error about one of its parameters names the flag
    (``--layer is needed: ...``, not the library's ``layer``)."""
    entry = registry.get_explainer(name)
    try:
        explainer: Explainer = entry.build(model, bounds=bounds, **params)
    except ValueError as err:
        raise named_by_flag(err, entry.param_map, lambda p: flag_of(args, name, p)) from None
    return explainer


def attack_entry(name: str) -> registry.Entry:
    """The untargeted classifier attack ``name``, or a ValueError listing them."""
    entries = {n: e for n, e in registry.attacks().items() if "classification" in e.tasks and e.untargeted}
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--attack must be one of {list(entries)}, got {name!r}{hint}")
    return entries[name]


def attack_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--attack``'s parameters (untargeted, on the true labels): its defaults, ``--seed`` and ``--eps``."""
    entry = attack_entry(args.attack)
    params: dict[str, Any] = {"seed": args.seed} if "seed" in entry.param_map else {}
    if args.eps is not None:
        if "eps" not in entry.param_map:
            raise ValueError(f"--eps is not a parameter of attack {args.attack}")
        params["eps"] = args.eps
    return entry.check(params)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.rows is not None and args.rows <= 0:
        raise ValueError(f"--rows must be positive, got {args.rows}")
    methods = parse_methods(args.method)
    check_flags_used(methods, args)
    model, meta = load_model(args.model, args.device, **model_options(args))
    bounds = bounds_of(meta)
    ds = load_data(args.data, args.split, args.num, image_size=args.image_size, model=model, meta=meta,
                   labels=args.attack is not None or args.target == "label")
    # --rows past the images draws all of them, said once as -n says it (the run keeps the value asked for)
    take(args.rows, len(ds), args.data, args.split, DEFAULT_ROWS, "--rows", "images explained")
    args.rows = DEFAULT_ROWS if args.rows is None else args.rows
    segmentation = ds.task == "segmentation"
    with torch.no_grad():
        out = forward(model, ds.x[0:1].to(args.device))
    if (out.dim() == 4) != segmentation and args.target == "label":
        raise ValueError(f"--target label needs labels that match the model's outputs; data {args.data!r} "
                         f"is {ds.task} and the model returned shape {tuple(out.shape)}")
    target, _ = choose_target(args.target, ds.y[:1], segmentation)  # a wrong --target or --region fails now
    if isinstance(target, int) and out.dim() == 2 and not 0 <= target < out.shape[1]:
        raise ValueError(f"--target must be pred, label or a class index in [0, {out.shape[1] - 1}] "
                         f"(the model has {out.shape[1]} outputs), got {target}")
    if args.region is not None:
        if out.dim() != 4:
            raise ValueError("--region is for segmenters; the model returned (B, classes) logits")
        parse_region(args.region, (int(out.shape[-2]), int(out.shape[-1])))
    params = {name: explainer_params(name, args) for name in methods}
    for name in methods:  # an explainer that cannot run on the model (LRP on TorchScript): what the flags can do
        if unfit := module_problem(registry.get_explainer(name), params[name], model):
            raise ValueError(f"--method {name} cannot run on --model {args.model}: {unfit[0]}; use the eager model "
                             "(checkpoint folder or module:factory), or --method gradient or occlusion on this one")
    for name in methods:  # an occlusion patch larger than the images fails before the folder is made
        if problem := patch_problem(registry.get_explainer(name), params[name], tuple(ds.x.shape[2:]),
                                    f"--data {args.data}"):
            raise ValueError(f"{flag_of(args, name, 'patch')} {problem}")
        if isinstance(params[name].get("layer"), str):  # Grad-CAM's layer: named by its flag, with the model's
            check_layer(model, params[name]["layer"], flag_of(args, name, "layer"), f"--model {args.model}")
    explainers = {name: build_named(name, params[name], args, model, bounds) for name in methods}
    for name, explainer in explainers.items():  # a layer whose output Grad-CAM cannot use: before the folder is made
        if isinstance(explainer, GradCAM):
            explainer.check_layer(ds.x[:1].to(args.device), flag_of(args, name, "layer"))
    attacks = []
    if args.attack is not None:
        attack_entry(args.attack)
        if segmentation:
            raise ValueError("--attack explains classifier attacks; the data is a segmentation set")
        attacks.append(AttackConfig(name=args.attack, attack=args.attack, targets="none", params=attack_params(args)))
        if unfit := module_problem(attack_entry(args.attack), attacks[0].params, model):
            why, instead = unfit
            other = (f"; salmap attack {args.attack} {as_flags(instead)} or salmap evaluate --attack {args.attack}:"
                     + ",".join(f"{k}={v}" for k, v in instead.items()) + " run it on this model") if instead else ""
            raise ValueError(f"--attack {args.attack} cannot run on --model {args.model}: {why}; use the eager model "
                             "(checkpoint folder or module:factory), or another --attack (salmap explain runs it "
                             f"with its defaults and --eps only){other}")

    # Every batch of each method (and of the attack) is a unit of the evaluation pipeline's run
    # folder (plan -> execute -> store): a rerun with the same arguments and --out resumes.
    options = {k: getattr(args, k, None) for k in ("mean", "std", "output_key", "model_arg")}
    cfg = RunConfig(
        output=args.out, models=[ModelConfig(name=Path(args.model).name or args.model, path=args.model)],
        attacks=attacks, explanations=[ExplainConfig(name=n, explainer=n, params=params[n]) for n in methods],
        data=DataConfig(name=args.data, split=args.split, num=len(ds), select="first", image_size=args.image_size),
        name=f"salmap explain {json.dumps(options, sort_keys=True)}", seed=args.seed, batch_size=args.batch_size,
        device=args.device, figures=FigureConfig(samples=args.rows, enabled=False), report=False,
        explain=ExplainRun(target=args.target, region=args.region, rows=args.rows),
    )
    loaded = LoadedModel(args.model, model, meta, (bounds.low, bounds.high), task=ds.task)
    cfg.resources = Resources(ds, [loaded], args.device)
    outcome = evaluate(cfg, overwrite=bool(args.overwrite), progress=sys.stderr.isatty(), world=World(),
                       command="explain")
    the_plan, store = outcome.plan or prepare(cfg), RunStore(outcome.output, "explain")
    found = {name: method_rows(store, the_plan, i) for i, name in enumerate(methods)}
    shown = {name: stored_examples(store, the_plan, 0, i, "explain") for i, name in enumerate(methods)}
    x_shown = ds.x[: int(shown[methods[0]]["position"].numel())]
    k = x_shown.shape[0]
    n = len(ds)
    seconds = {name: sum(r["seconds"] for r in found[name]) for name in methods}
    rows = [{"method": name, "images": n, "seconds": seconds[name],
             "images_per_s": n / seconds[name] if seconds[name] > 0 else float("inf")} for name in methods]
    out_dir = Path(args.out)
    pictures = [explanation_grid(
        x_shown, {name: v["heat"] for name, v in shown.items()}, out_dir / "explain.png",
        labels=None if segmentation else ds.y[:k], preds=None if segmentation else shown[methods[0]]["pred"],
        class_names=ds.class_names, rows=args.rows, bounds=bounds, title=f"{args.model}: {', '.join(methods)}",
    )]
    payload: dict[str, Any] = {
        "model": args.model, "data": args.data, "split": args.split, "images": n, "target": args.target,
        "region": args.region,
        "methods": {name: {"settings": repr(explainers[name]), "seconds": seconds[name],
                           "samples": [r["map"] for r in found[name]]} for name in methods},
    }
    if attacks:
        attacked = read_results(outcome.output)
        attack = build(the_plan, the_plan.units[0], loaded)
        before = torch.tensor([r["pred_before"] for r in attacked])
        after = torch.tensor([r["pred_after"] for r in attacked])
        pictures.append(attack_grid(
            x_shown, stored_examples(store, the_plan, 0, 0)["x_adv"][:k], {name: v["heat"] for name, v in shown.items()},
            {name: v["after"] for name, v in shown.items()}, out_dir / "attack.png", before[:k], after[:k],
            ds.class_names, rows=args.rows, bounds=bounds, title=f"{args.attack}: {attack!r}",
        ))
        payload["attack"] = {
            "name": args.attack, "settings": repr(attack),
            "summary": legacy_summary((outcome.summary or {})["results"][0], attacked),
            "pred_before": before, "pred_after": after,
            "methods": {name: {"samples": [r["after"] for r in found[name]],
                               "before_vs_after": [r["before_vs_after"] for r in found[name]]} for name in methods},
        }
    payload["seconds"] = time.perf_counter() - start
    write_json(out_dir / "summary.json", payload)
    print_table(rows, ["method", "images", "seconds", "images_per_s"])
    again = f" ({outcome.resumed} units resumed from an earlier run, {outcome.computed} computed)" \
        if outcome.resumed else ""
    print(f"summary written{again} to {out_dir / 'summary.json'}; pictures: {', '.join(str(p) for p in pictures)}")
    return 0


def method_rows(store: RunStore, the_plan: Plan, method: int) -> list[dict[str, Any]]:
    """The per-sample rows of one method's explanation units, in sample order."""
    return [r for u in the_plan.units if u.kind == "explain" and u.attack == method for r in store.read_unit(u.key)]


__all__ = ["attack_entry", "build_explainer", "choose_target", "parse_methods", "parse_region", "run"]
