"""What every section of benchmarks/gpu.py shares: the run's settings and device (:class:`Bench`),
a hard time limit per section, and printing."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _timing import synchronize
from torch import Tensor, nn

from salmap.cli.common import print_table
from salmap.devices import resolve_device


class SectionTimeout(Exception):
    pass


@contextmanager
def hard_limit(limit: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after ``limit`` seconds (checked between Python bytecodes)."""

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"over its hard limit of {limit:.0f} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.device = resolve_device(args.device)
        self.cuda = self.device.startswith("cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lenet: nn.Module | None = None
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.deadline = 0.0

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def reset_peak(self) -> None:
        if self.cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else float("nan")

    def need_lenet(self) -> tuple[nn.Module, Tensor, Tensor]:
        if self.lenet is None or self.x is None or self.y is None:
            raise RuntimeError("the lenet section did not finish")
        return self.lenet, self.x, self.y


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def table(rows: list[dict[str, Any]]) -> None:
    if rows:
        print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    sys.stdout.flush()
