"""Output adapters: :class:`SelectOutput` returns another entry of a model's output than its logits.

:func:`logits_of` (re-exported here) is in :mod:`salmap.logits`, the one place that reduces
tuples, dicts and ``ModelOutput``s to their logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from salmap.logits import DEFAULT_KEY, logits_of

__all__ = ["DEFAULT_KEY", "SelectOutput", "logits_of"]


class SelectOutput(nn.Module):
    """Wraps ``model`` so that its forward returns the entry ``output_key`` of its output.

    For models whose dict / ``ModelOutput`` holds the wanted scores under another name than
    ``logits``; tuples and plain tensors need no wrapper (see :func:`logits_of`).

    Parameters
    ----------
    model: the wrapped module (kept as ``self.model``; its parameters are this module's).
    output_key: the entry to return.

    Examples
    --------
    >>> scored = SelectOutput(net, output_key="scores")   # doctest: +SKIP
    """

    salmap_wraps = True

    def __init__(self, model: nn.Module, output_key: str) -> None:
        super().__init__()
        if not isinstance(output_key, str) or not output_key:
            raise ValueError(f"output_key must be a non-empty string, got {output_key!r}")
        self.model = model
        self.output_key = output_key

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x), self.output_key)

    def extra_repr(self) -> str:
        return f"output_key={self.output_key!r}"
