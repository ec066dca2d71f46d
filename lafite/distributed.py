"""torch.distributed plumbing for training: process groups, gradient averaging, gathering.

Training runs either as one process or as several launched by ``torchrun`` (``env://``
rendezvous: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The backend is gloo on the
CPU and nccl on CUDA.

Gradients are averaged by hand (one flattened all-reduce per optimiser step, as StyleGAN2-ADA's
successors do) rather than by wrapping the networks in ``DistributedDataParallel``: each training
phase freezes one network while the other learns, which DDP's reducer handles badly, and an
explicit all-reduce keeps the arithmetic identical for 1 and N processes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, sample grids and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → this rank's CUDA device if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group that ``torchrun`` set up, or describe a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Replace every gradient by its mean over ranks (missing gradients count as zeros)."""
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        count = p.numel()
        piece = flat[offset : offset + count].view_as(p)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += count


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if not ctx.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def gather_keep_local(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order; only this rank's rows carry grad.

    This is the official ``--gather``: the other ranks' features are constants (negatives), the
    own slot is the live local tensor so that its gradient flows.
    """
    if not ctx.distributed:
        return x
    pieces = [torch.empty_like(x) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, x.detach().contiguous())
    pieces[ctx.rank] = x
    return torch.cat(pieces, dim=0)


def all_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging)."""
    if not ctx.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def all_gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """Every rank's ``obj`` in rank order (small Python objects, e.g. RNG states)."""
    if not ctx.distributed:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_mean",
    "average_gradients",
    "barrier",
    "broadcast_module",
    "gather_keep_local",
    "init_distributed",
    "resolve_device",
    "shutdown",
]


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_retained = False


def retain_freed_memory(enabled: bool = True) -> bool:
    """Keep memory freed by torch in this process for reuse (glibc only; True when set).

    By default glibc serves every allocation above 32 MiB with its own ``mmap`` and returns it
    to the kernel on ``free``, so each large activation of a training step (134 MB for 128
    channels at 256 px, batch 4) is faulted in again page by page and zeroed by the kernel:
    about a quarter of the official code's CPU time at 256 px. Serving everything from the heap
    and never trimming it makes a freed activation's pages reusable at once (measured: no page
    faults and 4.7x faster on an elementwise op of that size). The cost is that the process
    keeps its peak memory until it exits. Process-wide and idempotent; numerics are unchanged.
    ``enabled=False`` goes back to mmap for large blocks (the benchmark's plain step).
    """
    global _retained
    if _retained == enabled:
        return _retained
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if enabled:
        _retained = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                   2**31 - 1))
    else:
        mallopt(_M_MMAP_MAX, 65536)
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's dynamic threshold at its ceiling
        mallopt(_M_TRIM_THRESHOLD, 128 << 10)
        libc.malloc_trim(0)
        _retained = False
    return _retained
