"""Norms folded into the convs that carry them (MODEL.FUSE_FROZEN_BN)."""
from __future__ import annotations

import logging

import torch
from torch import nn

from ...layers import Conv2d, FrozenBatchNorm2d
from ...layers.batch_norm import batch_norm_scale_shift
from ...layers.wrappers import fold_scale_shift
from .layout import memory_format_of

__all__ = ["fuse_conv_frozen_bn", "norm_scale_shift", "fold_norm"]

logger = logging.getLogger(__name__)

_STATS = ("weight", "bias", "running_mean", "running_var", "eps")


def norm_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (scale, shift) with norm(x) == x * scale + shift, or None when the norm cannot be folded
    (GroupNorm, a BatchNorm in training mode or without running statistics, anything else)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training or norm.running_mean is None or norm.running_var is None:
            return None  # batch statistics: the output depends on the batch, nothing to fold
    elif not (all(hasattr(norm, n) for n in _STATS) and not isinstance(norm, (nn.GroupNorm, nn.LayerNorm))
              and not any(isinstance(getattr(norm, n), nn.Parameter) for n in _STATS[:2])):
        return None  # not torchvision.ops.FrozenBatchNorm2d or a look-alike (constant statistics held as buffers)
    return batch_norm_scale_shift(*(getattr(norm, n) for n in _STATS))


@torch.no_grad()
def fold_norm(conv: nn.Conv2d, norm: nn.Module) -> bool:
    """Fold `norm` (applied after `conv`) into conv's weight and bias, in place, in float64; False when it cannot
    be folded (conv left as it was)."""
    ss = norm_scale_shift(norm)
    if ss is None:
        return False
    scale, shift = (t.detach().to(torch.float64) for t in ss)
    w = conv.weight.detach()
    old_b = conv.bias.detach().to(torch.float64) if conv.bias is not None else None
    new_w, new_b = fold_scale_shift(w.to(torch.float64), old_b, scale, shift)
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(new_w.to(w.dtype).contiguous(memory_format=memory_format_of(w)),
                               requires_grad=requires_grad)
    conv.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=requires_grad)
    return True


def fuse_conv_frozen_bn(model: nn.Module) -> nn.Module:
    """Fold each FrozenBatchNorm2d / eval-mode BatchNorm2d carried by a `layers.Conv2d` (as `.norm`) into the
    conv's weight and bias, in place; the conv's `.norm` becomes None and the conv stays a `layers.Conv2d`.
    GroupNorm and train-mode BatchNorm stay.

    Returns `model`. The result computes the same function (to float rounding) for inference.
    """
    folded = 0
    for m in model.modules():
        if isinstance(m, Conv2d) and m.norm is not None and fold_norm(m, m.norm):
            m.norm = None
            folded += 1
    logger.debug("fuse_conv_frozen_bn: folded %d norms", folded)
    return model
