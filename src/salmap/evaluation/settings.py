"""The settings of an evaluation run: what :func:`salmap.evaluation.config.parse_config` returns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salmap.evaluation.loaded import Resources

#: the targeting modes and segmentation goals ``salmap evaluate`` runs (an attack offers those of
#: its registry entry that are here); ``least-likely`` is drawn per unit from the model's clean outputs
RUN_TARGETING = ("none", "random", "next", "least-likely", "all", "hide", "relabel", "add")


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
    #: resize images (shorter side) and centre-crop them to ``image_size`` squares (``folder:`` data is streamed)
    image_size: int | None = None
    #: read images as 1 (grey) or 3 (RGB) channels; None keeps the data's own
    channels: int | None = None


@dataclass
class ModelConfig:
    name: str
    path: str
    #: the defense this checkpoint embodies (a label for the tables; None for an undefended model)
    defense: str | None = None
    #: ``{"mean": [...], "std": [...]}``: the model normalises its pixel input (see salmap.models.Normalized)
    normalization: dict[str, list[float]] | None = None
    #: the entry of a dict / ModelOutput output to attack (default ``logits``)
    output_key: str | None = None
    #: keyword arguments of a ``module:factory`` model
    model_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    name: str
    attack: str
    targets: str
    params: dict[str, Any] = field(default_factory=dict)
    #: segmentation goal ``relabel``: the new class (None: the next object class; see salmap.targets)
    to: int | None = None


@dataclass
class ExplainConfig:
    name: str
    explainer: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainRun:
    """``salmap explain``'s explanation units (None in ``salmap evaluate``, whose explanation
    units cover the figure samples only): every sample is explained, batch by batch."""

    #: the class explained: ``pred`` (predicted), ``label`` (true label) or a class index
    target: str = "pred"
    #: segmenters: ``Y0:Y1,X0:X1``, explain the summed score over this pixel box
    region: str | None = None
    #: the maps of the first ``rows`` samples are kept for the pictures
    rows: int = 8


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
    #: write every adversarial example losslessly (``adversarial/*.safetensors``, see ``load_adversarial``)
    save_adversarial: bool = False
    #: also write them as 8-bit PNGs (``png/``) and count those no longer adversarial once rounded
    save_png: bool = False
    #: the command line allowed model paths that name Python code (``--allow-code``); a run
    #: file cannot set it, and it is not part of the description
    allow_code: bool = field(default=False, compare=False)
    #: the command line trusts the run's .pt2 model files (``--trust-model``: torch unpickles
    #: them); a run file cannot set it, and it is not part of the description
    trust_model: bool = field(default=False, compare=False)
    #: ``salmap explain``'s settings (see :class:`ExplainRun`); a run file cannot set them
    explain: ExplainRun | None = None
    #: the models and dataset opened during validation, handed to the plan (not part of the description)
    resources: Resources | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(replace(self, resources=None))
        payload.pop("resources")
        payload.pop("allow_code")
        payload.pop("trust_model")
        return payload

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        """A hash of everything that determines the results (not the output folder nor the device).

        ``extra`` adds facts found while validating (hashes of model weights and data).
        """
        payload = self.to_dict()
        payload.pop("output")
        payload.pop("device")
        payload.pop("report")
        for key in ("save_adversarial", "save_png", "explain"):  # off: the fingerprint of a run file that predates them
            if not payload[key]:
                payload.pop(key)
        for attack in payload["attacks"]:
            if attack.get("to") is None:
                attack.pop("to", None)
        payload["extra"] = extra or {}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = [
    "RUN_TARGETING", "AttackConfig", "ConfigError", "DataConfig", "ExplainConfig", "ExplainRun", "FigureConfig", "ModelConfig",
    "RunConfig",
]
