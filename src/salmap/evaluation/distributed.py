"""Sharding an evaluation over processes started by ``torchrun`` (gloo on CPU, nccl on GPU).

The work of a run is a fixed, ordered list of units (one batch of one attack on one
model). Rank ``r`` of ``N`` computes the pending units ``r, r + N, r + 2N, ...``; every
unit is written to its own file, so each rank writes its own shard and no two ranks
touch the same file. Rank 0 merges after all ranks have finished. Because a unit's
result depends only on the unit (its batch, its seed), never on which rank ran it or
how many ranks there were, a distributed run gives the same rows as a single process,
and a run may be resumed with a different number of processes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: how long a rank waits at a barrier for the slowest one (a whole shard of work may pass)
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass
class World:
    """This process's place among the ranks (``size == 1`` without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.size])

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a barrier as well): ``[value of rank 0, value of rank 1, ...]``."""
        if self.size == 1:
            return [value]
        found: list[Any] = [None] * self.size
        dist.all_gather_object(found, value)
        return found

    def barrier(self) -> None:
        self.gather(None)

    def close(self) -> None:
        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()
            self.backend = None


def from_environment(device: str) -> tuple[World, str]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns the world and the device this rank should use: ``cuda`` becomes
    ``cuda:LOCAL_RANK`` with nccl; on CPU the backend is gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device.startswith("cuda")
    if on_gpu:
        if not torch.cuda.is_available():
            raise ValueError(f"device is {device!r} but CUDA is not available on rank {rank}")
        device = f"cuda:{local}" if device == "cuda" else device
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if on_gpu else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, backend=backend), device


__all__ = ["World", "from_environment"]
