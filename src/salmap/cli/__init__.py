"""The ``salmap`` command line: thin wrappers that parse arguments and call the library.

Each sub-command lives in its own module of this package and provides
``add_parser(subparsers)``, which registers the sub-command and sets ``func``.

Every failure ends in one line on stderr, ``salmap COMMAND: error: ...``; ``--debug``
shows the traceback. Exit status: 2 when the command line or an input it names is wrong
(argparse's usage errors and salmap's ``ValueError`` checks, which name the argument, the
value and what was expected), 1 when the run fails otherwise (a model that raises, a full
disk, ...), 130 after Ctrl-C (a run that writes units can be resumed). A warning of the
library is one line too, ``salmap COMMAND: warning: ...`` (none with ``--quiet``; Python's own
format, with its source line, with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from salmap import __version__
from salmap.cli import attack, demo, train
from salmap.cli.common import announce_device

COMMANDS = [demo, train, attack]

log = logging.getLogger("salmap")


def _optional_commands() -> list[ModuleType]:
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


def _add_global_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """Flags every command takes, before or after its name (``salmap -v attack`` and
    ``salmap attack -v`` alike). On a sub-command they default to SUPPRESS so that they
    do not overwrite what was given before the command's name."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    flag: dict[str, Any] = {"action": "store_true", **default}
    flags = [
        (("-v", "--verbose"), "log progress details"),
        (("-q", "--quiet"), "print errors only: no progress bars or summaries"),
        (("--debug",), "show the full traceback of an error"),
        (("--allow-code",), "allow models named 'package.module:factory' (imports and calls that code; "
                            "a run file naming code is refused without it)"),
        (("--trust-model",), "load torch.export (.pt2) archives, which torch unpickles: only for files you trust"),
    ]
    for names, text in flags:
        if not any(n in parser._option_string_actions for n in names):
            parser.add_argument(*names, help=text, **flag)


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
    parser.add_argument("--version", action="version", version=f"salmap {__version__}")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS + _optional_commands():
        module.add_parser(sub)
    _add_to_subcommands(parser)
    return parser


def _add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command, nested ones too (``salmap attack fgsm``), the global flags."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_global_flags(subparser, top=False)
                _add_to_subcommands(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises, except SystemExit from
    argparse for ``--help``, ``--version`` and usage errors, which exit 0 or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(format="%(message)s")
    previous = log.level
    log.setLevel(level)
    from salmap import progress

    progress.configure(quiet=args.quiet)
    prefix = f"salmap {args.command}: error:"
    try:
        with _one_line_warnings(args):
            return _run(args, prefix)
    finally:  # main() may be called again in the same process (tests, notebooks)
        progress.configure(quiet=False)
        log.setLevel(previous)


@contextlib.contextmanager
def _one_line_warnings(args: argparse.Namespace) -> Iterator[None]:
    """The library's warnings (a stride past the image, probabilities given for logits) as one line
    each, ``salmap COMMAND: warning: ...``, while the command runs; deprecations go where they went."""
    if args.debug:
        yield
        return
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            shown(message, category, filename, lineno, file, line)
        elif not args.quiet:
            print(f"salmap {args.command}: warning: {_one_line(message)}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace, prefix: str) -> int:
    try:
        _check_before_work(args)
        if args.quiet:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"salmap {args.command}: interrupted (Ctrl-C); finished work is kept", file=sys.stderr)
        return 130
    except ValueError as err:
        if args.debug:
            raise
        print(f"{prefix} {_one_line(_output_key_named(err, args))}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 -- every failure ends in one line, --debug for the traceback
        if args.debug:
            raise
        print(f"{prefix} {_describe(err)}", file=sys.stderr)
        return 1


def _check_before_work(args: argparse.Namespace) -> None:
    """Checks every command gets before it computes anything: the device exists, the
    output folder can be written (a file, or a read-only folder, fails now, not after an
    hour of work), ``--data`` names a dataset and ``--seed`` is one the library takes."""
    from salmap.cli.checks import check_data_name, check_output_path, check_seed
    from salmap.cli.common import resolve_device

    if getattr(args, "device", None) is not None:
        args.device = resolve_device(args.device)
        if not args.quiet:  # --quiet: errors only
            announce_device(args.device)
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed)
    if isinstance(getattr(args, "out", None), str):
        check_output_path(args.out)
    if isinstance(getattr(args, "data", None), str):
        check_data_name(args.data)


def _output_key_named(err: ValueError, args: argparse.Namespace) -> ValueError:
    """A model output that ``--output-key`` does not fit is named by the flag (was the library's
    ``output_key='x' names an entry, ...``); any other error as it is."""
    from salmap.logits import OutputError

    key = getattr(args, "output_key", None)
    if not isinstance(err, OutputError) or key is None:
        return err
    text, lead = str(err), f"output_key={key!r} "
    if text.startswith(lead):
        return ValueError(f"--output-key {key!r} {text[len(lead):]}")
    return ValueError(f"--output-key {key!r}: {text}")


def _one_line(err: BaseException | str) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _describe(err: BaseException) -> str:
    """The error as one line; errors that are not salmap's own checks are named by type."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"no space left on the device{where}; free some space and run the command again"
    if isinstance(err, MemoryError):
        return "out of memory; try a smaller --batch-size or --num"
    if isinstance(err, OSError) and err.filename:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    return f"{type(err).__name__}: {_one_line(err)} (run with --debug for the traceback)"
