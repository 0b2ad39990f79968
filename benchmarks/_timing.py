"""Timing that the benchmarks share: device synchronisation, interleaved medians, ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA launches are asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device | str, clock: str = "wall") -> float:
    """Seconds of one call of ``fn``, its device work included: wall time, or with
    ``clock="process"`` the CPU time of this process (all its threads; steadier than wall time
    on a shared machine, and with one torch thread it is the work done)."""
    now = time.process_time if clock == "process" else time.perf_counter
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device | str, repeats: int = 5, budget: float | None = None,
    warmup: int = 1, clock: str = "wall",
) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, taking turns (A B C A B C ...) so that a drift of
    the machine's speed hits all alike, after ``warmup`` untimed turns. Stops early (after at
    least one timed turn) once ``budget`` seconds have passed. Returns the times per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    start = time.perf_counter()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn, device, clock))
        if budget is not None and time.perf_counter() - start > budget:
            break
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over turns of ``a``'s time over ``b``'s time in the same turn."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
