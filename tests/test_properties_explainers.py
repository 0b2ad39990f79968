"""Properties every registered explainer must have (cases from ``registry.explainers()``, see
``_property_cases``): the input is unchanged, the map has the batch size and the input's spatial size,
a batch gives what the samples give one by one, the map lives on the input's device, an input the
model cannot take is named, and the explainer runs under the caller's inference mode."""

from __future__ import annotations

import re

import pytest
import torch
from _property_cases import (
    BATCH,
    BOUNDS,
    DEVICES,
    SMALL,
    classifier,
    explain_run,
    explainer_cases,
    inputs,
    segmenter,
)

from salmap import registry


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


@pytest.mark.parametrize("name, task", [case for case in explainer_cases() if case.values[1] == "classification"])
def test_explainer_names_an_input_the_model_cannot_take(name, task):
    # one image without its batch dimension, images of the wrong size: x's shape named, as by the attacks
    explainer = registry.get_explainer(name).build(classifier().eval(), bounds=BOUNDS, **SMALL.get(name, {}))
    x = inputs()
    for bad in (x[0], x[:, :, :6, :6]):
        shape = re.escape(str(tuple(bad.shape)))
        with pytest.raises(ValueError, match=rf"^the model cannot be run on x of shape {shape}: .* \(x must be a batch"):
            explainer.attribute(bad)


@pytest.mark.parametrize("name, task", explainer_cases())
def test_explainer_runs_under_the_caller_s_inference_mode(name, task):
    model = segmenter() if task == "segmentation" else classifier()
    explainer = registry.get_explainer(name).build(model.eval(), bounds=BOUNDS, **SMALL.get(name, {}))
    x = inputs()
    expected = explainer.attribute(x)
    with torch.inference_mode():
        torch.testing.assert_close(explainer.attribute(x), expected, rtol=0, atol=0)
