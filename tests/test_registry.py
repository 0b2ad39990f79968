"""The registry: parameters read once from signatures and docstrings, checked without running code."""

from __future__ import annotations

from typing import Literal

import pytest
from torch import nn

from salmap import registry
from salmap._signature import docstring_params, parse_interval
from salmap.explain.base import Explainer


class Toy(Explainer):
    """A toy explainer.

    Parameters
    ----------
    model: the model.
    size: how big, with a help text
        that continues on the next line.
    mode : str
        numpy style: the help is on the next line.
    fill: a name or a number.
    kind: a literal choice.
    limit: optional count.
    fn: a callable (API only).

    Returns
    -------
    nothing: not a parameter.
    """

    def __init__(self, model: nn.Module, size: int = 3, mode: str = "a", fill: str | float = "zero",
                 kind: Literal["x", "y"] = "x", limit: int | None = None, fn: object = None) -> None:
        super().__init__(model)
        self.size, self.fill, self.fn = size, fill, fn

    def _attribute(self, x, target):
        return x


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setitem(registry._ENTRIES, "explainer", dict(registry._ENTRIES["explainer"]))
    registry.register_explainer("toy", choices={"mode": ("a", "b")}, ranges={"size": "[1, 10)"},
                                named={"fn": {"identity": lambda: (lambda v: v)}})(Toy)
    return registry.get_explainer("toy")


def test_parameters_come_from_the_signature_and_the_docstring(toy):
    params = toy.param_map
    assert list(params) == ["size", "mode", "fill", "kind", "limit", "fn"]
    assert params["size"].help == "how big, with a help text that continues on the next line."
    assert params["mode"].help == "numpy style: the help is on the next line."
    assert "nothing" not in params
    assert (params["size"].type, params["size"].default, params["size"].interval) == (int, 3, (1.0, 10.0, True, False))
    assert params["fill"].types == (float, str) and params["fill"].type is str
    assert params["kind"].choices == ("x", "y") and params["limit"].nullable
    assert params["fn"].choices == ("identity",) and params["fn"].plain
    assert toy.tasks == ("classification", "segmentation") and toy.targeting == ("none",)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"size": "4", "fill": "0.5", "limit": None}, {"size": 4, "fill": 0.5, "limit": None}),
        ({"fill": "grey", "size": 2.0}, {"fill": "grey", "size": 2}),
        ({"mode": "b", "kind": "y", "fn": "identity"}, {"mode": "b", "kind": "y", "fn": "identity"}),
    ],
)
def test_check_converts_plain_values(toy, params, expected):
    assert toy.check(params) == expected


@pytest.mark.parametrize(
    "params, message",
    [
        ({"size": 10}, "size must be in [1, 10), got 10"),
        ({"size": 2.5}, "size must be an integer, got 2.5"),
        ({"size": True}, "size must be an integer, got True"),
        ({"mode": "c"}, "mode must be one of 'a', 'b', got 'c'"),
        ({"sise": 3}, "sise is not a parameter of toy (did you mean 'size'?)"),
        ({"model": 3}, "model is set by the runner"),
        ({"fn": "print"}, "fn must be one of 'identity', got 'print'"),
        ({"fill": [1]}, "fill must be a number or a string, got [1]"),
    ],
)
def test_check_names_the_parameter_value_and_expectation(toy, params, message):
    with pytest.raises(ValueError, match="explainer toy: ") as info:
        toy.check(params)
    assert message in str(info.value)


def test_build_makes_named_values_and_takes_objects(toy):
    model = nn.Linear(2, 2)
    built = toy.build(model, fn="identity", size="5")
    assert built.size == 5 and built.fn(7) == 7
    marker = object()
    assert toy.build(model, fn=marker).fn is marker


def test_lookup_suggests_close_names():
    with pytest.raises(LookupError, match="did you mean 'jsma'"):
        registry.get_attack("jmsa")
    assert set(registry.attacks()) >= {"fgsm", "pgd", "bim", "jsma", "jsma-seg", "isi"}
    assert set(registry.explainers()) >= {"gradient", "occlusion", "gradcam", "lrp"}


def test_declarations_that_name_no_parameter_are_refused(monkeypatch):
    monkeypatch.setitem(registry._ENTRIES, "explainer", dict(registry._ENTRIES["explainer"]))
    with pytest.raises(ValueError, match="has no parameter 'sizes'"):
        registry.register_explainer("bad1", ranges={"sizes": "[0, 1]"})(Toy)
    with pytest.raises(ValueError, match=r"flags\['big'\] of bad2 names 'sizes'"):
        registry.register_explainer("bad2", flags={"big": ("sizes", 9)})(Toy)
    with pytest.raises(ValueError, match="name must be lower-case"):
        registry.register_explainer("Bad")(Toy)
    with pytest.raises(ValueError, match="'gradient' is registered already"):
        registry.register_explainer("gradient")(Toy)


def test_what_an_entry_supports():
    jsma, isi, seg = registry.get_attack("jsma"), registry.get_attack("isi"), registry.get_attack("jsma-seg")
    assert jsma.default_targeting == "random" and jsma.untargeted and jsma.targeted
    assert seg.targeting == registry.SEGMENTATION_TARGETING and not seg.untargeted
    assert isi.requires_module() and not isi.requires_module({"indicator": "sensitivity"})
    assert registry.get_explainer("gradcam").requires_module() and not registry.get_explainer("gradient").needs_module
    assert registry.get_attack("pgd").budget({"eps": 0.1}) == {"linf": 0.1} and isi.budget() == {}


def test_interval_and_docstring_helpers():
    assert parse_interval("(0, inf)") == (0.0, float("inf"), False, False)
    with pytest.raises(ValueError, match="must look like"):
        parse_interval("0..1")
    assert docstring_params("No sections here.") == {}
