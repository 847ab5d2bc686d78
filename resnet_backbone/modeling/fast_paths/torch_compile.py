"""torch.compile for inference (MODEL.COMPILE)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["compile_model"]


def compile_model(model: nn.Module, **kwargs) -> nn.Module:
    """`torch.compile(model, **kwargs)` (dynamic shapes allowed); the first calls are slow (compilation). The
    result is torch's wrapper; its `_orig_mod` is `model`."""
    kwargs.setdefault("dynamic", None)
    return torch.compile(model, **kwargs)
