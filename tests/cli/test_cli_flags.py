"""Command-line flags generated from the registry (salmap.cli.flags) and their compatibility."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from salmap import registry
from salmap.cli import build_parser, main
from salmap.cli.flags import add_entry_flags, params_from_args, parse_spec
from salmap.explain.base import Explainer


def parse_attack(*argv: str) -> tuple[registry.Entry, dict]:
    """The entry and params ``salmap attack ...`` would build (the model/out flags are dummies)."""
    args = build_parser().parse_args(["attack", *argv, "--model", "m", "--out", "o"])
    from salmap.cli.attack import RESERVED

    base = {"seed": args.seed} if "seed" in RESERVED else {}
    return args.entry, params_from_args(args.entry, args, base=base)


def parse_explain(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["explain", "--model", "m", "--out", "o", *argv])


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_every_registered_attack_is_a_subcommand_with_a_flag_per_plain_parameter():
    from salmap.cli.attack import RESERVED

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    attack = next(a for a in sub.choices["attack"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(attack.choices) == set(registry.attacks())
    for name, entry in registry.attacks().items():
        options = set(attack.choices[name]._option_string_actions)
        for p in entry.params:
            if not p.plain or p.name in RESERVED:
                continue
            flag = p.flag if p.type is not bool or p.default is not True else f"--no-{p.flag[2:]}"
            assert flag in options, (name, p.name)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["jsma"], {}),
        (["jsma", "--single"], {"pairs": False}),
        (["jsma", "--no-pairs", "--gamma", "0.1", "--theta", "-1"], {"pairs": False, "gamma": 0.1, "theta": -1.0}),
        (["jsma", "--candidates", "none", "--probabilities"], {"candidates": None, "probabilities": True}),
        (["pgd", "--no-random-start", "--eps", "0.2", "--steps", "3"],
         {"random_start": False, "eps": 0.2, "steps": 3, "seed": 0}),
        (["pgd", "--seed", "7"], {"seed": 7}),
        (["isi", "--n-features", "3", "--norm", "l2", "--objective", "margin"],
         {"n_features": 3, "norm": "l2", "objective": "margin"}),
        (["jsma-seg", "--global-domain", "--k", "4", "--region", "outside", "--map", "masked"],
         {"local": False, "k": 4, "region": "outside", "map": "masked"}),
        (["jsma-seg", "--local"], {"local": True}),
        (["fgsm", "--eps", "0"], {"eps": 0.0}),
    ],
)
def test_compatible_flags_turn_into_params(argv, expected):
    entry, params = parse_attack(*argv)
    assert entry.name == argv[0]
    if "seed" in entry.param_map:
        expected = {"seed": 0, **expected}
    assert params == expected


def test_targeting_and_goal_flags():
    args = build_parser().parse_args(["attack", "jsma-seg", "--model", "m", "--out", "o", "--goal", "add"])
    assert args.goal == "add" and args.to is None
    args = build_parser().parse_args(["attack", "jsma", "--model", "m", "--out", "o"])
    assert args.targeted == "none"
    args = build_parser().parse_args(["attack", "fgsm", "--model", "m", "--out", "o", "--targeted", "all"])
    assert args.targeted == "all"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attack", "jsma", "--gamma", "1.5"], "argument --gamma: gamma must be in (0, 1], got 1.5"),
        (["attack", "pgd", "--steps", "2.5"], "argument --steps: steps must be an integer, got '2.5'"),
        (["attack", "isi", "--norm", "l3"], "norm must be one of 'l0', 'l2', 'linf', got 'l3'"),
        (["attack", "jsma-seg", "--region", "inside"], "region must be one of 'all', 'outside'"),
        (["attack", "pgd", "--random-start"], "unrecognized arguments: --random-start"),
        (["attack", "jsma-seg", "--goal", "move"], "argument --goal: invalid choice"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(argv, message, capsys):
    err = usage_error([*argv, "--model", "m", "--out", "o"], capsys)
    assert message in err


def test_help_shows_type_range_default_and_docstring_help(capsys):
    with pytest.raises(SystemExit):
        main(["attack", "jsma", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--gamma X largest fraction of the features that may be changed, in (0, 1]. [in (0, 1]; default: 0.145]" in text
    assert "--single same as pairs=off" in text and "--no-pairs" in text
    with pytest.raises(SystemExit):
        main(["attack", "pgd", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-random-start" in text and "--early-stop" in text and "[in [1, inf); default: 40]" in text


def test_bool_flags_follow_the_default():
    class Toy(Explainer):
        """A toy.

        Parameters
        ----------
        on: starts on.
        off: starts off.
        either: unset by default.
        """

        def __init__(self, model: nn.Module, on: bool = True, off: bool = False, either: bool | None = None,
                     size: int = 3) -> None:
            super().__init__(model)

    registry.register_explainer("toy-bools", flags={"big": ("size", 9)})(Toy)
    try:
        entry = registry.get_explainer("toy-bools")
        p = argparse.ArgumentParser()
        added = add_entry_flags(p, entry)
        assert set(added) == {"--no-on", "--off", "--either", "--no-either", "--size", "--big"}
        assert params_from_args(entry, p.parse_args(["--no-on", "--off", "--no-either"])) == {
            "on": False, "off": True, "either": False}
        assert params_from_args(entry, p.parse_args(["--big"])) == {"size": 9}
        assert params_from_args(entry, p.parse_args([]), base={"size": 5, "unrelated": 1}) == {"size": 5}
    finally:
        registry._ENTRIES["explainer"].pop("toy-bools")


def test_explain_flags_are_shared_or_scoped():
    args = parse_explain("--method", "lrp,occlusion,gradient", "--lrp-eps", "0.01", "--signed", "--patch", "3",
                         "--fill", "0.5", "--layer", "features.0")
    assert params_from_args(registry.get_explainer("lrp"), args) == {"eps": 0.01}
    assert params_from_args(registry.get_explainer("gradient"), args) == {"absolute": False}
    assert params_from_args(registry.get_explainer("occlusion"), args) == {"patch": 3, "fill": 0.5}
    assert params_from_args(registry.get_explainer("gradcam"), args) == {"layer": "features.0"}
    # --eps belongs to the command (the attack's eps), not to LRP
    assert parse_explain("--eps", "0.3").eps == 0.3


def test_explain_builds_each_method_from_its_flags():
    from salmap.cli.explain import build_explainer

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    args = parse_explain("--patch", "2", "--fill", "grey", "--seed", "4", "--no-relu")
    occ = build_explainer("occlusion", args, model, (0.0, 1.0))
    assert occ.patch == (2,) and occ.fill == "grey" and occ.seed == 4
    cam = build_explainer("gradcam", args, model, (0.0, 1.0))
    assert cam.layer == "0" and cam.relu is False  # the last convolution when no --layer is given


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fgsm", ("fgsm", {})),
        ("pgd:eps=0.1,steps=20,step=none", ("pgd", {"eps": "0.1", "steps": "20", "step": None})),
        ("isi: n-features = 3 ", ("isi", {"n_features": "3"})),
        ("jsma:gamma=!!python/object:os.system", ("jsma", {"gamma": "!!python/object:os.system"})),
    ],
)
def test_parse_spec_keeps_values_as_text(text, expected):
    name, params = parse_spec(text)
    assert (name, params) == expected
    if name == "jsma":  # no YAML: a tag is a string the parameter's check refuses
        with pytest.raises(ValueError, match="gamma must be a number"):
            registry.get_attack(name).check(params)
    else:
        registry.get_attack(name).check(params)


@pytest.mark.parametrize("text", ["pgd:eps", ":eps=1", "pgd:=3"])
def test_parse_spec_refuses_malformed_text(text):
    with pytest.raises(ValueError, match="--attack"):
        parse_spec(text)


def test_defend_attack_list_comes_from_the_registry():
    from salmap.cli.defend_flags import attack_specs

    names = [s.name for s in attack_specs(None)]
    assert names == ["fgsm-0.1", "fgsm-0.2", "fgsm-0.3", "pgd-0.3", "jsma-0.145", "isi-l0"]
    specs = attack_specs(["fgsm-0.1,jsma", "pgd:eps=0.1,steps=5"])
    assert [(s.name, s.attack, s.targeted) for s in specs] == [
        ("fgsm-0.1", "fgsm", False), ("jsma", "jsma", True), ("pgd:eps=0.1,steps=5", "pgd", False)]
    assert specs[2].params == {"eps": 0.1, "steps": 5}
    attack = specs[2].build(nn.Flatten(), (0.0, 1.0), seed=3)
    assert attack.eps == 0.1 and attack.steps == 5 and attack.seed == 3
    with pytest.raises(ValueError, match="did you mean 'pgd-0.3'"):
        attack_specs(["pgd-0.33"])
    with pytest.raises(ValueError, match="steps must be in"):
        attack_specs(["pgd:steps=0"])
    with pytest.raises(ValueError, match="classifier attacks"):
        attack_specs(["jsma-seg"])


def test_object_parameters_take_objects_in_the_api_and_names_from_flags():
    entry = registry.get_attack("jsma-seg")
    model = nn.Conv2d(1, 2, 1)
    mask = torch.ones(4, 4, dtype=torch.bool)
    assert entry.build(model, region=mask).region is mask
    assert callable(entry.build(model, region="outside").region)
    assert entry.build(model, region="all").region is None
    with pytest.raises(ValueError, match="region must be one of 'all', 'outside'"):
        entry.check({"region": "inside"})


def test_top_level_help_lists_attacks_and_explainers(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in [*registry.attacks(), *registry.explainers()]:
        assert f"\n  {name} " in text
