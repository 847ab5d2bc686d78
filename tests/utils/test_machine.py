"""utils/machine.py: the probe reads torch's own answers; overrides let every decision be tried on any CPU."""
import os
import subprocess
import sys

import pytest
import torch

from resnet_backbone.utils.machine import ENV_OVERRIDE, machine, override_machine, probe_machine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in (ENV_OVERRIDE, "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=full).stdout.strip()


def test_probe_reports_what_torch_reports():
    m = probe_machine()
    assert m.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert m.mkldnn == torch.backends.mkldnn.is_available()
    assert m.cpu_bf16_kernels == (m.mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert m.cpu_fp16_native == (m.mkldnn and torch.ops.mkldnn._is_mkldnn_fp16_supported())
    # native bf16 needs the kernels and bf16 arithmetic; AMX is one kind of it
    assert not m.cpu_bf16_native or m.cpu_bf16_kernels
    assert not m.cpu_amx or m.cpu_bf16_native
    if m.cpu_bf16_native:
        assert torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert len(m.cuda) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert m.cpu_name and m.cpu_name in m.describe() and m.cpu_capability in m.describe()
    assert m.overridden == ()


def test_override_replaces_fields_inside_the_block_only():
    before = machine()
    with override_machine(cpu_bf16_native=False, cpu_amx=False) as m:
        assert machine() is m and not m.cpu_bf16_native and not m.cpu_amx
        assert m.cpu_capability == before.cpu_capability  # the rest is the real machine
        assert set(m.overridden) == {"cpu_bf16_native", "cpu_amx"} and "overridden" in m.describe()
        with override_machine(cpu_bf16_native=True):
            assert machine().cpu_bf16_native and not machine().cpu_amx  # nested: on top of the outer one
        assert not machine().cpu_bf16_native
    assert machine() == before
    with pytest.raises(ValueError, match="unknown machine field"):
        with override_machine(cpu_bf16=True):
            pass


def test_environment_override_reaches_a_child_process():
    code = "from resnet_backbone.utils.machine import machine; m = machine(); " \
           "print(m.cpu_bf16_native, m.cpu_fp16_native, ','.join(m.overridden))"
    assert _child(code, **{ENV_OVERRIDE: "cpu_bf16_native=0, cpu_fp16_native=1"}) == \
        "False True cpu_bf16_native,cpu_fp16_native"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, ENV_OVERRIDE: "cpu_bf16_native=maybe"})
    assert bad.returncode != 0 and "cpu_bf16_native must be 0 or 1" in bad.stderr


def test_onednn_isa_cap_emulates_an_avx2_only_cpu():
    """ONEDNN_MAX_CPU_ISA=AVX2 (how an AMX machine plays an AVX2 EPYC): no bf16 kernels, no native bf16/fp16,
    no AMX, whatever the hardware; and oneDNN's bf16 reorder then raises as it does on such a CPU."""
    code = ("import torch; from resnet_backbone.utils.machine import machine; m = machine(); "
            "print(m.cpu_bf16_kernels, m.cpu_bf16_native, m.cpu_amx, m.cpu_fp16_native)")
    assert _child(code, ONEDNN_MAX_CPU_ISA="AVX2") == "False False False False"
