"""salmap: saliency-guided adversarial attacks, explanations and defenses on PyTorch models.

Importing salmap does no work; the sub-packages are ``salmap.attacks``, ``salmap.explain``,
``salmap.defenses``, ``salmap.models``, ``salmap.data`` and ``salmap.evaluation``.
"""

from salmap import data, models

__version__ = "0.1.0"


def _register_defended_models() -> None:
    # Defended models ('dae', 'purified', 'block-switch') register from their own files; the zoo
    # runs this the first time it is read, so their checkpoints load wherever salmap is used.
    from salmap.defenses import block_switch, denoiser  # noqa: F401


models.add_provider(_register_defended_models)

__all__ = ["__version__", "data", "models"]
