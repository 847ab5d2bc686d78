"""`setup_logger`: rank-aware logging to the console and to OUTPUT_DIR/log.txt.

Rank 0 logs INFO to the console and to `<output>/log.txt`; other ranks log WARNING+ to the console
and everything to `<output>/log.txt.rank<N>`, so a multi-process run stays readable.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

__all__ = ["setup_logger", "log_first_n"]


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


class _Formatter(logging.Formatter):
    def format(self, record):
        if record.levelno >= logging.WARNING:
            self._style._fmt = "[%(asctime)s %(name)s] %(levelname)s: %(message)s"
        else:
            self._style._fmt = "[%(asctime)s %(name)s] %(message)s"
        return super().format(record)


@functools.lru_cache
def setup_logger(output: str | None = None, distributed_rank: int | None = None, name: str = "resnet_backbone",
                 level: int = logging.INFO) -> logging.Logger:
    """Configure and return the logger `name` (idempotent per argument set).

    output: a directory (log.txt inside it) or a file path ending in .txt/.log; None: console only.
    """
    rank = _rank() if distributed_rank is None else distributed_rank
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    datefmt = "%m/%d %H:%M:%S"
    console = logging.StreamHandler(stream=sys.stdout)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console.setFormatter(_Formatter(datefmt=datefmt))
    logger.addHandler(console)
    if output:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if rank > 0:
            filename = f"{filename}.rank{rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        fh = logging.FileHandler(filename, mode="a", encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", datefmt=datefmt))
        logger.addHandler(fh)
    return logger


_LOGGED: dict[tuple, int] = {}


def log_first_n(level: int, msg: str, n: int = 1, name: str = "resnet_backbone") -> None:
    """Log `msg` at most n times per (name, msg)."""
    key = (name, msg)
    if _LOGGED.get(key, 0) < n:
        _LOGGED[key] = _LOGGED.get(key, 0) + 1
        logging.getLogger(name).log(level, msg)
