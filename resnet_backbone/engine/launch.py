"""`launch(main_func, num_gpus_per_machine, ...)`: run `main_func(*args)` in one or many processes.

- One process (world size 1, no torchrun): calls main_func directly.
- `--num-gpus N` (N > 1): spawns N processes with torch.multiprocessing; each joins a process group
  (nccl when CUDA devices are there, gloo otherwise — on CPU, N means N CPU processes) and calls
  main_func. `dist_url="auto"` picks a free local port (single machine); several machines need a
  tcp:// URL reachable from all of them and --machine-rank.
- Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment): joins the group with env://
  and runs main_func in this process; torchrun owns the processes.

A rank that dies does not leave the others hanging: with spawn, the parent notices the exit and
terminates the other ranks, then raises; collectives time out after `timeout` (default 30 min,
env RB_DIST_TIMEOUT_S); torchrun tears the group down by itself.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

__all__ = ["launch", "DEFAULT_TIMEOUT", "find_free_port", "under_torchrun"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("RB_DIST_TIMEOUT_S", 30 * 60)))


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def _backend(num_local: int) -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= num_local else "gloo"


def launch(main_func, num_gpus_per_machine: int = 1, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str | None = None, args: tuple = (), timeout: datetime.timedelta = DEFAULT_TIMEOUT):
    """Run main_func(*args) on num_machines * num_gpus_per_machine processes (see the module docstring)."""
    if under_torchrun() and not dist.is_initialized():
        world = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if world > 1:
            backend = _backend(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        try:
            return main_func(*args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init with several machines needs a shared filesystem")
    try:
        mp.start_processes(
            _distributed_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
            start_method="spawn",
        )
    except ProcessException as e:
        raise RuntimeError(f"distributed run failed (local process {e.error_index}); the other "
                           f"processes were terminated. {e}") from e


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                        timeout):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    os.environ.update(RANK=str(global_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(num_gpus_per_machine))
    backend = _backend(num_gpus_per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank,
                                timeout=timeout)
    except Exception as e:
        raise RuntimeError(f"rank {global_rank}: cannot join the process group at {dist_url}: {e}") from e
    try:
        if backend == "nccl":
            dist.barrier(device_ids=[local_rank])
        else:
            dist.barrier()
        main_func(*args)
    finally:
        dist.destroy_process_group()
