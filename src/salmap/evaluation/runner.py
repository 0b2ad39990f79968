"""The evaluation runner: batches of attacks on models, resumable after any crash, shardable.

The work of a run is an ordered list of *units*: one batch of samples, one attack, one
model. Each finished unit is written to its own file under ``batches/`` atomically
(written to a temporary name, flushed to disk, then renamed), and that file is the only
record that the unit is done. So a run killed at any moment (even ``kill -9``) and
started again computes exactly the missing units: none twice, no row lost or doubled,
and a half-written temporary file is ignored and removed. Every unit takes its
randomness from the run's seed and its own position, never from what ran before it,
so the merged results equal those of an uninterrupted run (only the timings differ).

Output folder
-------------
``run.json``
    the validated run description and its fingerprint; a folder holding a different
    run is refused unless ``overwrite`` is given.
``batches/<unit>.jsonl``
    the rows of one unit; ``batches/<unit>.examples.safetensors``: the adversarial
    images of the samples shown in the figures.
``results.jsonl``
    all rows in order (models, then attacks, then samples), written when every unit is done.
``summary.json``
    the figures per model and attack (schema below), ``figures/*.png`` and ``report.html``.

Row schema (``results.jsonl``, one JSON object a line)
------------------------------------------------------
``model``, ``defense`` (the model's defense label or null), ``attack`` (the attack's
name in the run), ``index`` (the sample's position in the dataset split), ``label``
(true class), ``target`` (target class, null when untargeted), ``success``, ``l0``,
``l2``, ``linf`` (distortion of the adversarial input), ``iterations``, ``seconds``
(the unit's attack time divided by its rows), ``pred_before``, ``pred_after``.
Segmentation attacks write ``label``, ``pred_before`` and ``pred_after`` as null,
``target`` as the goal (``hide`` or ``add``), and add the attack's per-sample extras
(``pixel_accuracy``, ``pixel_accuracy_before``, ...).

Summary schema (``summary.json``, ``schema_version`` = :data:`SCHEMA_VERSION`)
-----------------------------------------------------------------------------
``schema_version`` (int), ``name``, ``fingerprint``, ``samples`` (dataset samples
evaluated), ``data`` (name, split, num), ``models`` (list of ``{name, path, defense,
clean_accuracy}``), ``results`` (one entry per model and attack: ``model``, ``defense``,
``attack``, ``kind``, ``targets``, ``params``, ``rows``, ``samples``, ``clean_accuracy``,
``adversarial_accuracy`` (rows whose adversarial prediction is the true class),
``success_rate``, ``l0_mean``, ``l0_median``, ``l0_fraction_mean``, ``l2_mean``,
``l2_median``, ``linf_mean``, ``linf_median`` (distortions over the *successful* rows,
null when none), ``iterations_mean``, ``seconds`` (attack compute time),
``throughput`` (rows per second of compute), and ``<extra>_mean`` for each attack-specific
row field), ``explanations`` (list of ``{model,
explainer, samples, seconds, figure}``), ``figures`` (list of ``{title, file}``),
``timings`` (``wall_seconds`` of the last invocation, ``compute_seconds``,
``units``, ``units_resumed``, ``processes``), ``versions`` (python, torch, numpy, salmap),
``settings`` (the run description). Non-finite numbers are written as null.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from salmap import data as datasets
from salmap import models as zoo
from salmap import registry
from salmap.attacks.base import Attack
from salmap.evaluation.config import AttackConfig, RunConfig, load_split
from salmap.evaluation.distributed import World, from_environment
from salmap.evaluation.store import (
    BATCHES,
    FIGURES,
    REPORT,
    RESULTS,
    RUN_FILE,
    SCHEMA_VERSION,
    SUMMARY,
    RunStore,
    atomic_write,
    clean_json,
    read_results,
    write_json,
)
from salmap.gradients import frozen, predict
from salmap.targets import (
    all_other_targets,
    already_reached,
    next_positions,
    random_targets,
    segmentation_goal,
)

log = logging.getLogger(__name__)

#: what the runner owns in an output folder (removed by ``overwrite`` for a run salmap recognises)
OWNED = (RUN_FILE, BATCHES, RESULTS, SUMMARY, REPORT, FIGURES)
ROW_FIELDS = ("model", "defense", "attack", "index", "label", "target", "success", "l0", "l2", "linf",
              "iterations", "seconds", "pred_before", "pred_after")


@dataclass(frozen=True)
class Unit:
    """One batch of samples ``[start, stop)`` of one attack on one model."""

    model: int
    attack: int
    batch: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"m{self.model:03d}-a{self.attack:03d}-b{self.batch:06d}"


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one piece of work from the run's seed and the piece's identity."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


def plan(cfg: RunConfig, samples: int) -> list[Unit]:
    """Every unit of the run, in the order of the merged results."""
    units = []
    for m in range(len(cfg.models)):
        for a in range(len(cfg.attacks)):
            for b, start in enumerate(range(0, samples, cfg.batch_size)):
                units.append(Unit(m, a, b, start, min(start + cfg.batch_size, samples)))
    return units


def versions() -> dict[str, str]:
    import numpy

    import salmap

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "salmap": salmap.__version__, "platform": platform.platform()}


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _model_hash(source: str) -> str:
    """A hash of a model's files, so that a retrained checkpoint counts as a different run."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return hashlib.sha256("".join(_file_hash(p) for p in files).encode()).hexdigest()[:16]
    if path.is_file():
        return _file_hash(path)
    return source


@dataclass
class Prepared:
    """The run's inputs, loaded once: the dataset subset, per-attack targets, figure samples."""

    cfg: RunConfig
    dataset: datasets.Dataset
    fingerprint: str
    units: list[Unit]
    targets: list[Tensor | None]
    figure_indices: list[int]
    #: the dataset index of every selected sample (rows report these; units count positions)
    indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(cfg: RunConfig) -> Prepared:
    """Load the data, fix the targets and the samples the figures show, fingerprint the run."""
    ds = load_split(cfg.data.name, cfg.data.split)
    if cfg.data.num is not None and cfg.data.num > len(ds):
        raise ValueError(f"data.num asks for {cfg.data.num} samples but {cfg.data.name} holds only {len(ds)}")
    n = len(ds) if cfg.data.num is None else cfg.data.num
    if cfg.data.select == "random":
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "data") % (2**63))
        indices = torch.randperm(len(ds), generator=gen)[:n]
    else:
        indices = torch.arange(n)
    ds = datasets.Dataset(ds.x[indices], ds.y[indices], ds.class_names, ds.name, ds.task, ds.info)
    targets: list[Tensor | None] = []
    for attack in cfg.attacks:
        if attack.targets == "random":
            targets.append(random_targets(ds.y, ds.num_classes, seed=derive_seed(cfg.seed, "targets", attack.name)))
        elif attack.targets == "next":
            targets.append((ds.y + 1) % ds.num_classes)
        else:
            targets.append(None)
    shown = list(range(min(cfg.figures.samples, len(ds))))
    if any(a.targets == "all" for a in cfg.attacks):
        # The source-target grid shows the first sample of every class.
        for c in range(ds.num_classes):
            hits = torch.nonzero(ds.y == c).flatten()
            if hits.numel():
                shown.append(int(hits[0]))
    extra = {
        "models": [_model_hash(m.path) for m in cfg.models],
        "data": hashlib.sha256(ds.x.numpy().tobytes() + ds.y.numpy().tobytes()).hexdigest()[:16],
    }
    extra["indices"] = hashlib.sha256(indices.numpy().tobytes()).hexdigest()[:16]
    return Prepared(cfg, ds, cfg.fingerprint(extra), plan(cfg, len(ds)), targets, sorted(set(shown)), indices, extra)


def load_model(path: str, device: str) -> tuple[nn.Module, tuple[float, float]]:
    model, meta = zoo.load_with_meta(path)
    bounds = meta.get("bounds") or (0.0, 1.0)
    return model.to(device).eval(), (float(bounds[0]), float(bounds[1]))


def build_attack(attack: AttackConfig, model: nn.Module, bounds: tuple[float, float], seed: int) -> Attack:
    """The attack object of a run entry; a ``seed`` parameter defaults to one derived from the run's."""
    entry = registry.get_attack(attack.attack)
    params = dict(attack.params)
    if "seed" in entry.param_map and "seed" not in params:
        params["seed"] = derive_seed(seed, "attack", attack.name) % (2**31)
    built: Attack = entry.build(model, bounds=bounds, **params)
    return built


def run_unit(prep: Prepared, unit: Unit, attack: Attack, device: str) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Attack one batch; return its rows and the adversarial images of the figure samples."""
    cfg, ds = prep.cfg, prep.dataset
    spec = cfg.attacks[unit.attack]
    model_cfg = cfg.models[unit.model]
    x = ds.x[unit.start : unit.stop].to(device)
    y = ds.y[unit.start : unit.stop].to(device)
    position = torch.arange(unit.start, unit.stop)
    torch.manual_seed(derive_seed(cfg.seed, "unit", unit.key))  # for attacks drawing from the global RNG
    target = prep.targets[unit.attack]
    if "classification" not in registry.get_attack(spec.attack).tasks:
        return _segmentation_unit(prep, unit, attack, device)
    goals: Tensor | None = None
    if spec.targets == "all":
        x, y, goals = all_other_targets(x, y, ds.num_classes)
        position = position.repeat_interleave(ds.num_classes - 1)
    elif target is not None:
        goals = target[unit.start : unit.stop].to(device)
    index = prep.indices[position]
    res, seconds = attack_batch(attack, x, y, goals)
    y = y.cpu()
    per_row = seconds / max(int(y.shape[0]), 1)
    rows = [
        {
            "model": model_cfg.name, "defense": model_cfg.defense, "attack": spec.name, "index": int(index[i]),
            "label": int(y[i]), "target": None if goals is None else int(goals[i]),
            "success": bool(res["success"][i]), "l0": float(res["l0"][i]), "l2": float(res["l2"][i]),
            "linf": float(res["linf"][i]), "iterations": int(res["iterations"][i]), "seconds": per_row,
            "pred_before": int(res["pred_before"][i]), "pred_after": int(res["pred_after"][i]),
        }
        for i in range(int(y.shape[0]))
    ]
    keep = torch.isin(position, torch.tensor(prep.figure_indices, dtype=torch.long))
    examples = {}
    if bool(keep.any()):
        examples = {
            "x_adv": res["x_adv"][keep].contiguous(),
            "position": position[keep].contiguous(),
            "target": (goals.cpu()[keep] if goals is not None else torch.full((int(keep.sum()),), -1)).contiguous(),
        }
    return rows, examples


def segmentation_goals(model: Any, ds: datasets.Dataset, mode: str, position: Tensor, device: str) -> Tensor:
    """Target masks of a segmentation attack for the selected samples at ``position``
    (see :mod:`salmap.targets`: edits of the clean predicted masks; ``add`` takes the
    objects of the next selected sample, wrapping: the same for any batching)."""
    from salmap.attacks.jsma_seg import predict_masks

    nxt = next_positions(position, len(ds))
    both = predict_masks(model, ds.x[torch.cat([position, nxt])].to(device)).cpu()
    masks, next_masks = both[: position.numel()], both[position.numel() :]
    return segmentation_goal(mode, masks, next_masks, max(ds.num_classes, 2))


def _segmentation_unit(prep: Prepared, unit: Unit, attack: Attack, device: str,
                       ) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """A unit of a segmentation attack: rows carry pixel accuracies instead of class predictions."""
    cfg, ds = prep.cfg, prep.dataset
    spec, model_cfg = cfg.attacks[unit.attack], cfg.models[unit.model]
    position = torch.arange(unit.start, unit.stop)
    x = ds.x[unit.start : unit.stop].to(device)
    goals = segmentation_goals(attack.model, ds, spec.targets, position, device)
    torch.manual_seed(derive_seed(cfg.seed, "unit", unit.key))
    result = attack(x, target=goals.to(device)).to("cpu")
    per_row = result.seconds / max(len(result), 1)
    rows = []
    for i in range(len(result)):
        row: dict[str, Any] = {
            "model": model_cfg.name, "defense": model_cfg.defense, "attack": spec.name,
            "index": int(prep.indices[position[i]]), "label": None, "target": spec.targets,
            "success": bool(result.success[i]), "l0": float(result.l0[i]), "l2": float(result.l2[i]),
            "linf": float(result.linf[i]), "iterations": int(result.iterations[i]), "seconds": per_row,
            "pred_before": None, "pred_after": None,
        }
        row.update({k: float(v[i]) for k, v in sorted(result.extra.items()) if v.dim() == 1})
        rows.append(row)
    keep = torch.isin(position, torch.tensor(prep.figure_indices, dtype=torch.long))
    examples = {}
    if bool(keep.any()):
        examples = {"x_adv": result.x_adv[keep].contiguous(), "position": position[keep].contiguous(),
                    "target": torch.full((int(keep.sum()),), -1)}
    return rows, examples


RESULT_FIELDS = ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after")


def attack_batch(attack: Attack, x: Tensor, y: Tensor, goals: Tensor | None) -> tuple[dict[str, Tensor], float]:
    """Run ``attack`` on a batch (untargeted when ``goals`` is None); per-sample tensors on the CPU.

    A targeted sample the model already assigns to its target is not attacked (some
    attacks, JSMA among them, refuse it): its row records success with no perturbation
    and no iterations, as an untargeted attack does for a sample that is already misclassified.
    """
    start = time.perf_counter()
    if goals is None:
        result = attack(x, y=y).to("cpu")
        return {f: getattr(result, f) for f in RESULT_FIELDS}, result.seconds
    with frozen(attack.model):
        before = predict(attack.model, x).argmax(dim=1)
    todo = torch.nonzero(~already_reached(before, goals)).flatten()
    before = before.cpu()
    res = {
        "x_adv": x.detach().cpu().clone(), "success": torch.ones(x.shape[0], dtype=torch.bool),
        "l0": torch.zeros(x.shape[0]), "l2": torch.zeros(x.shape[0]), "linf": torch.zeros(x.shape[0]),
        "iterations": torch.zeros(x.shape[0], dtype=torch.long), "pred_before": before, "pred_after": before.clone(),
    }
    if todo.numel():
        result = attack(x[todo], target=goals[todo]).to("cpu")
        for f in RESULT_FIELDS:
            res[f][todo.cpu()] = getattr(result, f).to(res[f].dtype)
    return res, time.perf_counter() - start


@dataclass
class Outcome:
    """What :func:`evaluate` hands back: where things are and the summary."""

    output: Path
    summary: dict[str, Any] | None
    computed: int
    resumed: int


def evaluate(cfg: RunConfig, overwrite: bool = False, progress: bool = True, world: World | None = None) -> Outcome:
    """Run (or resume) an evaluation; under ``torchrun`` the units are shared among the ranks.

    Rank 0 claims the output folder, every rank computes its shard of the pending units,
    and rank 0 merges them into ``results.jsonl``, ``summary.json``, figures and the report.
    Returns the outcome (``summary`` is None on ranks other than 0).
    """
    start = time.perf_counter()
    own_world = world is None
    device = cfg.device
    if world is None:
        world, device = from_environment(cfg.device)
    try:
        return _evaluate(cfg, overwrite, progress, world, device, start)
    finally:
        if own_world:
            world.close()


def _evaluate(cfg: RunConfig, overwrite: bool, progress: bool, world: World, device: str, start: float) -> Outcome:
    prep = prepare(cfg)
    out = Path(cfg.output)
    store = RunStore(out)
    claim: tuple[bool, str | None] = (False, None)
    if world.is_main:
        try:
            store.lock()
            claim = (store.claim(prep.fingerprint, cfg.to_dict(), overwrite), None)
        except (ValueError, OSError) as err:
            store.unlock()
            claim = (False, str(err))
    resumed_flag, error = world.broadcast(claim)
    if error:
        raise ValueError(error)
    try:
        return _run_claimed(prep, store, world, device, start, progress, bool(resumed_flag))
    finally:
        store.unlock()


def _run_claimed(prep: Prepared, store: RunStore, world: World, device: str, start: float, progress: bool,
                 resumed_flag: bool) -> Outcome:
    out = store.out
    done = store.done([u.key for u in prep.units])
    world.barrier()  # every rank has listed the finished units before any rank adds to them
    pending = [u for u in prep.units if u.key not in done]
    mine = world.shard(pending)
    if resumed_flag and world.is_main:
        log.info("resuming %s: %d of %d units already done", out, len(done), len(prep.units))
    failure = None
    try:
        _compute(prep, mine, store, device, progress and world.is_main)
    except Exception as err:  # reported to every rank so that none waits forever at the merge
        failure = f"rank {world.rank}: {type(err).__name__}: {err}"
        if world.size == 1:
            raise
    failures = [f for f in world.gather(failure) if f]
    if failures:
        raise RuntimeError("evaluation failed on " + "; ".join(failures))
    summary = None
    if world.is_main:
        summary = finalize(prep, out, start, len(done), world.size, progress)
    world.barrier()
    return Outcome(out, summary, len(mine), len(done))


def _compute(prep: Prepared, units: list[Unit], store: RunStore, device: str, progress: bool) -> None:
    bar = tqdm(total=sum(u.stop - u.start for u in units), desc="evaluate", unit="img", disable=not progress)
    try:
        for m in sorted({u.model for u in units}):
            model, bounds = load_model(prep.cfg.models[m].path, device)
            attacks: dict[int, Attack] = {}
            for unit in (u for u in units if u.model == m):
                if unit.attack not in attacks:
                    attacks[unit.attack] = build_attack(prep.cfg.attacks[unit.attack], model, bounds, prep.cfg.seed)
                bar.set_postfix_str(f"{prep.cfg.models[m].name} / {prep.cfg.attacks[unit.attack].name}", refresh=False)
                rows, examples = run_unit(prep, unit, attacks[unit.attack], device)
                store.write_unit(unit.key, rows, examples)
                bar.update(unit.stop - unit.start)
            del model, attacks
    finally:
        bar.close()


def merge(prep: Prepared, out: Path) -> list[dict[str, Any]]:
    """Join every unit's rows in plan order into ``results.jsonl`` (checking each unit is whole)."""
    rows: list[dict[str, Any]] = []
    for unit in prep.units:
        part = RunStore(out).read_unit(unit.key)
        per_sample = prep.dataset.num_classes - 1 if prep.cfg.attacks[unit.attack].targets == "all" else 1
        if len(part) != (unit.stop - unit.start) * per_sample:
            raise RuntimeError(f"unit {unit.key} holds {len(part)} rows, expected {(unit.stop - unit.start) * per_sample}")
        rows.extend(part)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    atomic_write(out / RESULTS, text.encode())
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.median(values)


def summarize(prep: Prepared, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-model, per-attack figures of ``summary.json`` (see the module docstring)."""
    cfg = prep.cfg
    features = int(prep.dataset.x[0].numel())
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    results = []
    model_clean: dict[str, float] = {}
    for m in cfg.models:
        for a in cfg.attacks:
            g = groups.get((m.name, a.name), [])
            first = {r["index"]: r for r in reversed(g)}
            scored = [r for r in first.values() if r["label"] is not None]
            clean = statistics.fmean(r["pred_before"] == r["label"] for r in scored) if scored else float("nan")
            model_clean.setdefault(m.name, clean)
            won = [r for r in g if r["success"]]
            seconds = sum(r["seconds"] for r in g)
            entry: dict[str, Any] = {
                "model": m.name, "defense": m.defense, "attack": a.name, "kind": a.attack, "targets": a.targets,
                "params": a.params, "rows": len(g), "samples": len(first), "clean_accuracy": clean,
                "adversarial_accuracy": (statistics.fmean(r["pred_after"] == r["label"] for r in g)
                                         if g and scored else float("nan")),
                "success_rate": statistics.fmean(r["success"] for r in g) if g else float("nan"),
            }
            for key in ("l0", "l2", "linf"):
                entry[f"{key}_mean"], entry[f"{key}_median"] = _stats([r[key] for r in won])
            entry["l0_fraction_mean"] = entry["l0_mean"] / features
            entry["iterations_mean"] = statistics.fmean(r["iterations"] for r in g) if g else float("nan")
            for key in sorted({k for r in g for k in r} - set(ROW_FIELDS)):  # attack-specific (pixel accuracy)
                entry[f"{key}_mean"] = statistics.fmean(r[key] for r in g)
            entry["seconds"] = seconds
            entry["throughput"] = len(g) / seconds if seconds > 0 else float("nan")
            results.append(entry)
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name,
        "fingerprint": prep.fingerprint,
        "samples": len(prep.dataset),
        "data": {"name": cfg.data.name, "split": cfg.data.split, "num": cfg.data.num},
        "models": [{"name": m.name, "path": m.path, "defense": m.defense, "clean_accuracy": model_clean.get(m.name)}
                   for m in cfg.models],
        "results": results,
    }


def finalize(prep: Prepared, out: Path, start: float, resumed: int, processes: int, progress: bool) -> dict[str, Any]:
    """Merge the units, then write ``summary.json``, the figures and the report.

    ``start`` is the ``time.perf_counter()`` at which this invocation began.
    """
    rows = merge(prep, out)
    summary = summarize(prep, rows)
    summary["explanations"] = []
    summary["figures"] = []
    if prep.cfg.figures.enabled:
        from salmap.evaluation.figures import run_figures

        figs, explained = run_figures(prep, out, rows, progress)
        summary["figures"], summary["explanations"] = figs, explained
    summary["timings"] = {
        "wall_seconds": time.perf_counter() - start, "compute_seconds": sum(r["seconds"] for r in rows), "units": len(prep.units),
        "units_resumed": resumed, "processes": processes,
    }
    summary["versions"] = versions()
    summary["settings"] = prep.cfg.to_dict()
    write_json(out / SUMMARY, summary)
    if prep.cfg.report:
        from salmap.evaluation.report import write_report

        write_report(out / REPORT, clean_json(summary), out)
    return summary


def load_examples(out: Path, prep: Prepared, model: int, attack: int) -> dict[str, Tensor]:
    """The stored adversarial images of the figure samples for one model and attack."""
    parts = [load_file(str(p)) for u in prep.units if u.model == model and u.attack == attack
             for p in [out / BATCHES / f"{u.key}.examples.safetensors"] if p.is_file()]
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


__all__ = [
    "OWNED", "ROW_FIELDS", "SCHEMA_VERSION", "Outcome", "Prepared", "Unit", "derive_seed", "evaluate",
    "finalize", "plan", "prepare", "read_results", "run_unit", "summarize",
]
