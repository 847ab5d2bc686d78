"""Mixed precision for inference, chosen with this machine's native support (utils/precision.py)."""
from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["inference_autocast", "autocast_dtype"]

logger = logging.getLogger(__name__)


def autocast_dtype(dtype) -> torch.dtype:
    """torch dtype from a name ("bfloat16"/"bf16", "float16"/"fp16", "float32"/"fp32") or a torch.dtype."""
    from ...utils.precision import dtype_from_name

    return dtype_from_name(dtype)


def inference_autocast(device="cpu", dtype="auto", *, force: bool = False):
    """Mixed-precision context for inference, chosen with this machine's native support (utils/precision.py).

    - dtype "auto" (default): bf16 on a CPU with AMX / AVX512-BF16, float32 (a no-op context) on a CPU without
      native bf16 (where bf16 runs 15-25x slower); on CUDA bf16 where the GPU has it, else fp16.
    - dtype "bfloat16" / "float16": that dtype; a device without it natively raises `PrecisionError` (a
      ValueError) saying what it supports, unless `force=True` (CPU: run it emulated, with a warning).
    - dtype "float32" / None: a no-op context.
    """
    from ...utils.machine import machine
    from ...utils.precision import resolve_amp

    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"inference_autocast: unsupported device {device!r} (cpu or cuda)")
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dev = machine().cuda_device(torch.device(device).index) if device_type == "cuda" else None
        request, dt = "auto", ("float16" if dev is not None and not dev.bf16 else "bfloat16")
    else:
        dt = autocast_dtype(dtype)
        if dt == torch.float32:
            return contextlib.nullcontext()
        request = "force" if force else True
    decision = resolve_amp(request, dt, device, key=None)
    if decision.emulated or not decision.enabled:
        _log_once(logging.WARNING if decision.emulated else logging.INFO, decision.reason)
    return decision.autocast()


_logged: set[str] = set()


def _log_once(level: int, msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.log(level, msg)
