"""Models named by code (``"package.module:factory"``): imported and called only when allowed.

A run file or a command line that names a module makes salmap import it and call a
function in it: that is running code. It happens only when the caller allows it
(``allow_code=True``, the command line's ``--allow-code``); otherwise such a name is an
error, so a file handed to salmap can never make it execute anything.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from torch import nn

#: ``package.module:attribute`` with Python identifiers on both sides.
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class CodeNotAllowed(ValueError):
    """A model source names code (``module:factory``) but running code was not allowed."""


def is_factory_spec(text: str) -> bool:
    """Whether ``text`` has the form ``package.module:factory`` (identifiers only).

    A path with a colon that is not of this form (``runs/a:b``, ``C:\\models``) is a path.
    """
    return bool(_SPEC.fullmatch(text))


def load_factory(spec: str, allow_code: bool = False, **kwargs: Any) -> nn.Module:
    """Import ``package.module`` and call its ``factory(**kwargs)``; the result must be a module.

    Parameters
    ----------
    spec: ``"package.module:factory"`` (the factory may be an attribute path, ``mod:Cls.make``).
    allow_code: must be True: importing a module runs its code.
    kwargs: passed to the factory.

    Raises
    ------
    CodeNotAllowed: when ``allow_code`` is False.
    ValueError: when the module or factory cannot be found, the factory is a built-in
        (``os:abort``, ``os:system``: never a model factory) or returns no ``nn.Module``.
    """
    if not is_factory_spec(spec):
        raise ValueError(f"model factory must be 'package.module:factory', got {spec!r}")
    if not allow_code:
        raise CodeNotAllowed(
            f"model {spec!r} names code to import and call (module:factory); this runs only when "
            "allowed: pass allow_code=True (command line: --allow-code) if you trust it"
        )
    module_name, _, attr = spec.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model factory {spec!r} could not be imported: {err}") from None
    if not (inspect.isclass(factory) or inspect.isfunction(factory) or inspect.ismethod(factory)):
        raise ValueError(
            f"model factory {spec!r} must be a Python class or function, got {type(factory).__name__}"
        )
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model.eval()
