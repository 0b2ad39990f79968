"""What input a model expects, and a check on one sample that the data fits it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from salmap.logits import OutputError
from salmap.models.normalized import Normalized
from salmap.models.outputs import logits_of


def expected_input_shape(model: Any, meta: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
    """The ``(C, H, W)`` a model expects (``None`` for a size it leaves open), when known:
    ``model.json``'s ``input_shape``, or a Keras model's input shape."""
    shape = (meta or {}).get("input_shape")
    if isinstance(shape, (list, tuple)) and shape:
        return tuple(shape)
    inner = model
    for _ in range(8):
        if getattr(inner, "salmap_keras", False):
            return tuple(inner.input_shape) or None
        if not getattr(inner, "salmap_wraps", False):
            break
        inner = inner.model
    return None


def model_channels(model: Any, meta: dict[str, Any] | None = None) -> int | None:
    """The number of input channels a model takes, when it can be told without running it:
    from its expected input shape, a :class:`Normalized` wrapper's mean, or its first convolution."""
    shape = expected_input_shape(model, meta)
    if shape and isinstance(shape[0], int):
        return int(shape[0])
    if isinstance(model, Normalized) and model.mean.numel() > 1:
        return int(model.mean.numel())
    if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                return int(m.in_channels)
    return None


def error_text(err: BaseException) -> str:
    """The text of a model's error, with a TorchScript model's reason in place of its traceback:
    TorchScript's message starts with a fixed line and ends with what went wrong."""
    text = str(err).strip()
    if text.startswith("The following operation failed in the TorchScript interpreter"):
        reason = text.splitlines()[-1].strip()
        return reason.split(": ", 1)[1] if reason.split(": ", 1)[0].endswith(("Error", "Exception")) else reason
    return text


def check_fits(model: Any, sample: Tensor, meta: dict[str, Any] | None = None, data: str = "the data",
               task: str = "classification") -> Tensor:
    """Run ``model`` on one sample ``(1, C, H, W)`` and return its output; a ``ValueError`` with
    both shapes when the model's declared input shape or its forward pass does not fit, and what
    helps: resizing for classification images, other data or another model for segmentation ``task``
    (whose masks are not resized)."""
    got = tuple(sample.shape[1:])
    expected = expected_input_shape(model, meta)
    if expected is not None:
        fits = len(expected) == len(got) and all(e is None or int(e) == g for e, g in zip(expected, got, strict=False))
        if not fits:
            helps = "resize with --image-size N (data.image_size) or pick data of the model's channels" \
                if task == "classification" else (f"pick {task} data of that shape or a model that takes {data}'s "
                                                   "samples (--image-size resizes classification images only)")
            raise ValueError(f"the model expects inputs of shape {expected} but {data} has samples of shape {got}; {helps}")
    try:
        with torch.no_grad():
            return logits_of(model(sample))
    except OutputError:
        raise
    except (RuntimeError, ValueError) as err:
        text = error_text(err)
        first = text.splitlines()[0] if text else type(err).__name__
        channels = model_channels(model, meta)
        want = f" (expects {expected})" if expected is not None else f" (takes {channels} channels)" if channels else ""
        raise ValueError(f"the model{want} cannot run on samples of shape {got} from {data}: {first}") from None


def check_labels(y: Tensor, logits: Tensor, data: str = "the data") -> None:
    """A ``ValueError`` naming ``data`` when a classifier's labels ``y`` reach past its ``(B, K)``
    outputs (an attack on the true labels could not score them), found before any work."""
    if logits.dim() != 2 or y.dim() != 1 or not y.numel() or y.is_floating_point():
        return
    high, classes = int(y.max()), int(logits.shape[1])
    if high >= classes:
        raise ValueError(
            f"{data} has labels up to {high} but the model has {classes} outputs (classes 0 to {classes - 1}); "
            "pick data labelled with the model's classes"
        )
