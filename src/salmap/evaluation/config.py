"""The description of an evaluation run (YAML or flags), validated completely before any work.

A run names the models (checkpoints, defended ones included), the dataset and how many
samples, the attacks and explanations with their parameters, a seed and an output folder.
:func:`load_config` checks every key and collects *every* problem, each with its key path
(``attacks[1].params.epss: unknown parameter ...``), then raises one :class:`ConfigError`.
Attack and explainer names, targeting and parameters are checked against the registry
(:mod:`salmap.registry`) without building anything; the dataset and each model file are
opened once (:mod:`salmap.evaluation.resources`) and handed to the plan. A model path that
names Python code (``module:factory``) needs ``allow_code`` (``--allow-code``) and is not
run during validation.

Example ``run.yaml``::

    name: lenet-robustness
    output: runs/lenet-eval
    seed: 0
    batch_size: 100
    data: {name: mnist-sample, split: test, num: 1000}
    models:
      - {name: lenet, path: /work/cache/lenet}
      - {name: lenet-denoised, path: runs/denoised, defense: denoiser}
    attacks:
      - {attack: fgsm, params: {eps: 0.1}}
      - {attack: jsma, name: jsma-grid, targets: all, params: {theta: 1.0, gamma: 0.145}}
    explanations:
      - {explainer: gradient}
    figures: {samples: 8}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from salmap.devices import resolve_device
from salmap.evaluation.checker import Checker
from salmap.evaluation.resources import check_resources, load_split
from salmap.evaluation.sections import parse_attacks, parse_explanations, parse_models, resolve
from salmap.evaluation.settings import (
    AttackConfig,
    ConfigError,
    DataConfig,
    ExplainConfig,
    FigureConfig,
    ModelConfig,
    RunConfig,
)

_TOP = {"name", "output", "seed", "batch_size", "device", "data", "models", "attacks", "explanations",
        "figures", "report", "save_adversarial", "save_png"}


def parse_config(
    raw: Any, source: str = "run", base: Path | None = None, allow_code: bool = False, open_files: bool = True,
    trust_model: bool = False,
) -> RunConfig:
    """Validate a run description (the parsed YAML mapping) and return a :class:`RunConfig`.

    Every problem is collected; a :class:`ConfigError` lists all of them with key paths.
    Relative ``output`` and model ``path`` values are taken relative to ``base``. Model paths
    naming Python code need ``allow_code`` (the command line's ``--allow-code``). With
    ``open_files`` the dataset and the model files are opened and checked, and kept in
    ``RunConfig.resources`` for the plan.
    """
    check = Checker()
    top = check.mapping("", raw)
    if top is None:
        raise ConfigError(check.problems, source)
    check.unknown_keys("", top, _TOP)

    name = check.string("name", top.get("name"), "evaluation") or "evaluation"
    output = check.string("output", top.get("output"), required=True) or ""
    seed = check.integer("seed", top.get("seed"), 0, low=0) or 0
    batch_size = check.integer("batch_size", top.get("batch_size"), 100, low=1) or 100
    device = check.string("device", top.get("device"), "auto") or "auto"
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:")):
        check.add("device", f"must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    device = resolve_device(device) if device == "auto" else device  # CUDA when available
    report = check.boolean("report", top.get("report"), True)
    save_adversarial = check.boolean("save_adversarial", top.get("save_adversarial"), False)
    save_png = check.boolean("save_png", top.get("save_png"), False)

    data = DataConfig()
    raw_data = top.get("data")
    if raw_data is not None and (d := check.mapping("data", raw_data)) is not None:
        check.unknown_keys("data", d, {"name", "split", "num", "select", "image_size", "channels"})
        data = DataConfig(
            name=check.string("data.name", d.get("name"), "mnist-sample") or "mnist-sample",
            split=check.choice("data.split", d.get("split"), ("train", "test", "all"), "test"),
            num=check.integer("data.num", d.get("num"), None, low=1),
            select=check.choice("data.select", d.get("select"), ("random", "first"), "random"),
            image_size=check.integer("data.image_size", d.get("image_size"), None, low=1),
            channels=_channels(check, d.get("channels")),
        )

    figures = FigureConfig()
    raw_fig = top.get("figures")
    if isinstance(raw_fig, bool):
        figures = FigureConfig(enabled=raw_fig)
    elif raw_fig is not None and (f := check.mapping("figures", raw_fig)) is not None:
        check.unknown_keys("figures", f, {"samples", "enabled"})
        figures = FigureConfig(
            samples=check.integer("figures.samples", f.get("samples"), 8, low=1) or 8,
            enabled=check.boolean("figures.enabled", f.get("enabled"), True),
        )

    models = parse_models(check, top.get("models"), base, allow_code)
    explaining = isinstance(top.get("explanations"), list) and bool(top["explanations"])
    if not explaining and top.get("attacks") in (None, []):  # a run explains only, attacks only, or both
        check.add("attacks", "is required (a list with at least one entry) unless the run has explanations")
    attacks = parse_attacks(check, top.get("attacks"), required=False)
    explanations = parse_explanations(check, top.get("explanations"))
    if base is not None and output:
        output = str(resolve(base, output))
    resources = None
    if open_files:
        resources = check_resources(check, data, models, attacks, explanations, allow_code, trust_model)

    if check.problems:
        raise ConfigError(check.problems, source)
    return RunConfig(
        output=output, models=models, attacks=attacks, data=data, explanations=explanations, name=name,
        seed=seed, batch_size=batch_size, device=device, figures=figures, report=report, allow_code=allow_code,
        trust_model=trust_model,
        resources=resources, save_adversarial=save_adversarial, save_png=save_png,
    )


def _channels(check: Checker, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or value not in (1, 3)):
        check.add("data.channels", f"must be 1 (grey) or 3 (RGB), got {value!r}")
        return None
    return value  # type: ignore[no-any-return]


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, allow_code: bool = False, trust_model: bool = False
) -> RunConfig:
    """Read and validate a YAML run file; ``overrides`` replace top-level keys (from flags)."""
    path = Path(path)
    raw = read_run_file(path)
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **overrides}
    return parse_config(raw, source=f"run file {path}", base=path.resolve().parent, allow_code=allow_code,
                        trust_model=trust_model)


#: the largest run file read (a run file is a page of YAML)
RUN_FILE_LIMIT = 2**20


def read_run_file(path: str | Path) -> Any:
    """The parsed YAML of a run file (``{}`` when empty), not validated; ValueError naming the file
    when it cannot be read or parsed."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ValueError(f"run file {str(path)!r} must be a file, got a folder")
        with path.open("rb") as f:  # (at most the limit read: a pipe or /dev/zero too)
            data = f.read(RUN_FILE_LIMIT + 1)
        if len(data) > RUN_FILE_LIMIT:
            raise ValueError(f"run file {str(path)!r} is larger than {RUN_FILE_LIMIT // 2**20} MiB: not a run file")
        text = data.decode("utf-8")
    except OSError as err:
        raise ValueError(f"run file {str(path)!r} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"run file {str(path)!r} is not UTF-8 text (byte {err.start}): not a YAML run file") from None
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as err:  # (ValueError: an integer of over 4300 digits, say)
        detail = err if isinstance(err, yaml.YAMLError) else str(err)[:200]
        raise ValueError(f"run file {str(path)!r} is not valid YAML: {detail}") from None
    return {} if raw is None else raw


__all__ = [
    "AttackConfig", "ConfigError", "DataConfig", "ExplainConfig", "FigureConfig", "ModelConfig", "RunConfig",
    "load_config", "load_split", "parse_config", "read_run_file",
]
