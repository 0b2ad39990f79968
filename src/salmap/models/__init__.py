"""The model zoo (lenet, resnet18/34, unet) and checkpoint save/load."""

from salmap.models.checkpoint import load, load_with_meta, read_meta, save
from salmap.models.registry import available, build, register

__all__ = ["available", "build", "load", "load_with_meta", "read_meta", "register", "save"]
