"""The description of an evaluation run (YAML or flags), validated completely before any work.

A run names the models (checkpoints, defended ones included), the dataset and how many
samples, the attacks and explanations with their parameters, a seed and an output folder.
:func:`load_config` checks every key and collects *every* problem, each with its key path
(``attacks[1].params.epss: unknown parameter ...``), then raises one :class:`ConfigError`.

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

import difflib
import hashlib
import importlib
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from salmap.evaluation.resources import Resources, load_model, load_split

#: targeting modes of classifiers: untargeted with the true labels, a seeded random other
#: class, the next class, or every other class (the source-target grid of Papernot et al.).
#: Segmentation attacks aim at a mask: ``hide`` (every pixel background) or ``add`` (the
#: true objects of the next selected image added to the image's own true mask).
TARGETING = ("none", "random", "next", "all")


@dataclass(frozen=True)
class Component:
    """An attack or explainer the run can name: where its class lives and how it is targeted.

    ``factory`` is ``"module:Class"``, imported only when used, so that a component whose
    module is missing in this installation is reported as unavailable instead of failing
    at import. ``fixed`` are constructor arguments the runner supplies itself (the model,
    the bounds); a run file cannot set them.
    """

    factory: str
    help: str
    targeting: tuple[str, ...] = TARGETING
    default_targeting: str = "none"
    task: str = "classification"
    fixed: tuple[str, ...] = ("model", "bounds")

    def resolve(self) -> Callable[..., Any]:
        module, _, name = self.factory.partition(":")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise LookupError(f"{self.factory.replace(':', '.')} is not available in this installation") from None
        return found  # type: ignore[no-any-return]


#: attacks by the name a run file uses
ATTACKS: dict[str, Component] = {
    "fgsm": Component("salmap.attacks.fgsm:FGSM", "Fast Gradient Sign Method (Goodfellow et al. 2014)"),
    "pgd": Component("salmap.attacks.fgsm:PGD", "projected gradient descent (Madry et al. 2017)"),
    "bim": Component("salmap.attacks.fgsm:BIM", "basic iterative method (Kurakin et al. 2016)"),
    "jsma": Component(
        "salmap.attacks.jsma:JSMA", "Jacobian-based saliency map attack (Papernot et al. 2016)",
        default_targeting="random",
    ),
    "isi": Component("salmap.attacks.isi:ISI", "input significance indicator attack"),
    "jsma-seg": Component(
        "salmap.attacks.jsma_seg:SegmentationJSMA", "JSMA against segmentation models (target masks)",
        targeting=("hide", "add"), default_targeting="hide", task="segmentation",
    ),
}

#: explainers by the name a run file uses
EXPLAINERS: dict[str, Component] = {
    "gradient": Component("salmap.explain.gradient:GradientSaliency", "gradient saliency", fixed=("model",)),
    "occlusion": Component("salmap.explain.occlusion:Occlusion", "occlusion maps", fixed=("model",)),
    "gradcam": Component("salmap.explain.gradcam:GradCAM", "Grad-CAM", fixed=("model",)),
    "lrp": Component("salmap.explain.lrp:LRP", "layer-wise relevance propagation", fixed=("model",)),
}


#: constructor parameters that take code (callables), never plain data from a file
CODE_PARAMS = frozenset({"loss_fn", "transform", "forward_fn"})


class ConfigError(ValueError):
    """Every problem of a run description, one ``key.path: message`` per line."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "run") -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{source} has {len(problems)} problem{'s' if len(problems) != 1 else ''}:\n{lines}")


@dataclass
class DataConfig:
    name: str = "mnist-sample"
    split: str = "test"
    #: number of samples; None means all
    num: int | None = None
    #: which samples: a seeded random choice (``random``, the default: splits are often sorted
    #: by class) or the first ``num`` of the split (``first``)
    select: str = "random"


@dataclass
class ModelConfig:
    name: str
    path: str
    #: the defense this checkpoint embodies (a label for the tables; None for an undefended model)
    defense: str | None = None


@dataclass
class AttackConfig:
    name: str
    attack: str
    targets: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainConfig:
    name: str
    explainer: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class FigureConfig:
    #: samples shown in the adversarial grids and explanation overlays
    samples: int = 8
    enabled: bool = True


@dataclass
class RunConfig:
    """A validated run description; see the module docstring for the file format."""

    output: str
    models: list[ModelConfig]
    attacks: list[AttackConfig]
    data: DataConfig = field(default_factory=DataConfig)
    explanations: list[ExplainConfig] = field(default_factory=list)
    name: str = "evaluation"
    seed: int = 0
    batch_size: int = 100
    device: str = "cpu"
    figures: FigureConfig = field(default_factory=FigureConfig)
    report: bool = True
    #: the models and dataset opened during validation (handed to the plan; not part of the description)
    resources: Resources | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(replace(self, resources=None))
        payload.pop("resources")
        return payload

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """A hash of everything that determines the results (not the output folder nor the device).

        ``extra`` adds facts found while validating (hashes of model weights and data).
        """
        payload = self.to_dict()
        payload.pop("output")
        payload.pop("device")
        payload.pop("report")
        payload["extra"] = extra or {}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_TOP = {"name", "output", "seed", "batch_size", "device", "data", "models", "attacks", "explanations",
        "figures", "report"}


class _Checker:
    """Collects problems with their key paths instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def unknown_keys(self, path: str, value: dict[str, Any], allowed: set[str]) -> None:
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.add(_join(path, str(key)), f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")

    def mapping(self, path: str, value: Any) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.add(path or "<top>", f"must be a mapping, got {_kind(value)} {_short(value)}")
        return None

    def string(self, path: str, value: Any, default: str | None = None, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.add(path, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"must be a non-empty string, got {_kind(value)} {_short(value)}")
            return default
        return value

    def integer(self, path: str, value: Any, default: int | None, low: int | None = None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"must be an integer, got {_kind(value)} {_short(value)}")
            return default
        if low is not None and value < low:
            self.add(path, f"must be at least {low}, got {value}")
            return default
        return value

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(path, f"must be true or false, got {_kind(value)} {_short(value)}")
            return default
        return value

    def choice(self, path: str, value: Any, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.add(path, f"must be one of {', '.join(choices)}, got {_short(value)}")
            return default
        return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "the string", bool: "the boolean"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> bool:
    """Whether a parameter value is plain data (what YAML can hold), not code."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def check_params(
    check: _Checker, path: str, kind: str, component: Component, params: Any
) -> dict[str, Any]:
    """Check ``params`` against the component's constructor signature (names and plain values)."""
    params = check.mapping(path, params if params is not None else {})
    if params is None:
        return {}
    try:
        cls = component.resolve()
    except LookupError as err:
        check.add(path.rsplit(".", 1)[0], f"{kind} is not available: {err}")
        return dict(params)
    signature = inspect.signature(cls)
    accepted = {
        name for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in component.fixed
    }
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if key in CODE_PARAMS:
            check.add(_join(path, str(key)), "takes a Python callable and cannot be set from a run file")
        elif key in component.fixed:
            check.add(_join(path, str(key)), "is set by the runner (from the model), not the run file")
        elif key not in accepted and not takes_kwargs:
            close = difflib.get_close_matches(str(key), sorted(accepted), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            check.add(_join(path, str(key)), f"unknown parameter of {cls.__name__}{hint}; accepted: {', '.join(sorted(accepted))}")
        elif not _plain(value):
            check.add(_join(path, str(key)), f"must be plain data (number, string, list), got {_short(value)}")
        else:
            clean[str(key)] = value
    return clean


def _probe(check: _Checker, path: str, component: Component, params: dict[str, Any]) -> None:
    """Build the component once on a stand-in model so its own value checks run now, not mid-run."""
    try:
        cls = component.resolve()
    except LookupError:
        return

    def stand_in(x: Any) -> Any:  # never called: constructors only store the model
        raise RuntimeError("stand-in model called during validation")

    kwargs = dict(params)
    if "bounds" in component.fixed and "bounds" in inspect.signature(cls).parameters:
        kwargs["bounds"] = (0.0, 1.0)
    try:
        cls(stand_in, **kwargs)
    except ValueError as err:
        check.add(path, str(err))
    except TypeError as err:
        check.add(path, f"cannot build {cls.__name__}: {err}")
    except Exception:  # a constructor that inspects the model itself is checked when the run starts
        pass


def parse_config(raw: Any, source: str = "run", base: Path | None = None) -> RunConfig:
    """Validate a run description (the parsed YAML mapping) and return a :class:`RunConfig`.

    Every problem is collected; a :class:`ConfigError` lists all of them with key paths.
    Relative ``output`` and model ``path`` values are taken relative to ``base``.
    """
    check = _Checker()
    top = check.mapping("", raw)
    if top is None:
        raise ConfigError(check.problems, source)
    check.unknown_keys("", top, _TOP)

    name = check.string("name", top.get("name"), "evaluation") or "evaluation"
    output = check.string("output", top.get("output"), required=True) or ""
    seed = check.integer("seed", top.get("seed"), 0, low=0) or 0
    batch_size = check.integer("batch_size", top.get("batch_size"), 100, low=1) or 100
    device = check.string("device", top.get("device"), "cpu") or "cpu"
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") or device == "mps"):
        check.add("device", f"must be cpu, cuda, cuda:N or mps, got {device!r}")
    report = check.boolean("report", top.get("report"), True)

    data = DataConfig()
    raw_data = top.get("data")
    if raw_data is not None and (d := check.mapping("data", raw_data)) is not None:
        check.unknown_keys("data", d, {"name", "split", "num", "select"})
        data = DataConfig(
            name=check.string("data.name", d.get("name"), "mnist-sample") or "mnist-sample",
            split=check.choice("data.split", d.get("split"), ("train", "test", "all"), "test"),
            num=check.integer("data.num", d.get("num"), None, low=1),
            select=check.choice("data.select", d.get("select"), ("random", "first"), "random"),
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

    models = _models(check, top.get("models"), base)
    attacks = _attacks(check, top.get("attacks"))
    explanations = _explanations(check, top.get("explanations"))
    if base is not None and output:
        output = str(_resolve(base, output))
    resources = _check_resources(check, data, models, attacks)

    if check.problems:
        raise ConfigError(check.problems, source)
    return RunConfig(
        output=output, models=models, attacks=attacks, data=data, explanations=explanations, name=name,
        seed=seed, batch_size=batch_size, device=device, figures=figures, report=report, resources=resources,
    )


def _check_resources(check: _Checker, data: DataConfig, models: list[ModelConfig], attacks: list[AttackConfig],
                     ) -> Resources | None:
    """Open the dataset and every model now, so that a wrong path or count fails before any work.

    Returns what was opened (handed to the plan: nothing is opened twice), or None on a problem.
    """
    task = None
    ds = None
    try:
        ds = load_split(data.name, data.split)
    except ValueError as err:
        check.add("data.name", str(err))
    else:
        task = ds.task
        if data.num is not None and data.num > len(ds):
            check.add("data.num", f"asks for {data.num} samples but {data.name} ({data.split}) holds only {len(ds)}")
    loaded = []
    for i, m in enumerate(models):
        if not m.path:
            continue
        try:
            loaded.append(load_model(m.path))
        except (ValueError, OSError, RuntimeError) as err:
            check.add(f"models[{i}].path", str(err))
    if task is not None:
        for i, a in enumerate(attacks):
            if a.attack and ATTACKS[a.attack].task != task:
                check.add(f"attacks[{i}].attack", f"{a.attack} attacks {ATTACKS[a.attack].task} models but "
                          f"{data.name} is a {task} dataset")
    if ds is None or len(loaded) != len(models):
        return None
    return Resources(ds, loaded)


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _is_factory(path: str) -> bool:
    return ":" in path and not path.startswith((".", "/")) and not Path(path).exists()


def _labels_unique(check: _Checker, section: str, labels: list[str]) -> None:
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if label in seen:
            check.add(f"{section}[{i}].name", f"{label!r} is used twice in {section}; names must be unique")
        seen.add(label)


def _items(check: _Checker, section: str, raw: Any, required: bool) -> list[tuple[str, dict[str, Any]]]:
    if raw is None:
        if required:
            check.add(section, "is required (a list with at least one entry)")
        return []
    if not isinstance(raw, list):
        check.add(section, f"must be a list, got {_kind(raw)} {_short(raw)}")
        return []
    if required and not raw:
        check.add(section, "must hold at least one entry")
    found = []
    for i, item in enumerate(raw):
        path = f"{section}[{i}]"
        if (m := check.mapping(path, item)) is not None:
            found.append((path, m))
    return found


def _models(check: _Checker, raw: Any, base: Path | None) -> list[ModelConfig]:
    models = []
    for path, m in _items(check, "models", raw, required=True):
        check.unknown_keys(path, m, {"name", "path", "defense"})
        source = check.string(f"{path}.path", m.get("path"), required=True) or ""
        if source and base is not None and not _is_factory(source):
            source = str(_resolve(base, source))
        label = check.string(f"{path}.name", m.get("name"), None) or (Path(source).name or source or path)
        defense = check.string(f"{path}.defense", m.get("defense"), None)
        models.append(ModelConfig(name=label, path=source, defense=defense))
    _labels_unique(check, "models", [m.name for m in models])
    return models


def _attacks(check: _Checker, raw: Any) -> list[AttackConfig]:
    attacks = []
    for path, a in _items(check, "attacks", raw, required=True):
        check.unknown_keys(path, a, {"attack", "name", "targets", "params"})
        kind = check.string(f"{path}.attack", a.get("attack"), required=True)
        if kind is not None and kind not in ATTACKS:
            check.add(f"{path}.attack", f"must be one of {', '.join(sorted(ATTACKS))}, got {kind!r}")
            kind = None
        component = ATTACKS[kind] if kind else None
        targets = "none"
        params: dict[str, Any] = {}
        if component is not None:
            targets = check.choice(f"{path}.targets", a.get("targets"), component.targeting, component.default_targeting)
            if targets == "none" and not _supports(component, "untargeted"):
                check.add(f"{path}.targets", f"{kind} is targeted only: use one of random, next, all")
            before = len(check.problems)
            params = check_params(check, f"{path}.params", "attack", component, a.get("params"))
            if len(check.problems) == before:
                _probe(check, f"{path}.params", component, params)
        raw_params: dict[str, Any] = a["params"] if isinstance(a.get("params"), dict) else params
        label = check.string(f"{path}.name", a.get("name"), None) or _default_label(kind or "attack", raw_params)
        if a.get("name") is None and component is not None and targets != component.default_targeting:
            label += f" targets={targets}"
        attacks.append(AttackConfig(name=label, attack=kind or "", targets=targets, params=params))
    _labels_unique(check, "attacks", [a.name for a in attacks])
    return attacks


def _supports(component: Component, mode: str) -> bool:
    try:
        cls = component.resolve()
    except LookupError:
        return True
    return bool(getattr(cls, f"supports_{mode}", True))


def _default_label(kind: str, params: dict[str, Any]) -> str:
    if not params:
        return kind
    return kind + "(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"


def _explanations(check: _Checker, raw: Any) -> list[ExplainConfig]:
    found = []
    for path, e in _items(check, "explanations", raw, required=False):
        check.unknown_keys(path, e, {"explainer", "name", "params"})
        kind = check.string(f"{path}.explainer", e.get("explainer"), required=True)
        if kind is not None and kind not in EXPLAINERS:
            check.add(f"{path}.explainer", f"must be one of {', '.join(sorted(EXPLAINERS))}, got {kind!r}")
            kind = None
        params: dict[str, Any] = {}
        if kind:
            before = len(check.problems)
            params = check_params(check, f"{path}.params", "explainer", EXPLAINERS[kind], e.get("params"))
            if len(check.problems) == before:
                _probe(check, f"{path}.params", EXPLAINERS[kind], params)
        label = check.string(f"{path}.name", e.get("name"), None) or kind or "explainer"
        found.append(ExplainConfig(name=label, explainer=kind or "", params=params))
    _labels_unique(check, "explanations", [e.name for e in found])
    return found


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML run file; ``overrides`` replace top-level keys (from flags)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"run file {str(path)!r} cannot be read: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"run file {str(path)!r} is not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **overrides}
    return parse_config(raw, source=f"run file {path}", base=path.resolve().parent)


__all__ = [
    "ATTACKS", "EXPLAINERS", "TARGETING", "AttackConfig", "Component", "ConfigError", "DataConfig",
    "ExplainConfig", "FigureConfig", "ModelConfig", "RunConfig", "load_config", "parse_config",
]
