"""``--device`` for the benchmarks, as the command line has it: ``auto`` is CUDA when available, else the CPU."""

from __future__ import annotations

import argparse

from salmap.devices import DEVICE_HELP, describe_device, resolve_device


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``); the parsed value is the resolved device (``cpu``, ``cuda``, ``cuda:1``)."""
    parser.add_argument("--device", default="auto", type=_resolved, help=f"torch device: {DEVICE_HELP} (default auto)")


def announce(device: str) -> str:
    """Print the device the benchmark runs on (``device: cuda:0 (NVIDIA H100 80GB HBM3)``); returns it."""
    print(f"device: {describe_device(device)}", flush=True)
    return device


def _resolved(value: str) -> str:
    try:
        return resolve_device(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
