"""The process group of a command launched by ``torchrun`` (PyTorch distributed), or a single process.

``torchrun --nproc-per-node N`` (or ``srun torchrun ...`` across nodes) starts N copies of a command with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``.  :func:`current`
joins that group (gloo on CPU, NCCL on CUDA) or, without them, returns the single-process group (rank 0 of
1), so every command has one code path: each rank works on its shard of the particles (:meth:`Ranks.shard`),
sums accumulators and gradients with :meth:`Ranks.all_reduce`, and only rank 0 writes (:attr:`Ranks.is_main`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TIMEOUT_S = 600  # a collective waiting longer than this for a dead rank fails


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world_size`` processes (``rank`` 0-based; ``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs, logs to the job and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str | torch.device | None = None) -> torch.device:
        """``requested``, else this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
        if requested is not None:
            return torch.device(requested)
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def shard(self, indices: np.ndarray | int) -> np.ndarray:
        """This rank's part of ``indices`` (or of ``arange(n)``): every ``world_size``-th element from ``rank``,
        so the shards are disjoint, cover everything and differ in size by at most one."""
        indices = np.arange(indices) if isinstance(indices, int) else np.asarray(indices)
        return indices[self.rank::self.world_size]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (and return it); nothing to do in a single process."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Ranks()


def current(backend: str | None = None) -> Ranks:
    """The process group set up by ``torchrun`` (joined on first call), else :data:`SINGLE`.

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Ranks(rank, world_size, local_rank)


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_initialized():
        dist.destroy_process_group()
