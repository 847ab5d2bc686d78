"""channels_last (NHWC): the memory order oneDNN's fast CPU kernels and cuDNN's tensor-core kernels want."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_channels_last", "memory_format_of"]


def to_channels_last(obj):
    """A module: its 4-D parameters and buffers in channels_last order, in place (convolutions then produce
    channels_last outputs; inputs may stay NCHW, the first conv converts); returns the module. A 4-D tensor: the
    tensor in channels_last order (itself when it already is)."""
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last)
    return obj.contiguous(memory_format=torch.channels_last)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """torch.channels_last for a 4-D tensor laid out NHWC (and not also NCHW-contiguous), else contiguous_format."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
