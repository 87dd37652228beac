"""torch.distributed plumbing for the training loop: set up under ``torchrun``, reduce, gather.

``torchrun`` (or any launcher) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` then joins the process group (gloo on CPU, NCCL on GPU) once per process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress."""
        return self.rank == 0


def setup(backend: str = "auto") -> DistContext:
    """Join the process group described by the launcher's environment; a single process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but environment variable {var} is not set: "
                               "launch with torchrun, which sets RANK, MASTER_ADDR and MASTER_PORT")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    atexit.register(_destroy)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank)


def _destroy() -> None:
    """Leave the process group at exit. On gloo the ranks first meet at a monitored barrier (bounded, so a
    crashed peer cannot hang the exit): a rank that tore its connections down while its peer was still
    finishing made the peer's gloo threads abort ("terminate called without an active exception")."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        with contextlib.suppress(RuntimeError):  # a peer died or timed out: nothing to wait for
            dist.monitored_barrier(timeout=timedelta(seconds=60))
    dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a copy; unchanged when not distributed)."""
    tensor = tensor.detach().clone()
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``tensor`` over all processes."""
    return all_reduce_sum(tensor, ctx) / ctx.world_size


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Average ``.grad`` of parameters that live outside DDP (e.g. a discriminator) over all processes."""
    if not ctx.distributed:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ctx.world_size)


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every process (for modules outside DDP)."""
    if ctx.distributed:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
