"""The collectives a distributed run needs, as no-ops in a single process (torch.distributed, gloo or nccl).

A run is distributed when a process group of more than one rank is initialized (cnnlab.distributed starts it
from torchrun's environment). Rank 0 is the one writer: the run folder, logs and checkpoints are its alone.
Batches are sharded per step (cnnlab.data.loader.rank_slice): rank r takes its contiguous part of every global
batch, so the ranks together see exactly the single-process batches, no sample padded or repeated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_writer() -> bool:
    """Rank 0 (or the only process) writes the run folder, the logs and the checkpoints."""
    return rank() == 0


def shard() -> tuple[int, int] | None:
    """(rank, world) for sharding batches (cnnlab.data.loader), None in a single process."""
    return (rank(), world_size()) if active() else None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (gloo reduces on the CPU: a CUDA tensor travels through a CPU copy)."""
    if not active():
        return t
    if t.device.type != "cpu" and dist.get_backend() == "gloo":
        host = t.cpu()
        dist.all_reduce(host)
        t.copy_(host)
    else:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool | torch.Tensor) -> bool:
    """True when `flag` is true on any rank (every rank must call it at the same point)."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if bool(flag) else 0.0])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order (the ranks' lengths may differ)."""
    if not active():
        return t
    world = world_size()
    device = t.device
    host = t.detach().cpu().contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([host.shape[0]], dtype=torch.int64))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *host.shape[1:]), dtype=host.dtype)
    padded[: host.shape[0]] = host
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(device)


def all_gather_object(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
