"""The process group of a command launched by ``torchrun`` (PyTorch distributed), or a single process.

``torchrun --nproc-per-node N`` (or ``srun torchrun ...`` across nodes) starts N copies of a command with the
environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``.  :func:`current`
joins that group (gloo on CPU, NCCL on CUDA) or, without them, returns the single-process group (rank 0 of
1), so every command has one code path: each rank works on its shard of the particles (:meth:`Ranks.shard`),
sums accumulators and gradients with :meth:`Ranks.all_reduce`, and only rank 0 writes (:attr:`Ranks.is_main`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from vitreous.errors import InputError

TIMEOUT_S = 600  # a collective waiting longer than this for a dead rank fails
PATIENT_TIMEOUT_S = 7 * 24 * 3600  # how long the other ranks wait for rank 0's serial work in Ranks.on_main
T = TypeVar("T")
_patient_group: list[Any] = []  # the gloo group of Ranks.on_main, made on its first call


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

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` run by rank 0 alone, its (picklable) result returned on every rank.

        The other ranks wait without the :data:`TIMEOUT_S` of the collectives (up to :data:`PATIENT_TIMEOUT_S`),
        so rank 0 may do long serial work first (a backprojection, the classical ab initio stages, reading a
        checkpoint); an exception in ``work`` is raised on every rank.  Every rank must call it (a collective).
        """
        if not self.distributed:
            return work()
        if not _patient_group:
            _patient_group.append(dist.new_group(backend="gloo",
                                                 timeout=datetime.timedelta(seconds=PATIENT_TIMEOUT_S)))
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = (True, work())
            except BaseException as exc:
                dist.broadcast_object_list([(False, _described(exc))], src=0, group=_patient_group[0])
                raise
        dist.broadcast_object_list(box, src=0, group=_patient_group[0])
        ok, value = box[0]
        if not ok:
            raise _rebuilt(value)
        return value

    def gather_rows(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The full array on every rank when each rank computed ``values[rows]`` of it (``rows``: this rank's
        indices along axis 0, disjoint across ranks and covering all rows): the others' rows are filled in.

        Zero-filled copies are summed (exact: every row has one non-zero contribution), in float64.
        """
        if not self.distributed:
            return values
        rows = np.asarray(rows, np.int64)
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        full = torch.zeros(values.shape, dtype=torch.float64, device=device)
        full[torch.as_tensor(rows, device=device)] = torch.as_tensor(values[rows], dtype=torch.float64, device=device)
        dist.all_reduce(full, op=dist.ReduceOp.SUM)
        return full.cpu().numpy().astype(values.dtype)


SINGLE = Ranks()


def _described(exc: BaseException) -> tuple[str, str | None, str, str]:
    """What the other ranks need to raise ``exc`` again (exceptions such as InputError do not unpickle)."""
    if isinstance(exc, InputError):
        return "input", exc.path, exc.problem, exc.fix
    kind = "interrupt" if isinstance(exc, KeyboardInterrupt) else "other"
    return kind, None, f"rank 0 stopped: {type(exc).__name__}: {exc}", ""


def _rebuilt(described: tuple[str, str | None, str, str]) -> BaseException:
    kind, path, problem, fix = described
    if kind == "input":
        return InputError(path, problem, fix)
    return KeyboardInterrupt(problem) if kind == "interrupt" else RuntimeError(problem)


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


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[Ranks, str]]:
    """A command's process group for work on ``device`` (:func:`current`: gloo for ``cpu``, NCCL for CUDA) and
    the device this rank uses (under ``torchrun`` a plain ``cuda`` means this rank's GPU, ``cuda:LOCAL_RANK``);
    the group is left (:func:`shutdown`) when the block ends, however it ends (after a barrier when it ends
    normally: a rank tearing down gloo's connections while a peer still uses them can abort the peer)."""
    ranks = current("gloo" if torch.device(device).type == "cpu" else None)
    if ranks.distributed and device == "cuda":
        device = f"cuda:{ranks.local_rank}"
    try:
        yield ranks, device
        ranks.barrier()  # no rank closes its connections while another is still in a collective
    finally:
        shutdown()


@contextlib.contextmanager
def rank_failures(ranks: Ranks) -> Iterator[None]:
    """Under ``torchrun``, report at once, in one line on stderr, that this rank stopped because another one did,
    and advise ``--resume`` (from the last checkpoint, with any number of ranks).

    Use it inside a :class:`~vitreous.jobs.Job`.  A failed collective (a peer's connection reset, or
    :data:`TIMEOUT_S` passed) and the SIGTERM with which torchrun stops the surviving ranks (a KeyboardInterrupt
    inside a Job) both become a KeyboardInterrupt with that message: the job is 'interrupted', exit code 130.
    The line is printed before anything else, since torchrun may kill this rank soon after.
    """
    if not ranks.distributed:
        yield
        return
    try:
        yield
    except (RuntimeError, KeyboardInterrupt) as exc:
        if isinstance(exc, RuntimeError) and not _lost_peer(exc):
            raise
        why = f"lost the other ranks ({_cause(exc)})" if isinstance(exc, RuntimeError) else (
            f"was stopped ({exc or 'interrupted'}: torchrun stops every rank when one fails; or Ctrl-C, a time limit)")
        message = (f"rank {ranks.rank} of {ranks.world_size} {why}; the last checkpoint is kept: relaunch with "
                   "--resume (with any number of ranks)")
        print(f"vitreous: {message}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt(message) from exc


def _lost_peer(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective that failed (gloo raises some of them as plain RuntimeErrors)."""
    return isinstance(exc, dist.DistError) or re.search(r"gloo|nccl|connection (reset|closed)", str(exc),
                                                         re.IGNORECASE) is not None


def _cause(exc: BaseException) -> str:
    """The gist of a backend error: its first sentence without the source location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().split("\n")[0])
    return text.split(". ")[0] or type(exc).__name__


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _patient_group.clear()
