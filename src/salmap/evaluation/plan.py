"""The plan of a run: which samples, which targets, and the ordered list of units.

A *unit* is one batch of samples ``[start, stop)`` (positions in the run's selection) of
one attack or one explainer on one model. It carries everything its result depends on:
its seed (derived from the run's seed and the unit's identity, never from what ran
before it), its samples and, for targeted attacks, its targets. So a unit computes the
same rows in any process, in any order, after any crash: resume and ``torchrun``
sharding give the rows of an uninterrupted single-process run.

Explanations are units too: one per model and explainer, over the samples the figures show;
with ``salmap explain``'s settings (:class:`~salmap.evaluation.settings.ExplainRun`) one per
model, explainer and batch, over every sample, and with an attack each explains the
adversarial examples of its batch's attack unit too (:meth:`Plan.paired`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from salmap import data as datasets
from salmap import registry
from salmap.evaluation.identity import model_hash
from salmap.evaluation.resources import Resources, load_split
from salmap.evaluation.settings import RunConfig
from salmap.targets import random_targets


def derive_seed(seed: int, *parts: object) -> int:
    """A seed for one piece of work from the run's seed and the piece's identity."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


@dataclass(frozen=True)
class Unit:
    """One batch ``[start, stop)`` of selected samples, one attack (or explainer) on one model."""

    model: int
    attack: int
    batch: int
    start: int
    stop: int
    kind: str = "attack"  # or "explain": then ``attack`` indexes ``cfg.explanations``
    seed: int = 0

    @property
    def key(self) -> str:
        letter = "a" if self.kind == "attack" else "e"
        return f"m{self.model:03d}-{letter}{self.attack:03d}-b{self.batch:06d}"

    @property
    def positions(self) -> Tensor:
        return torch.arange(self.start, self.stop)


@dataclass
class Plan:
    """The run's inputs fixed before any work: samples, targets, figure samples, units."""

    cfg: RunConfig
    dataset: datasets.Dataset
    fingerprint: str
    units: list[Unit]
    #: per attack: the targets of every selected sample for ``random`` and ``next`` (else None)
    targets: list[Tensor | None]
    #: positions (in the selection) of the samples the figures show
    figure_indices: list[int]
    #: the dataset index of every selected sample (rows report these; units count positions)
    indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shown(self) -> list[int]:
        """Positions of the samples of the adversarial grids and explanation overlays."""
        return [i for i in self.figure_indices if i < self.cfg.figures.samples]

    def task(self, attack: int) -> str:
        """``segmentation`` for an attack on segmenters only, else ``classification``."""
        tasks = registry.get_attack(self.cfg.attacks[attack].attack).tasks
        return "classification" if "classification" in tasks else "segmentation"

    def attack_units(self) -> list[Unit]:
        return [u for u in self.units if u.kind == "attack"]

    def paired(self, unit: Unit) -> Unit | None:
        """The attack unit whose adversarial examples an explanation unit of ``salmap explain``
        also explains (its model and batch, the run's first attack), or None."""
        if unit.kind != "explain" or self.cfg.explain is None or not self.cfg.attacks:
            return None
        return next(u for u in self.units if u.kind == "attack" and u.model == unit.model and u.attack == 0
                    and u.batch == unit.batch)


def select(cfg: RunConfig, ds: datasets.Dataset) -> tuple[datasets.Dataset, Tensor]:
    """The run's samples (a seeded random choice or the first ``num``) and their dataset indices."""
    if cfg.data.num is not None and cfg.data.num > len(ds):
        raise ValueError(f"data.num asks for {cfg.data.num} samples but {cfg.data.name} holds only {len(ds)}")
    n = len(ds) if cfg.data.num is None else cfg.data.num
    if cfg.data.select == "random":
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "data") % (2**63))
        indices = torch.randperm(len(ds), generator=gen)[:n]
    else:
        indices = torch.arange(n)
    return ds.select(indices), indices  # a streamed folder stays undecoded: units decode their own batches


def units_of(cfg: RunConfig, samples: int) -> list[Unit]:
    """Every unit of the run, in the order of the merged results (explanations last)."""
    units = []
    for m in range(len(cfg.models)):
        for a in range(len(cfg.attacks)):
            for b, start in enumerate(range(0, samples, cfg.batch_size)):
                unit = Unit(m, a, b, start, min(start + cfg.batch_size, samples))
                units.append(_seeded(unit, cfg.seed))
    if cfg.explain is not None:  # salmap explain: every sample, batch by batch
        for m in range(len(cfg.models)):
            for e in range(len(cfg.explanations)):
                for b, start in enumerate(range(0, samples, cfg.batch_size)):
                    units.append(_seeded(Unit(m, e, b, start, min(start + cfg.batch_size, samples), kind="explain"),
                                         cfg.seed))
        return units
    shown = min(cfg.figures.samples, samples)
    if shown:
        for m in range(len(cfg.models)):
            for e in range(len(cfg.explanations)):
                units.append(_seeded(Unit(m, e, 0, 0, shown, kind="explain"), cfg.seed))
    return units


def _seeded(unit: Unit, seed: int) -> Unit:
    return Unit(unit.model, unit.attack, unit.batch, unit.start, unit.stop, unit.kind,
                derive_seed(seed, "unit", unit.key))


def _opened(resources: Resources | None, i: int) -> torch.nn.Module | None:
    """The module of the run's ``i``-th model when it is open (a ``module:factory``'s is identified by it)."""
    loaded = resources.models[i] if resources is not None and i < len(resources.models) else None
    return loaded.module if loaded is not None else None


def plan(cfg: RunConfig, resources: Resources | None = None) -> Plan:
    """Fix the samples, the targets, the figure samples and the units; fingerprint the run.

    ``resources`` are the models and dataset opened during validation (the dataset split
    is loaded here when none are given); nothing here runs a model. A ``module:factory`` model
    is identified in the fingerprint by the model it built when ``resources`` holds it opened
    (:func:`~salmap.evaluation.identity.model_hash`), else by its name only.
    """
    source = (resources.dataset if resources is not None
              else load_split(cfg.data.name, cfg.data.split, cfg.data.image_size, cfg.data.channels))
    ds, indices = select(cfg, source)
    targets: list[Tensor | None] = []
    for attack in cfg.attacks:
        if attack.targets == "random":
            targets.append(random_targets(ds.y, ds.num_classes, seed=derive_seed(cfg.seed, "targets", attack.name)))
        elif attack.targets == "next":
            targets.append((ds.y + 1) % ds.num_classes)
        else:
            targets.append(None)
    shown = list(range(min(cfg.figures.samples, len(ds))))
    if cfg.explain is not None:  # the explanation units explain every attacked sample: keep them all
        shown = list(range(len(ds)))
    if any(a.targets == "all" for a in cfg.attacks):
        # The source-target grid shows the first sample of every class.
        for c in range(ds.num_classes):
            hits = torch.nonzero(ds.y == c).flatten()
            if hits.numel():
                shown.append(int(hits[0]))
    extra = {
        "models": [model_hash(m.path, _opened(resources, i)) for i, m in enumerate(cfg.models)],
        "data": ds.digest(),
        "indices": hashlib.sha256(indices.numpy().tobytes()).hexdigest()[:16],
    }
    return Plan(cfg, ds, cfg.fingerprint(extra), units_of(cfg, len(ds)), targets, sorted(set(shown)), indices, extra)


__all__ = ["Plan", "Unit", "derive_seed", "model_hash", "plan", "select", "units_of"]
