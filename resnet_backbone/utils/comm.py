"""Small torch.distributed helpers. They all work (as single-process no-ops) when distributed is not initialised."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["is_dist_initialized", "get_world_size", "get_rank", "get_local_rank", "is_main_process",
           "synchronize", "all_gather", "gather", "shared_random_seed"]


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_initialized() else 0


def get_local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes (no-op with one process)."""
    if get_world_size() > 1:
        if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather(obj) -> list:
    """Every process's `obj` (any picklable object), in rank order, on every process."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather(obj, dst: int = 0) -> list:
    """Every process's `obj` on rank `dst` (in rank order); other ranks get []."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world if get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if get_rank() == dst else []


def shared_random_seed() -> int:
    """A random seed that is the same on every process (rank 0's draw)."""
    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])
