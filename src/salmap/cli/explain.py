"""salmap explain: explain a model's predictions; write heat-map PNGs and a JSON summary.

Methods: every registered explainer (salmap.registry, plugins included); several may be
given (--method gradient --method gradcam, or --method gradient,gradcam). Each method's
parameters are flags generated from the registry: --PARAM sets it for every chosen
method that has it, --METHOD-PARAM for one method only (e.g. --lrp-eps). With
--attack NAME the maps are also computed on the attacked inputs and drawn before and
after the attack.
"""

from __future__ import annotations

import argparse
import difflib
import time
from typing import Any

import torch
from torch import Tensor

from salmap import registry
from salmap.cli.common import (
    add_model_data_args,
    bounds_of,
    load_data,
    load_model,
    model_options,
    output_folder,
    print_table,
    write_json,
)
from salmap.cli.flags import add_entry_flags, listing, params_from_args
from salmap.explain import Explainer
from salmap.explain.targets import _majority_foreground
from salmap.gradients import forward
from salmap.plot import attack_grid, explanation_grid, to_heat
from salmap.progress import bar as progress_bar

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
    p.add_argument("--rows", type=int, default=8, help="samples drawn in the pictures (default 8)")
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


def build_explainer(name: str, args: argparse.Namespace, model: torch.nn.Module,
                    bounds: Any) -> Explainer:
    """The explainer ``name`` configured from the parsed flags."""
    entry = registry.get_explainer(name)
    params = params_from_args(entry, args, base={"seed": args.seed, "progress": True})
    explainer: Explainer = entry.build(model, bounds=bounds, **params)
    return explainer


def parse_region(text: str, shape: tuple[int, int]) -> Tensor:
    """``"Y0:Y1,X0:X1"`` to an ``(H, W)`` bool mask."""
    try:
        (y0, y1), (x0, x1) = ([int(v) for v in part.split(":")] for part in text.split(","))
    except ValueError:
        raise ValueError(f"--region must look like Y0:Y1,X0:X1 (e.g. 4:12,8:20), got {text!r}") from None
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(f"--region must be a non-empty box inside the output {shape}, got {text!r}")
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def choose_target(mode: str, y: Tensor, segmentation: bool) -> tuple[Any, Tensor | None]:
    """``(target, mask)`` for :meth:`Explainer.attribute` from ``--target`` (mask only for segmenters)."""
    if mode == "pred":
        return None, None
    if mode == "label":
        if not segmentation:
            return y, None
        classes = _majority_foreground(y)
        return classes, y == classes[:, None, None]
    try:
        return int(mode), None
    except ValueError:
        raise ValueError(f"--target must be pred, label or a class index, got {mode!r}") from None


def map_summary(maps: Tensor) -> list[dict[str, Any]]:
    """Per sample: min, max, mean, mean |.|, sum of the raw map, and where its heat peaks."""
    flat = maps.detach().flatten(1).double().cpu()
    heat = to_heat(maps) if maps.dim() == 4 else None
    rows = []
    for i in range(flat.shape[0]):
        row: dict[str, Any] = {
            "min": float(flat[i].min()), "max": float(flat[i].max()), "mean": float(flat[i].mean()),
            "mean_abs": float(flat[i].abs().mean()), "sum": float(flat[i].sum()),
        }
        if heat is not None:
            peak = int(heat[i].flatten().argmax())
            row["peak"] = [peak // heat.shape[2], peak % heat.shape[2]]
        rows.append(row)
    return rows


def compare_maps(before: Tensor, after: Tensor, top: float = 0.1) -> list[dict[str, float]]:
    """Per sample: Pearson correlation of the display heat maps and overlap (IoU) of their top ``top`` pixels."""
    hb, ha = to_heat(before).flatten(1).double(), to_heat(after).flatten(1).double()
    k = max(1, int(top * hb.shape[1]))
    out = []
    for b, a in zip(hb, ha, strict=True):
        bc, ac = b - b.mean(), a - a.mean()
        denom = float(bc.norm() * ac.norm())
        tb, ta = set(b.topk(k).indices.tolist()), set(a.topk(k).indices.tolist())
        out.append({"correlation": float((bc * ac).sum()) / denom if denom > 0 else float("nan"),
                    "top_iou": len(tb & ta) / len(tb | ta)})
    return out


def attack_entry(name: str) -> registry.Entry:
    """The untargeted classifier attack ``name``, or a ValueError listing them."""
    entries = {n: e for n, e in registry.attacks().items() if "classification" in e.tasks and e.untargeted}
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"--attack must be one of {list(entries)}, got {name!r}{hint}")
    return entries[name]


def build_attack(args: argparse.Namespace, model: torch.nn.Module, bounds: Any) -> Any:
    """``--attack`` (untargeted, on the true labels) with its default settings and ``--eps``."""
    entry = attack_entry(args.attack)
    params: dict[str, Any] = {"seed": args.seed} if "seed" in entry.param_map else {}
    if args.eps is not None:
        if "eps" not in entry.param_map:
            raise ValueError(f"--eps is not a parameter of attack {args.attack}")
        params["eps"] = args.eps
    return entry.build(model, bounds=bounds, **params)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    methods = parse_methods(args.method)
    model, meta = load_model(args.model, args.device, **model_options(args))
    bounds = bounds_of(meta)
    ds = load_data(args.data, args.split, args.num, image_size=args.image_size, model=model, meta=meta)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    y = ds.y.to(args.device)
    segmentation = ds.task == "segmentation"
    with torch.no_grad():
        out = forward(model, ds.x[0:1].to(args.device))
    if (out.dim() == 4) != segmentation and args.target == "label":
        raise ValueError(f"--target label needs labels that match the model's outputs; data {args.data!r} "
                         f"is {ds.task} and the model returned shape {tuple(out.shape)}")
    target, mask = choose_target(args.target, y, segmentation)
    if args.region is not None:
        if out.dim() != 4:
            raise ValueError("--region is for segmenters; the model returned (B, classes) logits")
        mask = parse_region(args.region, (int(out.shape[-2]), int(out.shape[-1]))).to(args.device)
    explainers = {name: build_explainer(name, args, model, bounds) for name in methods}
    attack = None
    if args.attack is not None:
        attack_entry(args.attack)
        if segmentation:
            raise ValueError("--attack explains classifier attacks; the data is a segmentation set")
        attack = build_attack(args, model, bounds)

    # One batch at a time (a folder: set is decoded per batch): per-sample figures are kept for
    # every image, inputs and maps only for the --rows drawn. Each batch of each method (and of
    # the attack) is a unit of the run folder: a rerun with the same arguments resumes.
    from salmap.cli.explain_units import attack_batch, fingerprint, method_batch
    from salmap.evaluation.store import RunStore

    summarize = {"map": map_summary, "compare": compare_maps}
    seconds = dict.fromkeys(explainers, 0.0)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in explainers}
    shown_x: list[Tensor] = []
    shown_maps: dict[str, list[Tensor]] = {name: [] for name in explainers}
    preds: list[Tensor] = []
    results: list[Any] = []
    shown_adv: list[Tensor] = []
    after_maps: dict[str, list[Tensor]] = {name: [] for name in explainers}
    after_samples: dict[str, list[dict[str, Any]]] = {name: [] for name in explainers}
    compared: dict[str, list[dict[str, float]]] = {name: [] for name in explainers}
    store = RunStore(args.out, "explain")
    store.lock()
    try:
        key, settings = fingerprint(args, ds.digest())
        store.claim(key, settings, bool(getattr(args, "overwrite", False)))
        computed = resumed = 0
        for b, lo in enumerate(progress_bar(range(0, len(ds), args.batch_size), desc="explain",
                                            unit="batch")):
            sl = slice(lo, lo + args.batch_size)
            xb = ds.x[sl].to(args.device)
            tb = target[sl] if isinstance(target, Tensor) else target
            mb = mask[sl] if mask is not None and mask.dim() == 3 else mask
            room = max(args.rows - lo, 0)
            shown_x.append(xb[:room].clone())
            with torch.no_grad():
                clean = forward(model, xb)
            preds.append(clean.argmax(dim=1))
            adv, adv_target = None, None
            if attack is not None:
                res, fresh = attack_batch(store, b, attack, xb, y[sl], clean)
                computed, resumed = computed + fresh, resumed + (not fresh)
                adv, adv_target = res.x_adv, tb if tb is not None else res.pred_before
                shown_adv.append(res.x_adv[:room].clone())
                # only the drawn rows are kept (one at least: the result's feature count reads it)
                res.x_adv = res.x_adv[: room if lo else max(room, 1)].clone()
                results.append(res)
            for i, (name, explainer) in enumerate(explainers.items()):
                rows_b, kept, fresh = method_batch(store, i, b, explainer, xb, tb, mb, adv, adv_target, room,
                                                   summarize)
                computed, resumed = computed + fresh, resumed + (not fresh)
                for row in rows_b:
                    seconds[name] += row.pop("seconds")
                    if adv is not None:
                        after_samples[name].append(row.pop("after"))
                        compared[name].append(row.pop("before_vs_after"))
                    samples[name].append(row)
                if "maps" in kept:
                    shown_maps[name].append(kept["maps"].to(args.device))
                if "after" in kept:
                    after_maps[name].append(kept["after"].to(args.device))
    finally:
        store.unlock()

    n = len(ds)
    rows = [{"method": name, "images": n, "seconds": seconds[name],
             "images_per_s": n / seconds[name] if seconds[name] > 0 else float("inf")} for name in explainers]
    summary = {name: {"settings": repr(e), "seconds": seconds[name], "samples": samples[name]}
               for name, e in explainers.items()}
    pred = torch.cat(preds)
    x_shown = torch.cat(shown_x)
    k = x_shown.shape[0]
    out_dir = output_folder(args.out)
    pictures = [explanation_grid(
        x_shown.cpu(), {name: torch.cat(v).cpu() for name, v in shown_maps.items()}, out_dir / "explain.png",
        labels=None if segmentation else y[:k].cpu(), preds=None if segmentation else pred[:k].cpu(),
        class_names=ds.class_names, rows=args.rows, bounds=bounds, title=f"{args.model}: {', '.join(methods)}",
    )]
    payload: dict[str, Any] = {
        "model": args.model, "data": args.data, "split": args.split, "images": n,
        "target": args.target, "region": args.region, "methods": summary,
    }
    if attack is not None:
        from salmap.attacks.base import AttackResult

        result = AttackResult.concat(results)
        pictures.append(attack_grid(
            x_shown.cpu(), torch.cat(shown_adv).cpu(), {name: torch.cat(v).cpu() for name, v in shown_maps.items()},
            {name: torch.cat(v).cpu() for name, v in after_maps.items()}, out_dir / "attack.png",
            result.pred_before[:k].cpu(), result.pred_after[:k].cpu(), ds.class_names, rows=args.rows, bounds=bounds,
            title=f"{args.attack}: {attack!r}",
        ))
        payload["attack"] = {
            "name": args.attack, "settings": repr(attack), "summary": result.summary(),
            "pred_before": result.pred_before, "pred_after": result.pred_after,
            "methods": {name: {"samples": after_samples[name], "before_vs_after": compared[name]}
                        for name in explainers},
        }
    payload["seconds"] = time.perf_counter() - start
    write_json(out_dir / "summary.json", payload)
    print_table(rows, ["method", "images", "seconds", "images_per_s"])
    again = f" ({resumed} units resumed from an earlier run, {computed} computed)" if resumed else ""
    print(f"summary written{again} to {out_dir / 'summary.json'}; pictures: {', '.join(str(p) for p in pictures)}")
    return 0
