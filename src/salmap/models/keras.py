"""Keras 3 models (``.keras`` files) as torch modules, through Keras' torch backend.

With ``KERAS_BACKEND=torch``, a Keras 3 model *is* a ``torch.nn.Module`` whose layers run
torch operations, so salmap's gradients flow through it like through any PyTorch model.
:class:`KerasModel` adapts what differs: Keras images are channels-last ``(B, H, W, C)``
(salmap's are ``(B, C, H, W)``), a final softmax is undone (salmap attacks logits), and the
layers are reachable by their Keras names (for Grad-CAM). Needs ``pip install salmap[keras]``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

INSTALL = "pip install 'salmap[keras]'"


def import_keras() -> Any:
    """Keras 3 on its torch backend, or a ``ValueError`` saying what to install or set."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        keras = importlib.import_module("keras")
    except ImportError:
        raise ValueError(f"loading a .keras model needs Keras 3 with its torch backend: {INSTALL}") from None
    version = str(getattr(keras, "__version__", "0"))
    if int(version.split(".")[0] or 0) < 3:
        raise ValueError(f"loading a .keras model needs Keras 3 (found Keras {version}): {INSTALL}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ValueError(
            f"Keras runs on its {backend!r} backend in this process; salmap needs the torch backend: "
            "set KERAS_BACKEND=torch before Keras is imported"
        )
    return keras


class KerasModel(nn.Module):
    """A Keras 3 model (torch backend) taking and returning torch tensors the salmap way.

    Parameters
    ----------
    model: the Keras model (a ``torch.nn.Module`` on the torch backend).
    channels_last: whether the model takes ``(B, H, W, C)`` images; default read from its
        input shape (a last dimension of 1, 3 or 4 channels).
    undo_softmax: return ``log`` of the probabilities when the last layer ends in a softmax
        (``log p`` are logits of the same softmax); default: when it does.

    Its layers are attributes named as in Keras (``GradCAM(model, layer="conv1")``); their
    channels-last activations are read as such by Grad-CAM.
    """

    salmap_keras = True

    def __init__(self, model: Any, channels_last: bool | None = None, undo_softmax: bool | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"the Keras model must run on the torch backend (a torch.nn.Module), got {type(model).__name__}; "
                "set KERAS_BACKEND=torch before Keras is imported"
            )
        self.model = model
        shape = tuple(getattr(model, "input_shape", ()) or ())
        if channels_last is None:
            channels_last = len(shape) >= 3 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4)
        self.channels_last = bool(channels_last)
        #: the input shape salmap sees, (C, H, W) (None where Keras leaves it open)
        self.input_shape = (shape[-1], *shape[1:-1]) if self.channels_last and len(shape) >= 3 else shape[1:]
        self.undo_softmax = _ends_in_softmax(model) if undo_softmax is None else bool(undo_softmax)
        if self.undo_softmax:
            log.info("Keras model ends in a softmax: salmap attacks log-probabilities as its logits")
        for layer in getattr(model, "layers", []):
            name = getattr(layer, "name", "")
            if isinstance(layer, nn.Module) and name.isidentifier() and not hasattr(self, name):
                self.add_module(name, layer)

    @property
    def layers_channels_last(self) -> bool:
        """Whether hidden image activations are ``(B, *spatial, C)`` (Grad-CAM reads them so)."""
        return self.channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() >= 3:
            x = x.movedim(1, -1)
        out = self.model(x, training=False)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.undo_softmax:
            out = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        return out


def _ends_in_softmax(model: Any) -> bool:
    layers = getattr(model, "layers", None) or []
    if not layers:
        return False
    last = layers[-1]
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def load_keras(path: str | Path) -> KerasModel:
    """Load a ``.keras`` file (Keras 3, safe mode: no code from the file runs) as a :class:`KerasModel`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Keras model file {path} does not exist")
    keras = import_keras()
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for a bad archive
        raise ValueError(f"Keras model file {path} could not be loaded: {err}") from None
    return KerasModel(model)
