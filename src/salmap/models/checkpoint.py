"""Saving and loading models: checkpoint folders, TorchScript, torch.export, factories.

A checkpoint folder holds ``weights.safetensors`` and ``model.json`` (architecture name and arguments, input
shape, bounds, normalisation, class names, metrics at save time). Model files are untrusted: nothing pickled
is loaded without ``weights_only=True``; a ``torch.export`` archive (which torch can only load by unpickling)
needs ``trust=True``; a ``module:factory`` source ``allow_code=True``; what a ``model.json`` declares is
checked against the weights file before any memory is allocated for it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from salmap._repr import short
from salmap.models.factory import is_factory_spec, load_factory
from salmap.models.metadata import check_meta
from salmap.models.normalized import Normalized, parse_normalization
from salmap.models.outputs import SelectOutput
from salmap.models.registry import build
from salmap.models.scripted import TORCHSCRIPT, load_torchscript_folder

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
META = "model.json"
FORMAT_VERSION = 1


def save(model: nn.Module, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as a checkpoint folder (``weights.safetensors`` + ``model.json``).

    The architecture comes from ``meta["arch"]`` (``{"name": ..., "kwargs": {...}}``) or from the model if
    :func:`salmap.models.build` made it. Other keys of ``meta`` (``input_shape``, ``bounds``, ``normalization``,
    ``class_names``, ``metrics``, ...) are stored as given. Returns the folder. Files get the umask's permissions.
    """
    meta = dict(meta or {})
    if isinstance(model, Normalized):
        # The network is saved; its normalisation goes to model.json and is applied again on load.
        meta["normalization"] = {"mean": model.mean.tolist(), "std": model.std.tolist()}
        model = model.model
    arch = meta.get("arch") or getattr(model, "salmap_arch", None)
    if not arch or "name" not in arch:
        raise ValueError(
            "meta['arch'] must name the architecture ({'name': ..., 'kwargs': {...}}) for a model "
            f"not built by salmap.models.build, got {arch!r} (save others with salmap.models.save_torchscript)"
        )
    meta["arch"] = {"name": arch["name"], "kwargs": dict(arch.get("kwargs", {}))}
    meta["format_version"] = FORMAT_VERSION
    meta["schema_version"] = FORMAT_VERSION  # the key every JSON salmap writes carries
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    (folder / WEIGHTS).write_bytes(safetensors_bytes(state))  # (save_file would make it owner-only)
    (folder / META).write_text(json.dumps(meta, indent=2, default=_jsonable))
    return folder


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"meta value of type {type(value).__name__} is not JSON-serialisable")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a checkpoint folder."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"checkpoint {folder} has no {META}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint file {path} is not valid JSON: {err}") from None
    scripted = isinstance(meta, dict) and meta.get("format") == TORCHSCRIPT and "arch" not in meta
    if not scripted and (not isinstance(meta, dict) or not isinstance(meta.get("arch"), dict)
                         or "name" not in meta["arch"]):
        raise ValueError(f"checkpoint file {path} must hold an object with arch.name, got {str(meta)[:80]}")
    check_meta(meta, path)
    return meta


def load_with_meta(
    source: str | Path,
    arch: str | None = None,
    *,
    normalization: Any = None,
    output_key: str | None = None,
    trust: bool = False,
    allow_code: bool = False,
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model and its metadata (empty when the source carries none).

    ``source`` may be a checkpoint folder, a state-dict file with ``arch``, a TorchScript or
    ``torch.export`` (``.pt2``) file, a Keras 3 ``.keras`` file (needs ``pip install
    salmap[keras]``; see :mod:`salmap.models.keras`) or ``"package.module:factory"`` called
    with ``kwargs`` (see :func:`_load_model`). A ``.pt2`` archive needs ``trust=True`` (torch
    loads it by unpickling, which runs any code its author put in it); a factory needs
    ``allow_code=True``.

    The model is wrapped in :class:`~salmap.models.Normalized` when ``normalization``
    (``{"mean": [...], "std": [...]}`` or a ``(mean, std)`` pair) is given or ``model.json``
    holds one (the argument wins), and in :class:`~salmap.models.SelectOutput` when
    ``output_key`` names the entry of a dict / ``ModelOutput`` to attack. The metadata's
    ``normalization`` is the one applied.
    """
    if str(source).endswith(".keras"):
        from salmap.models.keras import load_keras

        model: nn.Module = load_keras(source)
        meta: dict[str, Any] = {}
    else:
        model, meta = _load_model(source, arch, trust=trust, allow_code=allow_code, **kwargs)
    norm = normalization if normalization is not None else meta.get("normalization")
    if norm is not None:
        mean, std = normalization_pair(norm)
        shape = meta.get("input_shape")
        channels = int(shape[0]) if isinstance(shape, (list, tuple)) and shape else None
        mean, std = parse_normalization(mean, std, channels)
        if normalization is not None and meta.get("normalization"):
            log.warning("model %s: normalization %s replaces the one in its model.json", source, {"mean": mean, "std": std})
        model = Normalized(model, mean, std)
        meta = {**meta, "normalization": {"mean": mean, "std": std}}
    if output_key is not None:
        model = SelectOutput(model, output_key)
    return model, meta


def normalization_pair(norm: Any) -> tuple[Any, Any]:
    """``(mean, std)`` from ``{"mean": ..., "std": ...}`` or a pair."""
    if isinstance(norm, dict):
        missing = [k for k in ("mean", "std") if k not in norm]
        if missing or set(norm) - {"mean", "std"}:
            raise ValueError(f"normalization must be {{'mean': [...], 'std': [...]}}, got keys {sorted(norm)}")
        return norm["mean"], norm["std"]
    if isinstance(norm, (list, tuple)) and len(norm) == 2:
        return norm[0], norm[1]
    raise ValueError(f"normalization must be {{'mean': [...], 'std': [...]}} or a (mean, std) pair, got {norm!r}")


def _load_model(
    source: str | Path, arch: str | None = None, *, trust: bool = False, allow_code: bool = False, **kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model and its metadata (empty when the source carries none), before wrapping.

    ``source`` may be:

    - a checkpoint folder (``weights.safetensors`` or, :mod:`salmap.models.scripted`, ``model.ts`` + ``model.json``);
    - a ``.safetensors`` or pickled state-dict file together with ``arch`` (a zoo name)
      and its ``kwargs``; pickles are read with ``weights_only=True`` only;
    - a TorchScript file (``torch.jit.save``);
    - a ``torch.export`` archive (``.pt2``): only with ``trust=True``, since torch loads
      those by unpickling, which can run any code the file's author wrote;
    - ``"package.module:factory"``: only with ``allow_code=True``; the factory is called
      with ``kwargs``.

    Parameters
    ----------
    source: where the model is (see above); a ``torch.nn.Module`` needs no loading (is refused).
    arch: zoo architecture of a bare state-dict file.
    trust: load a ``torch.export`` archive (unpickling it): only for files you trust.
    allow_code: import and call a ``module:factory`` source.
    kwargs: the architecture's or factory's arguments.

    Returns
    -------
    (model, meta): the model in eval mode and its ``model.json`` (or a stand-in), unwrapped.
    """
    if not isinstance(source, (str, Path)):
        raise ValueError(f"model must be a checkpoint folder, model file or 'module:factory', got {type(source).__name__}")
    path = Path(text := str(source))
    if not path.exists() and is_factory_spec(text):
        return load_factory(text, allow_code=allow_code, **kwargs), {}
    if path.is_file() and path.name == META:
        path = path.parent
    if kwargs and (path.is_dir() or (path.is_file() and arch is None)):  # ignored otherwise: the file fixes them
        raise ValueError(f"model arguments {short(kwargs)} (--model-arg) apply to a module:factory or a state dict "
                         f"with arch=, not to {'checkpoint folder' if path.is_dir() else 'model file'} {text!r}, "
                         "whose file fixes them")
    if path.is_dir():
        meta = read_meta(path)
        if meta.get("format") == TORCHSCRIPT:
            return load_torchscript_folder(path), meta
        model = _build_checked(meta["arch"]["name"], meta["arch"].get("kwargs", {}), path / WEIGHTS)
        _load_state(model, path / WEIGHTS)
        return model.eval(), meta
    if not path.is_file():
        raise ValueError(f"model must be a checkpoint folder, model file or 'module:factory', got {text!r} (not found)")
    if arch is not None:
        model = _build_checked(arch, kwargs, path) if path.suffix == ".safetensors" else build(arch, **kwargs)
        _load_state(model, path)
        return model.eval(), {"arch": {"name": arch, "kwargs": kwargs}}
    if path.suffix != ".pt2" and zipfile.is_zipfile(path):
        try:
            # TorchScript's own unpickler restores tensors and TorchScript classes only.
            return torch.jit.load(str(path), map_location="cpu").eval(), {}
        except Exception:
            pass
    if path.suffix == ".pt2" or _is_export_archive(path):
        return _load_exported(path, trust), {}
    raise ValueError(
        f"model file {path} is neither TorchScript nor a torch.export archive; for a state dict pass "
        "arch=<zoo name> (and its arguments) to salmap.models.load, which the command line cannot: give it a "
        "checkpoint folder (salmap.models.save), a TorchScript file or module:factory (a whole pickled model, "
        "torch.save(model), is never unpickled)"
    )


def load(
    source: str | Path, arch: str | None = None, *, normalization: Any = None, output_key: str | None = None,
    trust: bool = False, allow_code: bool = False, **kwargs: Any,
) -> nn.Module:
    """Load a model (see :func:`load_with_meta` for what ``source`` may be)."""
    return load_with_meta(source, arch, normalization=normalization, output_key=output_key, trust=trust,
                          allow_code=allow_code, **kwargs)[0]


def _is_export_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith(("archive_format", "/models/model.json")) or "/serialized_" in n for n in names)


def _load_exported(path: Path, trust: bool) -> nn.Module:
    if not trust:
        raise ValueError(
            f"model file {path} is a torch.export archive, which torch loads by unpickling: a hostile "
            "file runs code when loaded. Load it only if you trust it: trust=True (command line: "
            "--trust-model), or save the model as a checkpoint folder (salmap.models.save) or TorchScript"
        )
    try:
        return torch.export.load(str(path)).module()
    except Exception as err:
        raise ValueError(f"model file {path} is not a readable torch.export archive: {err}") from None


def _build_checked(name: str, kwargs: dict[str, Any], weights: Path) -> nn.Module:
    """Build ``name(**kwargs)`` once its tensors' shapes match ``weights`` (read from the
    file's header): a ``model.json`` that declares a huge model allocates nothing.

    The skeleton is built on the meta device; an architecture that computes with tensors
    while it is built (and so cannot be built there) is built for real and checked by
    ``load_state_dict``; its own argument checks still come first.
    """
    try:
        with torch.device("meta"):
            skeleton = build(name, **kwargs)
    except Exception:  # noqa: BLE001 -- the real build below raises the argument errors, if any
        return build(name, **kwargs)
    declared = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if weights.suffix == ".safetensors" and weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as fh:
                stored = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except Exception as err:
            raise ValueError(f"weights file {weights} could not be read safely: {err}") from None
        if stored != declared:
            missing = sorted(set(declared) - set(stored))[:3]
            unexpected = sorted(set(stored) - set(declared))[:3]
            wrong = [f"{k}: {stored[k]} vs {declared[k]}" for k in declared if k in stored and stored[k] != declared[k]][:3]
            raise ValueError(
                f"weights file {weights} does not match the architecture {name} {kwargs}: "
                f"missing {missing}, unexpected {unexpected}, shapes (file vs model) {wrong}"
            )
    return build(name, **kwargs)


def _load_state(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"weights file {path} could not be read safely: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} must hold a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"weights file {path} does not match the architecture: {err}") from None

