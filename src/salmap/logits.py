"""What a model's output holds: the logits salmap differentiates, whatever the model returns.

salmap works on logits (classifiers ``(B, K)``, segmenters ``(B, K, H, W)``). Models met in
the wild return more: a tuple ``(logits, aux)``, a dict, or a HuggingFace ``ModelOutput``
(``ImageClassifierOutput`` and friends). :func:`logits_of` is the one place that reduces
them; :func:`salmap.gradients.forward` applies it to every forward pass of every attack and
explainer, and :class:`salmap.models.SelectOutput` picks another entry than the default.
Floor 1: the gradient machinery needs it, so it lives below ``models/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["DEFAULT_KEY", "OutputError", "logits_of"]

class OutputError(ValueError):
    """A model's output holds no logits salmap can find (a missing key, an unknown type): the model
    ran, so checks that run it on one sample report this as it is, not as an input-shape problem."""


#: The entry taken from dicts and ``ModelOutput`` objects when no ``output_key`` is given.
DEFAULT_KEY = "logits"


def logits_of(out: Any, output_key: str | None = None) -> Tensor:
    """The logits in a model's output.

    A tensor is returned as it is; a tuple or list gives its first element; a dict or a
    ``ModelOutput`` (any mapping) gives the entry ``output_key`` (default ``"logits"``).

    Raises
    ------
    ValueError
        When the key is missing (the keys found are listed) or the output is of another type.
    """
    if isinstance(out, Tensor):
        if output_key is not None:
            raise OutputError(f"output_key={output_key!r} names an entry, but the model returned a plain tensor")
        return out
    if isinstance(out, Mapping):
        key = DEFAULT_KEY if output_key is None else output_key
        if key not in out:
            found = ", ".join(repr(k) for k in out.keys()) or "none"
            how = "" if output_key is not None else " (pass output_key= / --output-key to pick another)"
            raise OutputError(
                f"model output {type(out).__name__} has no key {key!r}{how}; keys found: {found}"
            )
        return logits_of(out[key])
    if isinstance(out, (tuple, list)):
        if output_key is not None:
            raise OutputError(
                f"output_key={output_key!r} names an entry, but the model returned a {type(out).__name__}"
            )
        if not out:
            raise OutputError(f"model returned an empty {type(out).__name__}; expected logits first")
        return logits_of(out[0])
    raise OutputError(
        f"model output must be a tensor, a tuple/list (logits first), a dict or a ModelOutput "
        f"(with 'logits'), got {type(out).__module__}.{type(out).__qualname__}"
    )
