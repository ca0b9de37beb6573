"""Data parallelism over ``torchrun`` ranks: one process per device, no scheduler of our own.

``torchrun --nproc-per-node N -m adaptive_dllm.cli ...`` starts N copies of a command with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`init_ranks` joins them into one process
group (NCCL with one GPU per rank; gloo on the CPU); the command then splits its work with
:func:`shard`, reduces with :func:`all_reduce_sum` or :func:`gather_objects`, and lets rank 0
alone write. Started without torchrun, everything here is a no-op over one rank, so the same code
path runs in both cases.

Results must equal a one-process run: work is split by item, each item carries its own seed, and
rank 0 restores the original item order after gathering.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from adaptive_dllm.errors import AdllmError

__all__ = ["Ranks", "all_reduce_sum", "barrier", "gather_objects", "init_ranks", "leave_ranks",
           "shard"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ranks of one job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not (self.world >= 1 and 0 <= self.rank < self.world and self.local_rank >= 0):
            raise AdllmError(f"invalid ranks: rank {self.rank} of world {self.world} "
                             f"(local rank {self.local_rank}); check RANK/WORLD_SIZE/LOCAL_RANK")

    @property
    def is_main(self) -> bool:
        """True on the rank that writes results (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise AdllmError(f"environment variable {name}={raw!r} is not an integer; "
                         "start the job with torchrun") from None


def init_ranks(device: str | torch.device | None = None) -> Ranks:
    """Join the torchrun job this process belongs to, if any; return its :class:`Ranks`.

    ``device`` is the device the command will compute on (``cuda`` picks NCCL and this rank's
    GPU ``cuda:LOCAL_RANK``; anything else picks gloo). Idempotent.
    """
    ranks = Ranks(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if not ranks.distributed:
        return ranks
    if dist.is_initialized():
        return ranks
    use_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if use_cuda:
        if torch.cuda.device_count() <= ranks.local_rank:
            raise AdllmError(f"local rank {ranks.local_rank} has no GPU ({torch.cuda.device_count()} "
                             "visible); use --nproc-per-node <= the number of GPUs")
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    logger.info("rank %d of %d joined (%s)", ranks.rank, ranks.world, dist.get_backend())
    return ranks


def leave_ranks() -> None:
    """Leave the torchrun job, if this process joined one: wait for every rank, then destroy the
    process group. A process that exits with the group alive leaves gloo's threads to the C++
    runtime's teardown, which now and then aborts ("terminate called without an active
    exception", exit -6) after the work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_device(ranks: Ranks, device: str | torch.device) -> torch.device:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return dev


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from ``rank`` on (balanced to +-1)."""
    return list(items[ranks.rank::ranks.world])


def gather_objects(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it); a no-op on one rank."""
    if ranks.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (e.g. before rank 0 reads what the others wrote)."""
    if ranks.distributed:
        dist.barrier()
