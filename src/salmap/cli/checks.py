"""Checks of a command's arguments made before any work: the output folder can be made and written,
``-n`` against the data, the ``--data`` name, ``--seed``, Grad-CAM's ``--layer``; library errors
renamed by the flag that set the parameter. Each failure is a ``ValueError`` naming the flag, the
value and what was expected (one line on stderr, exit status 2)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: the largest float32
FLOAT32_MAX = 3.4028234663852886e38


def check_output_path(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that results can be written to the folder ``path``.

    The folder must be a folder (or not exist yet, below a writable folder) and writable. A
    missing folder is created and removed again, so that what only trying finds (``/proc/x``, a
    name too long) fails now. Raises ``ValueError`` naming ``flag``, the path and why otherwise.
    """
    out = Path(path).expanduser()
    if _exists(out) and not out.is_dir():
        raise ValueError(f"{flag} must be a folder, but {out} is a file")
    existing = out
    while not _exists(existing):
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{flag} {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == out else f"cannot be created: {existing} is"
        raise ValueError(f"{flag} {out} {what} not writable (read-only folder or file system)")
    if existing != out:
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            return out  # made meanwhile by another process (another rank of the same torchrun run)
        except OSError as err:
            raise ValueError(f"{flag} {out} cannot be created: {err.strerror or err}") from None
        for made in (out, *out.parents):  # remove only the folders made here (empty, salmap's own)
            if made == existing:
                break
            try:
                made.rmdir()
            except OSError:  # written into or removed meanwhile by another process: leave it
                break
    return out


def check_learning_rate(flag: str, value: float) -> None:
    """``--lr`` within float32, the optimisers' arithmetic (past it the first step fails in torch,
    with a message that names no flag); its lower limit is checked with the other numbers."""
    if value > FLOAT32_MAX:
        raise ValueError(f"{flag} must be at most {FLOAT32_MAX:.4g} (the largest float32), got {value:g}")


def check_checkpoint_out(path: str | Path, overwrite: bool) -> Path:
    """``--out`` of a command that writes a checkpoint folder: :func:`check_output_path`, and no
    checkpoint there already (``model.json``, ``weights.safetensors``) unless ``overwrite``; the
    folder's other files are left as they are."""
    from salmap.models.checkpoint import META, WEIGHTS

    out = check_output_path(path)
    held = [name for name in (META, WEIGHTS) if _exists(out / name)]
    if held and not overwrite:
        raise ValueError(f"--out {out} already holds {' and '.join(held)}: give --overwrite to replace that "
                         "checkpoint, or another folder")
    return out


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long: found by trying to create it
        return False


def take(num: int | None, available: int, data: str, split: str, default: int, flag: str = "-n",
         what: str | None = None) -> int:
    """How many of a split's ``available`` samples ``flag`` takes: ``num`` (``default`` when the flag
    was not given), at most all of them; a ``num`` past them prints one line saying so (``what``
    names the samples there are, by default the split's images of ``data``)."""
    if num is not None and num <= 0:
        raise ValueError(f"{flag} must be positive, got {num}")
    if num is not None and num > available:
        if what is None:
            what = (f"{split} images" if split in ("train", "test") else "images (train and test)") + f" of {data}"
        print(f"{flag} {num} is more than the {available:,} {what}: using all {available:,}", flush=True)
    return min(default if num is None else num, available)


def check_data_name(name: str, flag: str = "--data") -> None:
    """``flag`` must name a built-in dataset or ``kind:PATH`` of a known kind whose path is there (a
    folder, or an ``npz:`` file; the loader checks what is in it), else a ``ValueError`` naming the flag,
    the value and the names known or what is wrong with the path."""
    from salmap import data as datasets
    from salmap.data.registry import path_problem

    known = datasets.available()
    kinds = [k.partition(":")[0] for k in known if k.endswith(":PATH")]
    kind, sep, path = name.partition(":")
    if name in known or (sep and kind in kinds and path):
        if problem := path_problem(name):  # a folder: or idx: folder, an npz: file that is not there
            raise ValueError(f"{flag} {name!r}: {problem}")
        return
    if sep and kind in kinds:
        raise ValueError(f"{flag} {name!r} needs a path after '{kind}:'")
    close = difflib.get_close_matches(name, [k for k in known if not k.endswith(":PATH")], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{flag} must be a dataset name or kind:PATH, one of {known}, got {name!r}{hint}")


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``flag`` must be an integer in ``[0, 2**63 - 1]``, in every command: the library's seeds
    (:func:`salmap._validate.check_seed`, PGD's and occlusion's) and a run file's ``seed`` take no
    negative value, and ``torch.manual_seed`` would silently take -1 as 2**64 - 1."""
    from salmap._validate import MAX_SEED

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{flag} must be an integer from 0 to 2**63 - 1, got {seed}")
    return seed


def flag_of(args: Any, scope: str, param: str) -> str:
    """The flag that set parameter ``param`` of ``scope`` (an explainer): ``--SCOPE-PARAM`` when that
    was given (``--gradcam-layer``), else the shared ``--PARAM``."""
    scoped = vars(args).get(f"{scope}.{param}") is not None
    return "--" + (f"{scope}-{param}" if scoped else param).replace("_", "-")


def named_by_flag(err: ValueError, params: Iterable[str], flag: Callable[[str], str]) -> ValueError:
    """A library error that starts with a parameter's name (``layer is needed: ...``) as the same
    error naming the flag instead (``--layer is needed: ...``); any other error as it is."""
    text = str(err)
    for param in sorted(params, key=len, reverse=True):
        if text.startswith(f"{param} "):
            return ValueError(f"{flag(param)}{text[len(param):]}")
    return err


def check_layer(model: Any, layer: str, flag: str = "--layer", source: str = "the model") -> None:
    """``flag`` must name a module of ``model`` (dotted, as Grad-CAM takes it; the network's own
    names inside salmap's wrappers too), else a ``ValueError`` naming the flag and the value, with
    the close name (did you mean) and the model's layers down to two levels."""
    from salmap.explain.gradcam import find_layer
    from salmap.models.normalized import unwrap

    try:
        find_layer(model, layer)
        return
    except ValueError:
        pass
    names = [n for n, _ in unwrap(model).named_modules() if n]
    close = difflib.get_close_matches(layer, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = [n for n in names if n.count(".") <= 1]
    deeper = ", and the layers inside them by dotted name" if len(shown) < len(names) else ""
    if len(shown) > 40:
        shown = [*shown[:40], f"... ({len(shown)} in all)"]
    raise ValueError(f"{flag} {layer!r} is not a layer of {source}{hint}; its layers: {', '.join(shown)}{deeper}")


__all__ = ["check_data_name", "check_layer", "check_output_path", "check_seed", "flag_of", "named_by_flag", "take"]
