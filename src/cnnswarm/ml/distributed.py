"""Data-parallel training across processes: one gang of ``world_size`` ranks, one run.

A gang is joined with ``join_gang(GangMember(...))`` (a context manager) and handed to
``train(..., gang=gang)``. Guarantees:

- **Bounded rendezvous.** Rank 0 opens a ``TCPStore`` on ``master_port``; the others connect to
  it. If the whole gang has not met within ``init_timeout_s``, ``GangBroken`` is raised with
  the reason (no rank waits longer).
- **Backend and device chosen together, by every member at once.** Each member says whether
  it has CUDA (and may use it); NCCL on ``cuda`` when every member does, else gloo on the CPU.
- **Bounded collectives.** Every collective has ``collective_timeout_s``: a survivor whose peer
  was killed or partitioned raises ``GangBroken`` (gloo usually notices a dead peer at once,
  through the closed connection; a partition waits for the timeout). It never hangs.
- **Clean exit.** Leaving the context destroys the process group, so the process can end or
  join another gang.

``shard_bounds`` is the one rule for which part of a global batch a rank trains on:
contiguous, balanced slices; every rank draws the whole batch's random flips, so the data order
and augmentation are those of the one-process run whatever the world size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from cnnswarm.errors import GangBroken

__all__ = ["Gang", "GangBroken", "GangMember", "join_gang", "shard_bounds", "wants_cuda"]

log = logging.getLogger(__name__)

DEFAULT_INIT_TIMEOUT_S = 60.0
DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class GangMember:
    """Where this process stands in a gang: its ``rank`` of ``world_size``, and rank 0's
    rendezvous address (``master_addr:master_port``)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")

    @property
    def is_leader(self) -> bool:
        """Rank 0 evaluates, reports, checkpoints and publishes."""
        return self.rank == 0


@dataclass(frozen=True)
class Gang:
    """A joined gang: this process's rank, the world size, and the device every rank uses."""

    rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_leader(self) -> bool:
        """Rank 0 evaluates, reports, checkpoints and publishes."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` (already on ``device``) under DDP: gradients averaged over the ranks;
        rank 0's parameters and buffers are broadcast to all at construction."""
        with self.collectives("wrapping the model"):
            device_ids = [self.device] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a cancel seen by one stops all
        at the same batch)."""
        value = torch.tensor([1 if flag else 0], device=self.device)
        with self.collectives("agreeing on a stop"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the ranks (a new tensor, on ``value``'s device)."""
        total = value.detach().clone().to(self.device)
        with self.collectives("summing epoch figures"):
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(value.device)

    def barrier(self, what: str) -> None:
        """Wait for every rank (bounded by the collective timeout)."""
        with self.collectives(what):
            dist.barrier()

    @contextlib.contextmanager
    def collectives(self, what: str) -> Iterator[None]:
        """Turn a collective's failure (peer gone, timeout) into ``GangBroken``: gloo raises a
        plain ``RuntimeError`` ("Connection reset by peer"), so any raised inside counts."""
        try:
            yield
        except RuntimeError as exc:
            raise GangBroken(f"rank {self.rank}: the gang broke while {what}: {exc}") from exc


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s part ``[start, end)`` of a global batch of ``rows`` rows: contiguous and
    balanced (sizes differ by at most one; none is empty while ``rows >= world_size``)."""
    return rank * rows // world_size, (rank + 1) * rows // world_size


def wants_cuda(force_cpu: bool) -> bool:
    """Whether this member can and may train on CUDA."""
    return not force_cpu and torch.cuda.is_available()


@contextlib.contextmanager
def join_gang(member: GangMember, *, force_cpu: bool = False) -> Iterator[Gang]:
    """Meet the other ranks (bounded by ``init_timeout_s``), yield the ``Gang``, then leave
    the process group."""
    init_timeout = timedelta(seconds=member.init_timeout_s)
    where = f"{member.master_addr}:{member.master_port}"
    try:
        store = dist.TCPStore(  # type: ignore[attr-defined]
            member.master_addr,
            member.master_port,
            member.world_size,
            is_master=member.is_leader,
            timeout=init_timeout,
            wait_for_workers=True,
        )
        store.set(f"cuda/{member.rank}", "1" if wants_cuda(force_cpu) else "0")
        keys = [f"cuda/{rank}" for rank in range(member.world_size)]
        store.wait(keys, init_timeout)
        all_cuda = all(store.get(key) == b"1" for key in keys)
        backend = "nccl" if all_cuda else "gloo"
        dist.init_process_group(
            backend,
            store=store,
            rank=member.rank,
            world_size=member.world_size,
            timeout=timedelta(seconds=member.collective_timeout_s),
        )
    except (dist.DistError, RuntimeError) as exc:
        raise GangBroken(
            f"rank {member.rank} of {member.world_size}: the gang did not meet at {where} "
            f"within {member.init_timeout_s:g} s: {exc}"
        ) from exc
    device = torch.device("cuda", torch.cuda.current_device()) if all_cuda else torch.device("cpu")
    log.info(
        "rank %d of %d joined at %s (%s on %s)",
        member.rank,
        member.world_size,
        where,
        backend,
        device,
    )
    try:
        yield Gang(member.rank, member.world_size, device, backend)
    finally:
        _leave()


def _leave() -> None:
    """Destroy the process group (gloo and NCCL both return without waiting for peers)."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
