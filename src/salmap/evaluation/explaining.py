"""Explanation units over every sample (``salmap explain``): targets, masks and per-sample figures.

An explanation unit of a run with :class:`~salmap.evaluation.settings.ExplainRun` settings
explains one batch of samples with one explainer: the class to explain (``pred``, ``label``
or a class index; for segmenters the summed score over a mask), one row per sample with the
figures of its map (:func:`map_summary`) and, when the run has an attack, the figures of the
map of the attacked input (explaining the same class as before) and how much the two agree
(:func:`compare_maps`). The maps of the first ``rows`` samples are kept for the pictures.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from salmap.explain.targets import _majority_foreground
from salmap.gradients import frozen, predict
from salmap.plot import to_heat


def patch_problem(entry: Any, params: dict[str, Any], spatial: tuple[int, ...], data: str) -> str | None:
    """Why an occlusion explainer's ``patch`` (``params``' or its default) cannot slide over inputs
    of ``spatial`` size from ``data`` -- a patch larger than them -- or None (other explainers too):
    found before a run's folder is claimed, not when the maps are computed."""
    from salmap.explain import Occlusion
    from salmap.explain import occlusion_windows as geometry

    if not (isinstance(entry.cls, type) and issubclass(entry.cls, Occlusion)) or not spatial:
        return None
    value = params.get("patch", entry.param_map["patch"].default)
    try:
        patch = geometry.per_dim("patch", geometry.sizes("patch", value), spatial)
    except ValueError as err:
        return str(err)
    if all(k <= n for k, n in zip(patch, spatial, strict=True)):
        return None
    size = "x".join(str(n) for n in spatial)
    return f"{value} is larger than the input ({size} images of {data}); occlusion's patch must fit in it"


def attribute(explainer: Any, x: Tensor, target: Any = None, mask: Tensor | None = None) -> tuple[Tensor, float]:
    """One batch of attribution maps (``explainer.attribute``) and the seconds it took.

    The one call through which explanations run (``salmap evaluate``'s and ``salmap explain``'s
    explanation units, :mod:`salmap.evaluation.execute`).
    """
    start = time.perf_counter()
    heat = explainer.attribute(x, target=target, mask=mask) if mask is not None else \
        explainer.attribute(x, target=target)
    return heat, time.perf_counter() - start


def explain_samples(explainer: Any, model: Any, x: Tensor, y: Tensor, positions: Tensor, segmentation: bool,
                    target_mode: str = "pred", region: str | None = None, rows: int = 8,
                    attacked: Tensor | None = None) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """One explanation unit over the samples ``x`` (labels ``y``, positions in the run's selection).

    Returns ``(rows, kept)``: per sample ``{"map": figures, "seconds"}`` (the unit's time shared
    by its samples) and, with ``attacked`` (the attacked inputs), ``"after"`` and
    ``"before_vs_after"``; kept for the pictures, the samples at positions below ``rows``:
    ``heat`` (and ``after``), ``pred`` (the clean prediction) and ``position``.
    """
    with frozen(model):
        clean = predict(model, x)  # once per unit: the region's shape, the class an attacked input is explained for
    target, mask = choose_target(target_mode, y, segmentation)
    if region is not None:
        mask = parse_region(region, (int(clean.shape[-2]), int(clean.shape[-1]))).to(x.device)
    maps, seconds = attribute(explainer, x, target, mask)
    found: list[dict[str, Any]] = [{"map": figures} for figures in map_summary(maps)]
    show = positions < rows
    kept = {"heat": maps[show].detach().cpu().float(), "pred": clean.argmax(dim=1)[show].cpu(),
            "position": positions[show].cpu()}
    if attacked is not None:
        after, more = attribute(explainer, attacked, target if target is not None else clean.argmax(dim=1), mask)
        seconds += more
        for row, figures, agree in zip(found, map_summary(after), compare_maps(maps, after), strict=True):
            row.update(after=figures, before_vs_after=agree)
        kept["after"] = after[show].detach().cpu().float()
    for row in found:
        row["seconds"] = seconds / max(len(found), 1)
    return found, kept


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


__all__ = ["attribute", "choose_target", "compare_maps", "explain_samples", "map_summary", "parse_region"]
