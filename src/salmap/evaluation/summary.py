"""The figures of ``summary.json`` (schema version :data:`~salmap.evaluation.store.SCHEMA_VERSION`).

Every average says what it averages: ``l2_mean`` is over *all* rows (a failed row counts
with the distortion it reached), ``l2_mean_success`` over the successful rows only (null
when none); the same for ``l0``, ``l0_fraction``, ``linf`` and the medians. ``salmap
attack``, ``evaluate`` and ``defend`` use these names alike.

Summary schema
--------------
``schema_version``, ``name``, ``fingerprint``, ``samples`` (selected samples), ``data``
(name, split, num), ``robustness`` (per model, empty when the run has no attacks: ``robust_accuracy``, the accuracy under
the per-sample worst case of every attack of the run -- a sample counts only if the
clean prediction and every adversarial row of every attack are its true class, as
AutoAttack reports; ``attacks``, ``samples``), ``models`` (``{name, path, defense,
clean_accuracy, robust_accuracy}``), ``results`` (per model and attack: ``model``,
``defense``, ``attack``, ``kind``, ``targets``, ``params``, ``rows``, ``samples``,
``clean_accuracy``, ``adversarial_accuracy``, ``success_rate``, ``l0_mean``,
``l0_median``, ``l0_mean_success``, ``l0_median_success``, ``l0_fraction_mean``,
``l0_fraction_mean_success``, the same four for ``l2`` and ``linf``,
``iterations_mean``, ``seconds``, with a judge (``salmap defend``: the defended model judges
the examples) ``judge_clean_accuracy`` and ``judge_accuracy`` (its accuracy on the clean and the
adversarial inputs), ``throughput``, ``<extra>_mean`` for each
attack-specific row field, and with ``save_png`` ``png_success_rate`` and
``png_lost`` (successful rows no longer adversarial once rounded to 8 bits)),
``explanations`` (``{model, explainer, samples, seconds, figure}``), ``figures``
(``{title, file}``), ``timings``, ``versions``, ``settings``.

Version 1 (before): ``l0_mean``, ``l2_mean``, ``linf_mean`` and the medians were over
the successful rows; :func:`upgrade` reads a version-1 summary into the names of version 2.
"""

from __future__ import annotations

import statistics
from typing import Any

from salmap.evaluation.execute import JUDGE_FIELDS, ROW_FIELDS
from salmap.evaluation.plan import Plan
from salmap.evaluation.store import SCHEMA_VERSION

#: per-row fields that are not attack-specific extras
COMMON = frozenset(ROW_FIELDS) | frozenset(JUDGE_FIELDS) | {"success_png"}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def distortion_stats(rows: list[dict[str, Any]], features: int) -> dict[str, float]:
    """``{l0,l0_fraction,l2,linf}_{mean,median}`` over all rows and ``..._success`` over successful ones."""
    out: dict[str, float] = {}
    won = [r for r in rows if r["success"]]
    for key in ("l0", "l2", "linf"):
        every, good = [r[key] for r in rows], [r[key] for r in won]
        out[f"{key}_mean"], out[f"{key}_median"] = _mean(every), _median(every)
        out[f"{key}_mean_success"], out[f"{key}_median_success"] = _mean(good), _median(good)
    out["l0_fraction_mean"] = out["l0_mean"] / features
    out["l0_fraction_mean_success"] = out["l0_mean_success"] / features
    return out


def entry(plan: Plan, model: int, attack: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one model and attack."""
    m, a = plan.cfg.models[model], plan.cfg.attacks[attack]
    first = {r["index"]: r for r in reversed(rows)}
    scored = [r for r in first.values() if r["label"] is not None]
    seconds = sum(r["seconds"] for r in rows)
    found: dict[str, Any] = {
        "model": m.name, "defense": m.defense, "attack": a.name, "kind": a.attack, "targets": a.targets,
        "params": a.params, "rows": len(rows), "samples": len(first),
        "clean_accuracy": _mean([r["pred_before"] == r["label"] for r in scored]),
        "adversarial_accuracy": _mean([r["pred_after"] == r["label"] for r in rows]) if scored else float("nan"),
        "success_rate": _mean([r["success"] for r in rows]),
    }
    found.update(distortion_stats(rows, int(plan.dataset.x[0].numel())))
    found["iterations_mean"] = _mean([r["iterations"] for r in rows])
    judged = [r for r in rows if "judge_after" in r and r["label"] is not None]
    if judged:  # a judged model (salmap defend): the defended model's accuracy, clean and attacked
        found["judge_clean_accuracy"] = _mean([r["judge_before"] == r["label"]
                                               for r in {r["index"]: r for r in judged}.values()])
        found["judge_accuracy"] = _mean([r["judge_after"] == r["label"] for r in judged])
    for key in sorted({k for r in rows for k in r} - COMMON):  # attack-specific (pixel accuracy)
        found[f"{key}_mean"] = _mean([r[key] for r in rows])
    if any("success_png" in r for r in rows):
        found["png_success_rate"] = _mean([r["success_png"] for r in rows])
        found["png_lost"] = sum(1 for r in rows if r["success"] and not r["success_png"])
    found["seconds"] = seconds
    found["throughput"] = len(rows) / seconds if seconds > 0 else float("nan")
    return found


def robust_accuracy(rows: list[dict[str, Any]]) -> float:
    """Accuracy under the per-sample worst case over every row given (all attacks of one model).

    A sample is robust when it is classified correctly clean and after every attack row
    (every target of a targeted attack included). NaN without classifier rows.
    """
    robust: dict[int, bool] = {}
    for r in rows:
        if r["label"] is None:
            continue
        ok = r["pred_before"] == r["label"] and r["pred_after"] == r["label"]
        robust[r["index"]] = robust.get(r["index"], True) and ok
    return _mean([float(v) for v in robust.values()])


def summarize(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-model, per-attack figures of ``summary.json`` (see the module docstring)."""
    cfg = plan.cfg
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    results = [entry(plan, mi, ai, groups.get((m.name, a.name), []))
               for mi, m in enumerate(cfg.models) for ai, a in enumerate(cfg.attacks)]
    robustness, models = [], []
    for m in cfg.models:
        mine = [r for r in rows if r["model"] == m.name]
        clean = next((e["clean_accuracy"] for e in results if e["model"] == m.name), None)
        robust = robust_accuracy(mine)
        if cfg.attacks:  # a run that only explains has no robust accuracy
            robustness.append({"model": m.name, "defense": m.defense, "robust_accuracy": robust,
                           "clean_accuracy": clean, "attacks": [a.name for a in cfg.attacks],
                           "samples": len({r["index"] for r in mine})})
        models.append({"name": m.name, "path": m.path, "defense": m.defense, "clean_accuracy": clean,
                       "robust_accuracy": robust})
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "fingerprint": plan.fingerprint,
        "samples": len(plan.dataset),
        "data": {"name": cfg.data.name, "split": cfg.data.split, "num": cfg.data.num},
        "robustness": robustness,
        "models": models,
        "results": results,
    }


def upgrade(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary of any schema version in the names of the current one (version 1's
    distortion means and medians were over successful rows: they become ``..._success``)."""
    if summary.get("schema_version", 1) >= 2:
        return summary
    out = dict(summary, schema_version=SCHEMA_VERSION)
    results = []
    for e in summary.get("results", []):
        e = dict(e)
        for key in ("l0", "l2", "linf"):
            for stat in ("mean", "median"):
                if f"{key}_{stat}" in e:
                    e[f"{key}_{stat}_success"] = e.pop(f"{key}_{stat}")
        if "l0_fraction_mean" in e:
            e["l0_fraction_mean_success"] = e.pop("l0_fraction_mean")
        results.append(e)
    out["results"] = results
    return out


__all__ = ["distortion_stats", "entry", "robust_accuracy", "summarize", "upgrade"]
