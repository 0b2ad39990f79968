"""The cases of the property tests (``test_properties_attacks``, ``test_properties_explainers``,
``test_properties_every_entry``), generated from the registry, and the runs they check.

A newly registered attack or explainer (a plugin included) is picked up automatically:
the cases below are ``registry.attacks()`` and ``registry.explainers()`` crossed with the
targeting modes and tasks each entry declares. Small settings per entry keep the suite
fast; an entry not listed in ``SMALL`` runs with its own defaults.

Attacks: the input is unchanged, the output is within the bounds, the declared budget
(``budget={"linf": "eps"}`` in the decorator) is respected, a batch gives what the samples
give one by one, the model's training flags and ``requires_grad`` are restored, and the
result lives on the input's device. Explainers: the input is unchanged, the map has the
batch size and the input's spatial size, a batch gives what the samples give one by one,
the model state is restored and the map lives on the input's device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from salmap import registry

BOUNDS = (-1.0, 1.0)  # not (0, 1): an algorithm that assumes [0, 1] shows here
BATCH = 4
CLASSES = 3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: small settings per entry (budgets and iterations) so that every case runs in well under a second
SMALL: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.2},
    "pgd": {"eps": 0.2, "steps": 3},
    "bim": {"eps": 0.2, "steps": 3},
    "jsma": {"gamma": 0.2},
    "isi": {"max_iter": 4},
    "jsma-seg": {"gamma": 0.05, "max_iterations": 4},
    "occlusion": {"patch": 3, "stride": 2},
}


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, CLASSES),
    )


def segmenter() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


def inputs(device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return (torch.rand(BATCH, 1, 8, 8, generator=gen) * 2 - 1).to(device)


def model_state(model: nn.Module) -> list[tuple[bool, ...]]:
    return [(m.training,) for m in model.modules()] + [(p.requires_grad,) for p in model.parameters()]


def prepare(model: nn.Module) -> nn.Module:
    """A model in an unusual state: training mode, one parameter frozen by its owner."""
    model.train()
    next(model.parameters()).requires_grad_(False)
    return model


def task_of(entry: registry.Entry) -> str:
    return "classification" if "classification" in entry.tasks else entry.tasks[0]


@dataclass
class Run:
    """An algorithm called on a batch (``output``) and on each of its samples alone (``singles``),
    with the input, a copy of it from before, and the model's state before and after."""

    x: torch.Tensor
    x_copy: torch.Tensor
    output: Any
    singles: list[Any]
    state_before: list[tuple[bool, ...]]
    state_after: list[tuple[bool, ...]]
    entry: registry.Entry | None = None
    params: dict[str, Any] = field(default_factory=dict)


def part(t: torch.Tensor, rows: slice | None) -> torch.Tensor:
    """The rows ``rows`` of ``t``; all of ``t`` itself (not a view) for ``None``."""
    return t if rows is None else t[rows]


def on_batch_and_alone(model: nn.Module, x: torch.Tensor, call: Callable[[slice | None], Any]) -> Run:
    """``call(rows)`` runs the algorithm on ``part(x, rows)``: once on the whole batch, then sample by sample."""
    x_copy = x.clone()
    before = model_state(model)
    output = call(None)
    after = model_state(model)
    singles = [call(slice(i, i + 1)) for i in range(BATCH)]
    return Run(x, x_copy, output, singles, before, after)


# -- attacks --------------------------------------------------------------------------
def attack_cases() -> list[Any]:
    cases = []
    for name, entry in registry.attacks().items():
        modes = []
        if task_of(entry) == "segmentation":
            modes.append("targeted")
        else:
            modes += ["untargeted"] * entry.untargeted + ["targeted"] * entry.targeted
        cases += [pytest.param(name, mode, id=f"{name}-{mode}") for mode in modes]
    return cases


@functools.cache
def attack_run(name: str, mode: str, device: str = "cpu") -> Run:
    """The attack on a batch and on each sample alone (computed once per case)."""
    entry = registry.get_attack(name)
    model = prepare(segmenter() if task_of(entry) == "segmentation" else classifier()).to(device)
    params = SMALL.get(name, {})
    attack = entry.build(model, bounds=BOUNDS, **params)
    x = inputs(device)
    with torch.no_grad():
        pred = model.eval()(x).argmax(dim=1)
    prepare(model)
    if task_of(entry) == "segmentation":
        labels = {"target": torch.zeros_like(pred)}  # hide every object
    elif mode == "targeted":
        labels = {"target": (pred + 1) % CLASSES}
    else:
        labels = {"y": pred}
    run = on_batch_and_alone(model, x, lambda rows: attack(part(x, rows), **{k: part(v, rows) for k, v in labels.items()}))
    run.entry, run.params = entry, params
    return run


def explainer_cases() -> list[Any]:
    return [pytest.param(name, task, id=f"{name}-{task}")
            for name, entry in registry.explainers().items() for task in entry.tasks]


@functools.cache
def explain_run(name: str, task: str, device: str = "cpu") -> Run:
    """The explainer's maps of a batch and of each sample alone (computed once per case)."""
    entry = registry.get_explainer(name)
    model = prepare(segmenter() if task == "segmentation" else classifier()).to(device)
    explainer = entry.build(model, bounds=BOUNDS, **SMALL.get(name, {}))
    x = inputs(device)
    target = torch.tensor([0, 1, 2, 1], device=device) % (2 if task == "segmentation" else CLASSES)
    return on_batch_and_alone(model, x, lambda rows: explainer.attribute(part(x, rows), target=part(target, rows)))
