"""META_ARCH_REGISTRY and build_model(cfg): the detector named by cfg.MODEL.META_ARCHITECTURE."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Registry for detectors. A registered class is called as `cls(cfg)` (or has `from_config(cfg)`) and
returns an nn.Module following the Model I/O contract in docs/ARCHITECTURE.md.
"""


def build_model(cfg) -> torch.nn.Module:
    name = cfg.MODEL.META_ARCHITECTURE
    try:
        arch = META_ARCH_REGISTRY.get(name)
    except KeyError as e:
        known = ", ".join(sorted(k for k, _ in META_ARCH_REGISTRY))
        raise KeyError(f"MODEL.META_ARCHITECTURE: no detector named '{name}'; registered: {known}") from e
    model = arch.from_config(cfg) if hasattr(arch, "from_config") else arch(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
