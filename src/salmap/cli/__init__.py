"""The ``salmap`` command line: thin wrappers that parse arguments and call the library.

Each sub-command lives in its own module of this package and provides
``add_parser(subparsers)``, which registers the sub-command and sets ``func``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from salmap.cli import attack, demo, train

COMMANDS = [demo, train, attack]


def _optional_commands() -> list:
    """Sub-command modules that exist once their feature is in (explain, defend, evaluate)."""
    import importlib

    found = []
    for name in ("explain", "defend", "evaluate"):
        try:
            found.append(importlib.import_module(f"salmap.cli.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"salmap.cli.{name}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    from salmap import registry
    from salmap.cli.flags import listing

    parser = argparse.ArgumentParser(
        prog="salmap",
        description="Saliency-guided adversarial attacks, explanations and defenses for PyTorch models.",
        epilog=f"attacks (salmap attack NAME):\n{listing(registry.attacks())}\n\n"
               f"explainers (salmap explain --method NAME):\n{listing(registry.explainers())}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS + _optional_commands():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"salmap {args.command}: error: {err}", file=sys.stderr)
        return 2
