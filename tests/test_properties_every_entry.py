"""Properties of every registered attack and explainer alike: the model's state (training flags,
``requires_grad``) is restored, and numeric parameters take NumPy scalars and 0-d tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _property_cases import (
    attack_cases,
    attack_run,
    classifier,
    explain_run,
    explainer_cases,
    segmenter,
    task_of,
)

from salmap import registry


def every_case() -> list[Any]:
    return ([pytest.param(attack_run, *case.values, id=f"attack-{case.id}") for case in attack_cases()]
            + [pytest.param(explain_run, *case.values, id=f"explainer-{case.id}") for case in explainer_cases()])


@pytest.mark.parametrize("run_of, name, case", every_case())
def test_the_model_state_is_restored(run_of, name, case):
    run = run_of(name, case)
    assert run.state_after == run.state_before


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
