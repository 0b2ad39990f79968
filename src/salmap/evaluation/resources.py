"""The models and the dataset of a run, opened once and handed from validation to the plan.

Validation (:mod:`salmap.evaluation.config`) opens every checkpoint and the dataset to
check them: one sample goes through each model (its task, and whether it takes the data's
shape), and each attack and explainer is checked against each model (its task, whether it
needs a ``torch.nn.Module``, Grad-CAM's layer). What was opened is kept in a
:class:`Resources`; :func:`open_resources` hands those same objects to the plan, so each
model is loaded once per process per run. A model path naming Python code
(``module:factory``) is not opened during validation: only by :func:`open_resources`, and
only when the command line allowed code.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from salmap import data as datasets
from salmap import models as zoo
from salmap import registry
from salmap.evaluation.checker import Checker
from salmap.evaluation.explaining import patch_problem
from salmap.evaluation.loaded import LoadedModel, Resources, bounds_from_meta
from salmap.evaluation.sources import is_factory
from salmap.gradients import mode_is_fixed, set_eval
from salmap.logits import OutputError
from salmap.models.inputs import check_labels, error_text
from salmap.models.outputs import logits_of

if TYPE_CHECKING:
    from salmap.evaluation.settings import (
        AttackConfig,
        DataConfig,
        ExplainConfig,
        ModelConfig,
        RunConfig,
    )

_BUILTIN_CACHE: dict[tuple[str, str], Any] = {}


def load_split(name: str, split: str, image_size: int | None = None, channels: int | None = None) -> datasets.Dataset:
    """A dataset split; built-in ones (no ``kind:PATH``) are decoded once per process. ``image_size`` and
    ``channels`` as in :func:`salmap.data.load_dataset` (a ``folder:`` set is streamed)."""
    if ":" in name or image_size is not None or channels is not None:
        return datasets.load_dataset(name, split, image_size=image_size, channels=channels)
    key = (name, split)
    if key not in _BUILTIN_CACHE:
        _BUILTIN_CACHE[key] = datasets.load_dataset(name, split)
    return _BUILTIN_CACHE[key]  # type: ignore[no-any-return]


def load_model(model: str | ModelConfig, device: str = "cpu", allow_code: bool = False, trust: bool = False,
               ) -> LoadedModel:
    """Open a run's model: a ``models[]`` entry (path, normalization, output_key, model_args) or a
    path (checkpoint folder, TorchScript file; a .pt2 file only with ``trust``, a module:factory
    only with ``allow_code``: see :func:`salmap.models.load_with_meta`)."""
    path, options = model_source(model)
    if is_factory(path) and not allow_code:
        raise ValueError(f"{path!r} names Python code (module:factory); it runs only with --allow-code")
    module, meta = zoo.load_with_meta(path, allow_code=allow_code, trust=trust, **options)
    return LoadedModel(path, set_eval(module.to(device)), meta, bounds_from_meta(meta))


def model_source(model: str | ModelConfig) -> tuple[str, dict[str, Any]]:
    """``(path, keyword arguments of salmap.models.load_with_meta)`` of a ``models[]`` entry or path."""
    if isinstance(model, str):
        return model, {}
    options: dict[str, Any] = {"normalization": model.normalization, "output_key": model.output_key}
    return model.path, {**options, **model.model_args}


def model_task(model: LoadedModel, ds: datasets.Dataset) -> str:
    """The model's task from its output on the dataset's first sample; ValueError naming both shapes."""
    return _task_of(first_output(model, ds))


def first_output(model: LoadedModel, ds: datasets.Dataset) -> torch.Tensor:
    """The model's ``(1, K)`` or ``(1, K, H, W)`` output on the dataset's first sample; ValueError
    naming both shapes when it cannot take it or returns something else."""
    x = ds.x[:1].to(next(iter(model.module.parameters()), torch.empty(0)).device)
    try:
        with torch.no_grad():
            out = logits_of(set_eval(model.module)(x))
    except OutputError:
        raise
    except Exception as err:  # a model that cannot take the data's samples: say so before any work
        raise ValueError(f"does not take the data's samples of shape {tuple(ds.x.shape[1:])}: "
                         f"{type(err).__name__}: {(error_text(err).splitlines() or [''])[0]}") from None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"must return (B, classes) logits or (B, classes, H, W) scores, got {shape}")
    return out


def _task_of(out: torch.Tensor) -> str:
    return "classification" if out.dim() == 2 else "segmentation"


def open_resources(cfg: RunConfig, device: str = "cpu") -> Resources:
    """The dataset and every model of ``cfg`` on ``device``: those validation opened, and the
    others (module:factory paths, allowed by ``cfg.allow_code``) opened now.

    Errors name the entry that failed (``models[1].path: ...``).
    """
    res = cfg.resources
    if res is None:
        res = Resources(load_split(cfg.data.name, cfg.data.split, cfg.data.image_size, cfg.data.channels),
                        [None] * len(cfg.models))
    for i, m in enumerate(cfg.models):
        if res.models[i] is not None:
            continue
        try:
            loaded = load_model(m, res.device, allow_code=cfg.allow_code, trust=cfg.trust_model)
            loaded.task = model_task(loaded, res.dataset)
        except (ValueError, OSError, RuntimeError) as err:
            raise ValueError(f"models[{i}].path: {err}") from None
        res.models[i] = loaded
    cfg.resources = res
    return res.to(device)


def check_resources(
    check: Checker, data: DataConfig, models: list[ModelConfig], attacks: list[AttackConfig],
    explanations: list[ExplainConfig], allow_code: bool = False, trust_model: bool = False,
) -> Resources | None:
    """Open the dataset and every model file now, so that a wrong path, count, shape or pairing
    fails before any work; the problems go to ``check`` with their key paths.

    Returns what was opened (handed to the plan: nothing is opened twice), or None on a problem.
    """
    ds = None
    try:
        ds = load_split(data.name, data.split, data.image_size, data.channels)
    except ValueError as err:
        check.add("data.name", str(err))
    else:
        if data.num is not None and data.num > len(ds):
            check.add("data.num", f"asks for {data.num} samples but {data.name} ({data.split}) holds only {len(ds)}")
    loaded: list[LoadedModel | None] = []
    for i, m in enumerate(models):
        if not m.path or is_factory(m.path):  # code runs only at the plan, and only with --allow-code
            loaded.append(None)
            continue
        try:
            model = load_model(m, trust=trust_model)
            out = first_output(model, ds) if ds is not None else None
            model.task = _task_of(out) if out is not None else None
        except (ValueError, OSError, RuntimeError) as err:  # (an output that output_key does not fit: named by it)
            key = "output_key" if isinstance(err, OutputError) and m.output_key is not None else "path"
            check.add(f"models[{i}].{key}", str(err))
            loaded.append(None)
            continue
        loaded.append(model)
        if ds is not None and model.task != ds.task:
            check.add(f"models[{i}].path", f"is a {_noun(model.task)} but {data.name} is a {ds.task} dataset")
        elif ds is not None and out is not None and attacks and model.task == "classification":
            try:  # attacks use the true labels: labels past the classifier's outputs fail before any work
                check_labels(ds.y, out, data.name)
            except ValueError as err:
                check.add(f"models[{i}].path", str(err))
    for i, a in enumerate(attacks):
        if a.attack:
            _check_pairing(check, f"attacks[{i}]", registry.get_attack(a.attack), a.params, models, loaded, ds,
                           data.name)
    for i, e in enumerate(explanations):
        if e.explainer:
            _check_pairing(check, f"explanations[{i}]", registry.get_explainer(e.explainer), e.params, models,
                           loaded, ds, data.name)
    if ds is None or any(m is None and not is_factory(cfg.path) for m, cfg in zip(loaded, models, strict=True)):
        return None
    return Resources(ds, loaded)


def _noun(task: str | None) -> str:
    return {"classification": "classifier", "segmentation": "segmenter"}.get(task or "", "model")


def _check_pairing(
    check: Checker, path: str, entry: registry.Entry, params: dict[str, Any], models: list[ModelConfig],
    loaded: list[LoadedModel | None], ds: datasets.Dataset | None, data_name: str,
) -> None:
    """An attack or explainer against the dataset and each opened model."""
    kind = "attack" if entry.kind == "attack" else "explainer"
    works = f"{entry.name} {'attacks' if kind == 'attack' else 'explains'} {' and '.join(entry.tasks)} models"
    if ds is not None and ds.task not in entry.tasks:
        check.add(f"{path}.{kind}", f"{works} but {data_name} is a {ds.task} dataset")
        return
    if ds is not None and (problem := patch_problem(entry, params, tuple(ds.x.shape[2:]), data_name)):
        check.add(f"{path}.params.patch", problem)
    for j, model in enumerate(loaded):
        if model is None:
            continue
        label = f"models[{j}] ({models[j].name})"
        if model.task is not None and model.task not in entry.tasks:
            check.add(f"{path}.{kind}", f"{works} but {label} is a {_noun(model.task)}")
        elif entry.requires_module(params) and not isinstance(model.module, nn.Module):
            check.add(f"{path}.{kind}", f"{entry.name} needs a torch.nn.Module model, {label} is "
                      f"{type(model.module).__name__}")
        elif (found := module_problem(entry, params, model.module)) is not None:
            why, instead = found
            hint = "".join(f", or set {path}.params.{k} to {v} (--attack {entry.name}:{k}={v})" for k, v in
                           instead.items()) if kind == "attack" else ", or another explainer"
            check.add(f"{path}.{kind}", f"{entry.name} cannot run on {label}: {why}; use the eager model "
                      f"(checkpoint folder or module:factory){hint}")
        elif entry.extra.get("hooks") and _scripted_layer(model.module, params.get("layer")):
            check.add(f"{path}.{kind}", f"{entry.name} needs forward hooks on the model's layers, which "
                      f"TorchScript models such as {label} do not support")
        elif entry.extra.get("hooks") and any(mode_is_fixed(m) for m in model.module.modules()):
            check.add(f"{path}.{kind}", f"{entry.name} needs forward hooks on the model's layers, and "
                      f"{label} is a torch.export module, which runs its graph without calling its layers")
        elif "layer" in entry.param_map and isinstance(model.module, nn.Module):
            problem = _layer_problem(model.module, params.get("layer"))
            if problem is None and ds is not None:
                problem = _layer_output_problem(entry, model.module, params.get("layer"), ds)
            if problem:
                check.add(f"{path}.params.layer", f"{problem} in {label}")


def module_problem(entry: registry.Entry, params: dict[str, Any], model: Any) -> tuple[str, dict[str, Any]] | None:
    """Why ``entry`` with ``params`` cannot run on ``model`` by its own ``model_check`` (salmap's code:
    ISI's relevance needs LRP's layers, which TorchScript lacks), without the library's advice, and
    the parameter values with which it needs no module (``{"indicator": "sensitivity"}``); or None."""
    try:
        entry.check_module(model, params)
    except ValueError as err:
        needs = entry.needs_module if isinstance(entry.needs_module, dict) else {}
        instead = {k: next((c for c in entry.param_map[k].choices or () if c != v), None) for k, v in needs.items()}
        return str(err).split(";")[0], {k: v for k, v in instead.items() if v is not None}
    return None


def _scripted_layer(module: nn.Module, layer: Any) -> bool:
    """Whether the layer a hooking explainer would hook (``layer``, or the default) is TorchScript."""
    from salmap.explain.gradcam import default_layer, find_layer

    if isinstance(module, torch.jit.ScriptModule):
        return True
    try:
        return isinstance(find_layer(module, default_layer(module) if layer is None else layer), torch.jit.ScriptModule)
    except ValueError:
        return False  # a wrong name is reported by the layer check


def _layer_output_problem(entry: registry.Entry, module: nn.Module, layer: Any, ds: datasets.Dataset) -> str | None:
    """Why Grad-CAM cannot use ``layer``'s output (an MLP's ``(B, features)``), found on the data's first
    sample before any work (:meth:`salmap.explain.GradCAM.check_layer`), or None (other explainers too)."""
    from salmap.explain import GradCAM

    if not (isinstance(entry.cls, type) and issubclass(entry.cls, GradCAM)):
        return None
    try:
        GradCAM(module, layer).check_layer(ds.x[:1], "layer")
    except ValueError as err:
        return str(err)
    return None


def _layer_problem(module: nn.Module, layer: Any) -> str | None:
    """Why ``layer`` (a dotted module name, or None for the default) is not usable, or None."""
    from salmap.explain.gradcam import default_layer

    names = [n for n, _ in module.named_modules() if n]
    if layer is None:
        try:
            default_layer(module)
        except ValueError as err:
            return str(err)
        return None
    if layer in names:
        return None
    close = difflib.get_close_matches(str(layer), names, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"top-level modules: {', '.join(n for n in names if '.' not in n)}"
    return f"{layer!r} is not a module name ({hint})"


__all__ = [
    "LoadedModel", "Resources", "bounds_from_meta", "check_resources", "load_model", "load_split", "model_task",
    "module_problem", "open_resources",
]
