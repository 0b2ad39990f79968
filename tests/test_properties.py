"""Properties every registered attack and explainer must have, generated from the registry.

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
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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


@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_leaves_the_input_unchanged(name, mode):
    run = attack_run(name, mode)
    assert torch.equal(run.x, run.x_copy)
    assert run.output.x_adv.data_ptr() != run.x.data_ptr()


@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_output_is_within_the_bounds(name, mode):
    x_adv = attack_run(name, mode).output.x_adv
    assert x_adv.shape == (BATCH, 1, 8, 8) and torch.isfinite(x_adv).all()
    assert x_adv.min() >= BOUNDS[0] and x_adv.max() <= BOUNDS[1]


@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_respects_its_budget(name, mode):
    run = attack_run(name, mode)
    budget = run.entry.budget(run.params)
    if not budget:
        pytest.skip(f"{name} declares no budget")
    features = run.x[0].numel()
    for metric, limit in budget.items():
        value = getattr(run.output, metric)
        if metric == "l0_fraction":  # a whole number of features: floor(gamma * n)
            value, limit = run.output.l0, int(limit * features)
        assert (value <= limit + 1e-6).all(), (metric, value.tolist(), limit)
    if "linf" in budget:  # the reported distortion is the real one
        real = (run.output.x_adv - run.x).flatten(1).abs().amax(dim=1)
        torch.testing.assert_close(run.output.linf, real)


@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_batched_equals_one_by_one(name, mode):
    run = attack_run(name, mode)
    one_by_one = torch.cat([s.x_adv for s in run.singles])
    torch.testing.assert_close(run.output.x_adv, one_by_one, atol=1e-5, rtol=0)
    assert torch.equal(run.output.success, torch.cat([s.success for s in run.singles]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_result_follows_the_input_device(name, mode, device):
    result = attack_run(name, mode, device).output
    for attr in ("x_adv", "success", "l0", "l2", "linf", "iterations", "pred_before", "pred_after"):
        assert getattr(result, attr).device.type == device, attr
    assert result.x_adv.dtype == torch.float32


# -- explainers -----------------------------------------------------------------------
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


@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_leaves_the_input_unchanged(name, task):
    run = explain_run(name, task)
    assert torch.equal(run.x, run.x_copy)


@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_map_has_the_batch_and_the_input_size(name, task):
    maps = explain_run(name, task).output
    assert maps.shape[0] == BATCH and maps.shape[-2:] == (8, 8) and maps.dim() == 4
    assert maps.shape[1] == 1  # one input channel: one map channel
    assert torch.isfinite(maps).all() and not maps.requires_grad


@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_batched_equals_one_by_one(name, task):
    run = explain_run(name, task)
    torch.testing.assert_close(run.output, torch.cat(run.singles), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_map_follows_the_input_device(name, task, device):
    maps = explain_run(name, task, device).output
    assert maps.device.type == device and maps.dtype == torch.float32


# -- both ------------------------------------------------------------------------------
def every_case() -> list[Any]:
    return ([pytest.param(attack_run, *case.values, id=f"attack-{case.id}") for case in attack_cases()]
            + [pytest.param(explain_run, *case.values, id=f"explainer-{case.id}") for case in explainer_cases()])


@pytest.mark.parametrize("run_of, name, case", every_case())
def test_the_model_state_is_restored(run_of, name, case):
    run = run_of(name, case)
    assert run.state_after == run.state_before


def test_a_newly_registered_attack_is_picked_up(monkeypatch):
    from salmap.attacks.fgsm import FGSM

    class Twice(FGSM):
        """FGSM under another name (a stand-in for a new attack file)."""

    monkeypatch.setitem(registry._ENTRIES["attack"], "twice", None)
    registry.register_attack("twice", ranges={"eps": "[0, inf)"}, budget={"linf": "eps"})(Twice)
    ids = [case.id for case in attack_cases()]
    assert "twice-untargeted" in ids and "twice-targeted" in ids
    run = attack_run.__wrapped__("twice", "untargeted")  # not cached: the entry goes with the test
    assert run.entry.budget() == {"linf": 0.1} and (run.output.linf <= 0.1 + 1e-6).all()


def numeric_parameters() -> list[Any]:
    cases = []
    for kind, entries in (("attack", registry.attacks()), ("explainer", registry.explainers())):
        for name, entry in entries.items():
            for p in entry.params:
                number = isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
                if p.type in (int, float) and number and (p.type is int or float(np.float32(p.default)) == p.default):
                    cases.append(pytest.param(kind, name, p.name, id=f"{name}-{p.name}"))
    return cases


@pytest.mark.parametrize("kind, name, param", numeric_parameters())
def test_numeric_parameters_take_numpy_scalars(kind, name, param):
    # np.int64(40) from np.arange, np.float32(8 / 255) from an array of settings: numbers like any other
    entry = registry.get_attack(name) if kind == "attack" else registry.get_explainer(name)
    default = entry.param_map[param].default
    model = segmenter() if task_of(entry) == "segmentation" else classifier()
    scalar = np.int64(default) if isinstance(default, int) else np.float32(default)
    built = entry.cls(model, **{param: scalar})
    assert repr(built) == repr(entry.cls(model, **{param: default}))  # stored as Python numbers
    # a 0-d tensor (eps=torch.tensor(8 / 255)) is its number too
    as_tensor = torch.tensor(default, dtype=torch.int64 if isinstance(default, int) else torch.float32)
    assert repr(entry.cls(model, **{param: as_tensor})) == repr(built)
    if isinstance(default, int) and not isinstance(default, bool):  # an integer parameter still wants an integer
        with pytest.raises(ValueError, match=f"{param} must be (an integer|a positive int)"):
            entry.cls(model, **{param: torch.tensor(float(default) + 0.5)})


@pytest.mark.parametrize("name, mode", [
    case for case in attack_cases() if task_of(registry.get_attack(case.values[0])) == "classification"])
def test_a_classifier_with_one_score_is_refused(name, mode):
    # argmax of one score is always class 0: no attack could succeed, and success would read as robustness
    one = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    attack = registry.get_attack(name).build(one, bounds=BOUNDS, **SMALL.get(name, {}))
    labels = {"target" if mode == "targeted" else "y": torch.zeros(BATCH, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"model must return one score per class, at least 2, for \w+, got output of "
                                         r"shape \(4, 1\) \(a binary classifier's one logit z"):
        attack(inputs(), **labels)


@pytest.mark.parametrize("name, task", [case for case in explainer_cases() if case.values[1] == "classification"])
def test_explainer_names_an_input_the_model_cannot_take(name, task):
    # one image without its batch dimension, images of the wrong size: x's shape named, as by the attacks
    explainer = registry.get_explainer(name).build(classifier().eval(), bounds=BOUNDS, **SMALL.get(name, {}))
    x = inputs()
    for bad in (x[0], x[:, :, :6, :6]):
        shape = re.escape(str(tuple(bad.shape)))
        with pytest.raises(ValueError, match=rf"^the model cannot be run on x of shape {shape}: .* \(x must be a batch"):
            explainer.attribute(bad)


@pytest.mark.parametrize("name, mode", [
    case for case in attack_cases() if task_of(registry.get_attack(case.values[0])) == "classification"])
def test_a_classifier_returning_probabilities_is_warned_about(name, mode):
    # as AutoAttack's checks: a loss on softmax outputs saturates and the attack looks weaker than it is
    entry, logits = registry.get_attack(name), classifier().eval()
    x = inputs()
    with torch.no_grad():
        pred = logits(x).argmax(dim=1)
    labels = {"target": (pred + 1) % CLASSES} if mode == "targeted" else {"y": pred}
    probabilities = nn.Sequential(logits, nn.Softmax(dim=1))
    for model, warned in ((probabilities, True), (logits, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                entry.build(model, bounds=BOUNDS, **SMALL.get(name, {}))(x, **labels)
            except ValueError as err:  # (LRP-based indicators have no rule for a softmax layer)
                assert "Softmax" in str(err)
        said = [str(w.message) for w in caught if "look like probabilities" in str(w.message)]
        assert len(said) == warned, said
        assert not warned or said[0].startswith(
            "the model's outputs on the clean batch look like probabilities (every row >= 0 and summing to 1)")


def _labels_for(entry: registry.Entry, mode: str, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        pred = model.eval()(x).argmax(dim=1)
    if task_of(entry) == "segmentation":
        return {"target": torch.zeros_like(pred)}
    return {"target": (pred + 1) % CLASSES} if mode == "targeted" else {"y": pred}


@pytest.mark.parametrize("name, mode", attack_cases())
def test_attack_runs_under_the_caller_s_inference_mode(name, mode):
    # an evaluation loop under torch.inference_mode() (was "element 0 of tensors does not require grad")
    entry = registry.get_attack(name)
    model = segmenter() if task_of(entry) == "segmentation" else classifier()
    x = inputs()
    labels = _labels_for(entry, mode, model, x)
    attack = entry.build(model, bounds=BOUNDS, **SMALL.get(name, {}))
    expected = attack(x, **labels)
    with torch.inference_mode():
        result = attack(x, **labels)
        assert torch.equal(result.x_adv, expected.x_adv) and torch.equal(result.success, expected.success)


@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_runs_under_the_caller_s_inference_mode(name, task):
    model = segmenter() if task == "segmentation" else classifier()
    explainer = registry.get_explainer(name).build(model.eval(), bounds=BOUNDS, **SMALL.get(name, {}))
    x = inputs()
    expected = explainer.attribute(x)
    with torch.inference_mode():
        torch.testing.assert_close(explainer.attribute(x), expected, rtol=0, atol=0)
