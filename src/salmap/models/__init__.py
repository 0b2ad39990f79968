"""The model zoo (lenet, resnet18/34, unet), checkpoint save/load, ``Normalized`` and output adapters."""

# The zoo's architectures register themselves when imported.
from salmap.models import lenet, resnet, unet  # noqa: F401
from salmap.models.checkpoint import load, load_with_meta, read_meta, save
from salmap.models.normalized import Normalized
from salmap.models.outputs import SelectOutput, logits_of
from salmap.models.registry import add_provider, available, build, register
from salmap.models.scripted import save_torchscript, to_torchscript

__all__ = [
    "Normalized", "SelectOutput", "add_provider", "available", "build", "load", "load_with_meta", "logits_of",
    "read_meta", "register", "save", "save_torchscript", "to_torchscript",
]
