"""salmap: saliency-guided adversarial attacks, explanations and defenses on PyTorch models.

Importing salmap does no work; the sub-packages are ``salmap.attacks``, ``salmap.explain``,
``salmap.defenses``, ``salmap.models``, ``salmap.data`` and ``salmap.evaluation``.
"""

from salmap import data, models

__version__ = "0.1.0"


__all__ = ["__version__", "data", "models"]
