"""``salmap explain``'s batches as units of a run folder: resume and folder lock.

Each batch of each method is one unit (``m000-eNNN-bNNNNNN`` in ``batches/``) and, with
``--attack``, each batch of the attack one more (``m000-a000-bNNNNNN``). A unit's rows file
is written last (:class:`salmap.evaluation.store.RunStore`), so a second run with the same
arguments and ``--out`` reads the finished units back and computes only the missing ones;
a folder holding a different run is refused unless ``--overwrite``. Maps are computed
through the execute step's :func:`salmap.evaluation.execute.attribute`, the attack through
:func:`salmap.evaluation.execute.run_attack`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

from torch import Tensor

from salmap.attacks.base import AttackResult
from salmap.evaluation.execute import attribute, run_attack
from salmap.evaluation.plan import model_hash
from salmap.evaluation.store import RunStore

#: the tensor fields of an AttackResult kept in an attack unit
RESULT_FIELDS = ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after", "labels")
#: flags that do not change the results (--rows does: the units keep the maps of the drawn rows)
NEUTRAL = frozenset({"out", "overwrite", "device", "debug", "func"})


def fingerprint(args: argparse.Namespace, data_digest: str) -> tuple[str, dict[str, Any]]:
    """``(fingerprint, settings)`` of an explain run: every flag that changes its maps, the model's
    file hash and the data's digest."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in NEUTRAL and not callable(v)}
    settings = json.loads(json.dumps(settings, default=str))
    extra = {"model": model_hash(str(args.model)), "data": data_digest}
    text = json.dumps({"settings": settings, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], settings


def method_key(method: int, batch: int) -> str:
    return f"m000-e{method:03d}-b{batch:06d}"


def attack_key(batch: int) -> str:
    return f"m000-a000-b{batch:06d}"


def attack_batch(store: RunStore, batch: int, attack: Any, x: Tensor, y: Tensor, clean: Tensor,
                 ) -> tuple[AttackResult, bool]:
    """The attack's result on one batch: read back when the unit is done, else run and committed.
    Returns ``(result, computed)``."""
    key = attack_key(batch)
    if store.done([key]):
        row = store.read_unit(key)[0]
        t = store.examples(key)
        fields: dict[str, Any] = {f: t[f].to(x.device) for f in RESULT_FIELDS}
        result = AttackResult(**fields, targeted=bool(row["targeted"]), seconds=float(row["seconds"]))
        return result, False
    result = run_attack(attack, x, y, None, clean).measure()  # while the whole batch is at hand
    store.write_unit(key, [{"samples": len(result), "seconds": result.seconds, "targeted": result.targeted}],
                     {f: getattr(result, f).detach() for f in RESULT_FIELDS})
    return result, True


def method_batch(store: RunStore, method: int, batch: int, explainer: Any, x: Tensor, target: Any,
                 mask: Tensor | None, adv: Tensor | None, adv_target: Any, keep: int,
                 summarize: Any) -> tuple[list[dict[str, Any]], dict[str, Tensor], bool]:
    """One method on one batch: ``(rows, kept tensors, computed)``.

    ``rows``: per sample ``summarize``'s figures, ``seconds`` (the unit's time shared by its
    samples) and, with an attack, ``after`` (figures of the map on the attacked input).
    Kept: the first ``keep`` maps (``maps``), their after-attack maps (``after``) and the
    full-batch heat maps needed to compare before and after (compared here, stored as rows).
    """
    key = method_key(method, batch)
    if store.done([key]):
        return store.read_unit(key), store.examples(key), False
    maps, seconds = attribute(explainer, x, target, mask)
    rows = summarize["map"](maps)
    kept = {"maps": maps[:keep].detach().cpu().float().contiguous()}
    if adv is not None:
        after, more = attribute(explainer, adv, adv_target, mask)
        seconds += more
        for row, a, c in zip(rows, summarize["map"](after), summarize["compare"](maps, after), strict=True):
            row["after"] = a
            row["before_vs_after"] = c
        kept["after"] = after[:keep].detach().cpu().float().contiguous()
    for row in rows:
        row["seconds"] = seconds / max(len(rows), 1)
    store.write_unit(key, rows, {k: v for k, v in kept.items() if v.shape[0]} or None)
    return rows, kept, True


__all__ = ["attack_batch", "attack_key", "fingerprint", "method_batch", "method_key"]
