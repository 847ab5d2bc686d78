"""What this machine can do, read once from torch's own probes. Every precision or kernel choice asks here.

    from resnet_backbone.utils.machine import machine
    m = machine()
    m.cpu_bf16_native      # bf16 at full speed: AMX or AVX512-BF16 (under oneDNN's ISA cap)
    m.describe()           # "Intel(R) Xeon(R) ... (ATen AVX512; bf16 native (AMX); fp16 native); CUDA: none"

Fields and the probe behind each:

- `cpu_name`: /proc/cpuinfo's model name (platform.processor() elsewhere).
- `cpu_capability`: `torch.backends.cpu.get_cpu_capability()`, the vector level ATen dispatches to ("DEFAULT",
  "AVX2", "AVX512", ...). `ATEN_CPU_CAPABILITY=avx2` lowers it.
- `cpu_bf16_kernels`: `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: oneDNN has bf16 convolution kernels (its
  weight reorder raises without them). True on any AVX512 core CPU, where bf16 may still be emulated.
- `cpu_bf16_native`: bf16 kernels *and* bf16 arithmetic in hardware (`torch.cpu._is_amx_tile_supported()` or
  `_is_avx512_bf16_supported()`). Only then is bf16 autocast faster than fp32; without it, it runs 15-25x slower.
- `cpu_amx`: AMX tiles usable by oneDNN.
- `cpu_fp16_native`: `torch.ops.mkldnn._is_mkldnn_fp16_supported()` (AVX512-FP16 / AMX-FP16).
- `cuda`: one `CudaDevice` per visible GPU (name, compute capability, `torch.cuda.is_bf16_supported()`).

Emulating an AVX2-only CPU on an AMX one takes three variables, one per library that picks kernels by CPUID:
`ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN: convolutions, and the bf16/fp16/AMX probes above),
`ATEN_CPU_CAPABILITY=avx2` (ATen's own vectorized kernels: elementwise, norms, pooling) and
`MKL_ENABLE_INSTRUCTIONS=AVX2` (MKL's fp32 GEMM, i.e. the linear layers). torch's cpuinfo probes
(`torch.cpu._is_*`) read the hardware and ignore the oneDNN cap, so the native flags are capped here too.
What the emulation cannot change: clock, caches and memory bandwidth stay the Xeon's (docs/MACHINES.md).

Overrides, for tests and for trying the other branch of a decision on any machine:

- `override_machine(cpu_bf16_native=False, ...)`: a context manager (also usable as a decorator) replacing fields;
- `RB_MACHINE="cpu_bf16_native=0,cpu_fp16_native=0"` in the environment: the same for a whole process (and the
  processes it starts). A decision forced this way is only a decision: forcing `cpu_bf16_kernels=1` on a CPU
  without them makes oneDNN's bf16 reorder raise, as the real probe says it would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import threading
from dataclasses import dataclass

import torch

__all__ = ["Machine", "CudaDevice", "machine", "probe_machine", "override_machine", "ENV_OVERRIDE"]

ENV_OVERRIDE = "RB_MACHINE"

# oneDNN ISA names from lowest to highest (ONEDNN_MAX_CPU_ISA values); bf16 arithmetic starts at avx512_core_bf16
_ONEDNN_ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx", "avx512_core_amx",
                "avx10_1_512_amx_fp16", "avx512_core_amx_fp16", "default", "all")


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    capability: tuple[int, int]
    bf16: bool

    def describe(self) -> str:
        return f"cuda:{self.index} {self.name} (capability {self.capability[0]}.{self.capability[1]}, " \
               f"bf16 {'yes' if self.bf16 else 'no'})"


@dataclass(frozen=True)
class Machine:
    cpu_name: str
    cpu_capability: str
    cpu_bf16_kernels: bool
    cpu_bf16_native: bool
    cpu_amx: bool
    cpu_fp16_native: bool
    mkldnn: bool
    cuda: tuple[CudaDevice, ...] = ()
    overridden: tuple[str, ...] = ()  # names of the fields set by an override, not by the probe

    def describe_cpu(self) -> str:
        bf16 = "native (AMX)" if self.cpu_amx and self.cpu_bf16_native else \
            "native (AVX512-BF16)" if self.cpu_bf16_native else \
            "emulated (no AMX / AVX512-BF16)" if self.cpu_bf16_kernels else "not native (no AMX / AVX512-BF16)"
        fp16 = "native" if self.cpu_fp16_native else "not native"
        forced = f"; overridden: {', '.join(self.overridden)}" if self.overridden else ""
        return f"{self.cpu_name} (ATen {self.cpu_capability}; bf16 {bf16}; fp16 {fp16}{forced})"

    def describe(self) -> str:
        gpus = "; ".join(d.describe() for d in self.cuda) or "none"
        return f"CPU {self.describe_cpu()}; CUDA: {gpus}"

    def cuda_device(self, index: int | None = None) -> CudaDevice | None:
        if not self.cuda:
            return None
        if index is None:
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return next((d for d in self.cuda if d.index == index), self.cuda[0])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _probe(fn_name: str, module=None) -> bool:
    fn = getattr(module if module is not None else torch.cpu, fn_name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # a probe this torch lacks or that fails says "no"
        return False


def _onednn_cap_allows(isa: str) -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if not cap or cap.lower() not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap.lower()) >= _ONEDNN_ISAS.index(isa)


def probe_machine() -> Machine:
    """Read the machine now, from torch's probes (no override applied)."""
    mkldnn = torch.backends.mkldnn.is_available()
    mk = torch.ops.mkldnn
    bf16_kernels = mkldnn and _probe("_is_mkldnn_bf16_supported", mk)
    amx = bf16_kernels and _probe("_is_amx_tile_supported") and _onednn_cap_allows("avx512_core_amx")
    bf16_native = bf16_kernels and (amx or (_probe("_is_avx512_bf16_supported")
                                            and _onednn_cap_allows("avx512_core_bf16")))
    fp16_native = mkldnn and _probe("_is_mkldnn_fp16_supported", mk)
    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            with torch.cuda.device(i):
                bf16 = bool(torch.cuda.is_bf16_supported(including_emulation=False))
            cuda.append(CudaDevice(i, torch.cuda.get_device_name(i), tuple(cap), bf16))
    return Machine(cpu_name=_cpu_name(), cpu_capability=str(torch.backends.cpu.get_cpu_capability()),
                   cpu_bf16_kernels=bf16_kernels, cpu_bf16_native=bf16_native, cpu_amx=amx,
                   cpu_fp16_native=fp16_native, mkldnn=mkldnn, cuda=tuple(cuda))


_BOOL_FIELDS = ("cpu_bf16_kernels", "cpu_bf16_native", "cpu_amx", "cpu_fp16_native", "mkldnn")


def _apply(m: Machine, changes: dict) -> Machine:
    fields = {f.name for f in dataclasses.fields(Machine)} - {"overridden", "cuda"}
    unknown = set(changes) - fields
    if unknown:
        raise ValueError(f"unknown machine field(s) {sorted(unknown)}; choose from {sorted(fields)}")
    return dataclasses.replace(m, **changes, overridden=tuple(sorted(set(m.overridden) | set(changes))))


def _parse_env(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"{ENV_OVERRIDE}: expected FIELD=VALUE items separated by commas, got {item!r}")
        if key in _BOOL_FIELDS:
            if value.strip().lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise ValueError(f"{ENV_OVERRIDE}: {key} must be 0 or 1, got {value!r}")
            out[key] = value.strip().lower() in ("1", "true", "yes")
        else:
            out[key] = value.strip()
    return out


_lock = threading.Lock()
_probed: Machine | None = None
_stack: list[Machine] = []


def machine() -> Machine:
    """This machine (probed once per process), with `RB_MACHINE` and any active `override_machine` applied."""
    global _probed
    if _stack:
        return _stack[-1]
    with _lock:
        if _probed is None:
            m = probe_machine()
            env = os.environ.get(ENV_OVERRIDE, "")
            _probed = _apply(m, _parse_env(env)) if env.strip() else m
        return _probed


@contextlib.contextmanager
def override_machine(**changes):
    """Within the block, `machine()` answers with these fields replaced (e.g. cpu_bf16_native=False)."""
    m = _apply(machine(), changes)
    _stack.append(m)
    try:
        yield m
    finally:
        _stack.remove(m)
