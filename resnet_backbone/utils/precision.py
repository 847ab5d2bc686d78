"""Which precision to run in: the request (SOLVER.AMP.ENABLED / DTYPE, or an inference call's dtype) against
what this machine does natively (utils/machine.py).

The request is one of

- False:   float32.
- "auto":  the dtype where the device runs it natively, float32 elsewhere (quickstarts use this). bf16 on a
           CPU with AMX / AVX512-BF16 (about 2-8x faster than fp32), float32 on an AVX2-only CPU, where bf16
           autocast runs 15-25x *slower* than fp32; fp16/bf16 on a CUDA device that has it.
- True:    the dtype, and an error before anything is built if the device lacks it natively (the message
           names the key, the device and what it supports, and how to insist).
- "force": the dtype even where it is only emulated (CPU), with one warning. A CUDA device without bf16
           cannot be forced.

    decision = resolve_amp("auto", "bfloat16", "cpu")
    decision.dtype, decision.reason     # torch.float32, "SOLVER.AMP.ENABLED auto: ... no native bfloat16 ..."
    with decision.autocast(): ...
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .machine import Machine, machine

__all__ = ["AmpDecision", "PrecisionError", "resolve_amp", "normalize_amp_request", "dtype_from_name"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "": torch.float32,
           None: torch.float32}


def dtype_from_name(dtype) -> torch.dtype:
    """torch dtype from a name ("bfloat16"/"bf16", "float16"/"fp16"/"half", "float32"/"fp32") or a torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower() if isinstance(dtype, str) else dtype]
    except KeyError:
        raise ValueError(f"unknown autocast dtype {dtype!r}; use 'bfloat16', 'float16' or 'float32'") from None


class PrecisionError(ValueError):
    """A precision that this device cannot run (or would run only emulated, when not forced)."""


@dataclass(frozen=True)
class AmpDecision:
    device_type: str
    dtype: torch.dtype  # torch.float32 when autocast is off
    reason: str
    emulated: bool = False  # forced onto a device that only emulates it

    @property
    def enabled(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self):
        """torch.autocast for the decided dtype, or a no-op context for float32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def normalize_amp_request(value, key: str = "SOLVER.AMP.ENABLED"):
    """False / True / "auto" / "force" from a config value (bools, or those words in any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "force"):
            return v
        if v in ("true", "false"):
            return v == "true"
    raise PrecisionError(f"{key}: expected True, False, 'auto' or 'force', got {value!r}")


def _low_dtype(dtype, key: str) -> torch.dtype:
    try:
        dt = dtype_from_name(dtype)
    except ValueError:
        dt = None
    if dt not in (torch.bfloat16, torch.float16):
        raise PrecisionError(f"{key}: expected 'bfloat16' or 'float16', got {dtype!r}")
    return dt


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class _Words:
    """How messages name the request and its values: the config keys under `key` (SOLVER.AMP), or, with key
    None, the arguments of `fast_paths.inference_autocast`."""

    key: str | None

    def _k(self, leaf: str, call: str) -> str:
        return f"{self.key}.{leaf}" if self.key else call

    @property
    def enabled(self) -> str:
        return self._k("ENABLED", "inference_autocast")

    @property
    def dtype(self) -> str:
        return self._k("DTYPE", "dtype")

    def value(self, v) -> str:
        """How the user writes request `v` (False / True / "auto" / "force") or a dtype name."""
        if self.key:
            return f"{self.key}.DTYPE {v}" if v in ("float16", "bfloat16") else f"{self.key}.ENABLED {v}"
        return {False: "dtype='float32'", "auto": "dtype='auto'", "force": "force=True"}.get(v, f"dtype='{v}'")

    def request(self, req, dt: str) -> str:
        if self.key:
            return f"{self.key}.ENABLED {req}"
        if req == "auto":
            return "inference_autocast(dtype='auto')"
        return f"inference_autocast(dtype='{dt}'{', force=True' if req == 'force' else ''})"


def resolve_amp(request, dtype="bfloat16", device="cpu", *, key: str | None = "SOLVER.AMP",
                info: Machine | None = None) -> AmpDecision:
    """Decide the autocast dtype for `device` from the request (see the module docstring).

    Raises PrecisionError when the request cannot be honoured, naming the config keys under `key`, or with
    key=None the arguments of `inference_autocast`. `info` defaults to `machine()`.
    """
    w = _Words(key)
    req = normalize_amp_request(request, w.enabled)
    device_type = torch.device(device).type
    if req is False:
        return AmpDecision(device_type, torch.float32, f"{w.value(False)}: float32")
    dt = _low_dtype(dtype, w.dtype)
    m = info or machine()
    shown = w.request(req, _name(dt))
    if device_type == "cuda":
        dev = m.cuda_device(torch.device(device).index)
        if dev is None:
            raise PrecisionError(f"{w.enabled}: autocast on {device} asked for, but this machine has no CUDA device")
        if dt == torch.float16 or dev.bf16:
            return AmpDecision("cuda", dt, f"{shown}: {_name(dt)} autocast on {dev.describe()}")
        if req == "auto":
            return AmpDecision("cuda", torch.float32, f"{shown}: {dev.describe()} has no bfloat16; float32 "
                                                      f"(set {w.value('float16')} for mixed precision there)")
        raise PrecisionError(f"{w.dtype} bfloat16: {dev.describe()} has no bfloat16 (needs compute capability "
                             f"8.0+); it supports float16: set {w.value('float16')}, or {w.value('auto')} / "
                             f"{w.value(False)}")
    if device_type != "cpu":
        raise PrecisionError(f"{w.enabled}: autocast on device {device!r} is not supported (cpu or cuda)")
    native = m.cpu_bf16_native if dt == torch.bfloat16 else m.cpu_fp16_native
    what = "AMX or AVX512-BF16" if dt == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
    cpu = m.describe_cpu()
    if native:
        return AmpDecision("cpu", dt, f"{shown}: {_name(dt)} autocast, native on CPU {cpu}")
    if req == "auto":
        return AmpDecision("cpu", torch.float32, f"{shown}: float32, since CPU {cpu} has no native {_name(dt)} "
                                                 f"({what}); {_name(dt)} autocast would be many times slower")
    if req == "force":
        return AmpDecision("cpu", dt, f"{shown}: {_name(dt)} autocast although CPU {cpu} has no native "
                                      f"{_name(dt)} ({what}): emulated, expect it to be many times slower than "
                                      "float32", emulated=True)
    other = "bfloat16" if dt == torch.float16 else "float16"
    other_native = m.cpu_fp16_native if dt == torch.bfloat16 else m.cpu_bf16_native
    supports = f"it runs float32{' and ' + other + ' natively' if other_native else ' only at full speed'}"
    raise PrecisionError(
        f"{shown} asks for {_name(dt)} autocast ({w.dtype}), but CPU {cpu} has no native {_name(dt)} "
        f"({what}): it would run 15-25x slower than float32; {supports}. Set {w.value('auto')} ({_name(dt)} where "
        f"native, float32 here) or {w.value(False)}; to insist on emulated {_name(dt)}, set {w.value('force')}")
