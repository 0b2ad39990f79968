"""What a ``model.json`` may declare: the fields salmap reads, checked before they are used.

A checkpoint's metadata is untrusted input like its weights: bounds given as a string,
a class count of 1e12 or an input of 20000x20000 pixels must fail with a message that
names the file and the field, before anything is built or allocated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Limits on what a ``model.json`` may declare (far above any model salmap builds).
MAX_CLASSES = 1_000_000
MAX_SIDE = 65_536
MAX_INPUT_FEATURES = 2**28


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """Check the fields of ``model.json`` that salmap reads (types and sizes), naming ``path`` on error."""

    def fail(key: str, expected: str, value: Any) -> None:
        text = repr(value)
        raise ValueError(f"checkpoint file {path}: {key} must be {expected}, got {text[:80]}")

    arch = meta.get("arch", {})  # absent in a TorchScript folder (salmap.models.scripted)
    if "arch" in meta and not isinstance(arch.get("name"), str):
        fail("arch.name", "a string", arch.get("name"))
    if not isinstance(arch.get("kwargs", {}), dict):
        fail("arch.kwargs", "an object", arch.get("kwargs"))
    bounds = meta.get("bounds")
    if bounds is not None and not _is_bounds(bounds):
        fail("bounds", "a pair [low, high] of finite numbers (or of per-channel lists) with low < high", bounds)
    shape = meta.get("input_shape")
    if shape is not None:
        if not isinstance(shape, list) or not shape or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in shape):
            fail("input_shape", f"a list of integers in [1, {MAX_SIDE}] like [1, 28, 28]", shape)
        if math.prod(shape) > MAX_INPUT_FEATURES:
            fail("input_shape", f"at most {MAX_INPUT_FEATURES} features per sample", shape)
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            fail("class_names", "a list of strings", names)
        if len(names) > MAX_CLASSES:
            fail("class_names", f"at most {MAX_CLASSES} names", f"{len(names)} names")
    num = meta.get("num_classes", arch.get("kwargs", {}).get("num_classes"))
    if num is not None and not (_is_int(num) and 1 <= num <= MAX_CLASSES):
        fail("num_classes", f"an integer in [1, {MAX_CLASSES}]", num)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_bounds(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    low, high = value
    if _is_number(low) and _is_number(high):
        return bool(low < high)
    lows = [low] if _is_number(low) else low
    highs = [high] if _is_number(high) else high
    if not (isinstance(lows, list) and isinstance(highs, list) and lows and highs):
        return False
    if not all(_is_number(v) for v in lows + highs):
        return False
    if len(lows) != len(highs) and 1 not in (len(lows), len(highs)):
        return False
    n = max(len(lows), len(highs))
    lows, highs = lows * (n // len(lows)), highs * (n // len(highs))
    return all(a < b for a, b in zip(lows, highs, strict=True))
