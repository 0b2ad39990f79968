"""The metrics moved to :mod:`salmap.metrics` (floor 1); this module re-exports them."""

from salmap.metrics import *  # noqa: F403
from salmap.metrics import __all__  # noqa: F401
