"""Writing salmap's files atomically: JSON documents (with ``schema_version``) and safetensors;
reading safetensors back.

A file written here holds either nothing or all of it (a temporary name, flushed, then
renamed), so a run killed at any moment never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

#: version of every JSON document salmap writes (see docs/schema.md); 2: metrics name what they average
SCHEMA_VERSION = 2


def clean_json(value: Any) -> Any:
    """``value`` with NaN/inf as None, tuples as lists and tensors as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, Tensor):
        return clean_json(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that ``path`` holds either nothing or all of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write a JSON document (with ``schema_version`` first) atomically; NaN written as null."""
    document = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in payload.items() if k != "schema_version"}}
    atomic_write(path, (json.dumps(clean_json(document), indent=2, allow_nan=False) + "\n").encode())
    return path


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write safetensors atomically, with the permissions of the user's umask (``save_file`` gives 0600)."""
    atomic_write(path, safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def load_tensors(path: Path, what: str = "tensor file") -> dict[str, Tensor]:
    """The tensors of a safetensors file salmap wrote; a damaged or truncated one is a ``ValueError``
    naming ``what`` and the file (not safetensors' own error, which names no file)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what} {path} could not be read ({type(err).__name__}: {err})") from None


__all__ = ["SCHEMA_VERSION", "atomic_write", "clean_json", "load_tensors", "save_tensors", "write_json"]
