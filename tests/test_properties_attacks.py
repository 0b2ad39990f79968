"""Properties every registered attack must have (cases from ``registry.attacks()``, see ``_property_cases``):
the input is unchanged, the output is within the bounds, the declared budget is respected, a batch gives
what the samples give one by one, the result lives on the input's device; a newly registered attack is
picked up, a classifier with one score is refused, one returning probabilities is warned about, and
the attack runs under the caller's inference mode."""

from __future__ import annotations

import warnings

import pytest
import torch
from _property_cases import (
    BATCH,
    BOUNDS,
    CLASSES,
    DEVICES,
    SMALL,
    attack_cases,
    attack_run,
    classifier,
    inputs,
    segmenter,
    task_of,
)
from torch import nn

from salmap import registry


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
