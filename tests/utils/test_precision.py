"""utils/precision.py: every branch of the precision decision, for both CPU kinds and for CUDA, on any machine."""
import pytest
import torch

from resnet_backbone.utils.machine import CudaDevice, Machine
from resnet_backbone.utils.precision import PrecisionError, normalize_amp_request, resolve_amp


def _machine(bf16: bool, fp16: bool = False, cuda=()) -> Machine:
    return Machine(cpu_name="Test CPU 9000", cpu_capability="AVX512" if bf16 else "AVX2", cpu_bf16_kernels=bf16,
                   cpu_bf16_native=bf16, cpu_amx=bf16, cpu_fp16_native=fp16, mkldnn=True, cuda=tuple(cuda))


AMX, AVX2 = _machine(True, True), _machine(False)


@pytest.mark.parametrize("request_", [False, "auto", True, "force"])
def test_cpu_with_native_bf16_runs_what_was_asked(request_):
    d = resolve_amp(request_, "bfloat16", "cpu", info=AMX)
    assert d.dtype == (torch.float32 if request_ is False else torch.bfloat16)
    assert not d.emulated and d.device_type == "cpu"


def test_cpu_without_native_bf16():
    auto = resolve_amp("auto", "bfloat16", "cpu", info=AVX2)
    assert auto.dtype == torch.float32 and not auto.enabled
    assert "Test CPU 9000" in auto.reason and "no native bfloat16" in auto.reason
    forced = resolve_amp("force", "bfloat16", "cpu", info=AVX2)
    assert forced.dtype == torch.bfloat16 and forced.emulated and "slower" in forced.reason
    with pytest.raises(PrecisionError) as e:
        resolve_amp(True, "bfloat16", "cpu", info=AVX2)
    msg = str(e.value)
    # names the key, the CPU, what it supports and how to insist
    for part in ("SOLVER.AMP.ENABLED True", "Test CPU 9000", "AVX2", "no native bfloat16", "float32",
                 "SOLVER.AMP.ENABLED auto", "SOLVER.AMP.ENABLED force"):
        assert part in msg, part


def test_fp16_on_cpu_follows_native_fp16():
    assert resolve_amp(True, "float16", "cpu", info=AMX).dtype == torch.float16
    assert resolve_amp("auto", "float16", "cpu", info=AVX2).dtype == torch.float32
    with pytest.raises(PrecisionError, match=r"SOLVER.AMP.ENABLED True asks for float16 .* no native float16"):
        resolve_amp(True, "float16", "cpu", info=AVX2)
    # bf16 native but fp16 not: the message says bf16 would run
    with pytest.raises(PrecisionError, match="bfloat16 natively"):
        resolve_amp(True, "float16", "cpu", info=_machine(True, False))


def test_cuda_bf16_needs_a_device_with_it():
    old = CudaDevice(0, "Tesla V100", (7, 0), bf16=False)
    new = CudaDevice(0, "H100", (9, 0), bf16=True)
    assert resolve_amp(True, "bfloat16", "cuda", info=_machine(False, cuda=[new])).dtype == torch.bfloat16
    assert resolve_amp(True, "float16", "cuda", info=_machine(False, cuda=[old])).dtype == torch.float16
    assert resolve_amp("auto", "bfloat16", "cuda", info=_machine(False, cuda=[old])).dtype == torch.float32
    for req in (True, "force"):
        with pytest.raises(PrecisionError, match=r"Tesla V100 .*capability 7.0.* no bfloat16.*float16"):
            resolve_amp(req, "bfloat16", "cuda", info=_machine(False, cuda=[old]))
    with pytest.raises(PrecisionError, match="no CUDA device"):
        resolve_amp(True, "float16", "cuda", info=AVX2)


def test_requests_and_dtypes_are_checked():
    assert normalize_amp_request("AUTO") == "auto" and normalize_amp_request("true") is True
    with pytest.raises(PrecisionError, match=r"SOLVER.AMP.ENABLED: expected True, False, 'auto' or 'force'"):
        normalize_amp_request("yes")
    with pytest.raises(PrecisionError, match=r"SOLVER.AMP.DTYPE: expected 'bfloat16' or 'float16'"):
        resolve_amp(True, "int8", "cpu", info=AMX)
    d = resolve_amp(False, "int8", "cpu", info=AMX)  # off: the dtype does not matter
    assert not d.enabled
    with d.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with resolve_amp("force", "bfloat16", "cpu", info=AVX2).autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
