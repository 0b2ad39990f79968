"""``python -m salmap`` runs the command line.

``python -m`` puts the working directory first on ``sys.path``: a module lying there
(``evil_mod.py``) would become importable by any name a run file or ``--model`` gives.
The ``salmap`` script never has it, so neither does ``python -m salmap`` (nor
``torchrun -m salmap``), unless ``PYTHONPATH`` names it explicitly.
"""

import os
import sys


def _drop_working_directory() -> None:
    cwd = os.path.realpath(os.getcwd())
    explicit = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    sys.path[:] = [
        p for p in sys.path if os.path.realpath(p or os.curdir) != cwd or os.path.realpath(p or os.curdir) in explicit
    ]


if __name__ == "__main__":
    _drop_working_directory()
    from salmap.cli import main

    sys.exit(main())
