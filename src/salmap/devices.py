"""Which device to run on: ``"auto"`` is CUDA when it is available, else the CPU."""

from __future__ import annotations

import torch

#: The device names the command line and run files accept.
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = "auto") -> str:
    """The device to use for ``name``: ``"auto"`` (or None) becomes ``"cuda"`` when CUDA is
    available and ``"cpu"`` otherwise; any other name is returned as torch spells it.

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") in ("cpu", "cuda")
    True
    """
    if name is None or str(name) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(name))
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be {DEVICE_HELP}, got {str(name)!r}") from None


def describe_device(name: str | torch.device) -> str:
    """A one-line description of a device for people: ``"cuda:0 (NVIDIA H100 80GB HBM3)"``."""
    device = torch.device(name)
    if device.type == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
