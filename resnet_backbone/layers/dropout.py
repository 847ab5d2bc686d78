"""Dropout whose CPU mask costs about a third of torch's: 15 random bits per element, not a uniform float each.

torch's CPU dropout draws its mask with `bernoulli_`, a floating-point uniform per element from the CPU generator:
in a DETR training step on 2 cores that is 60 masks and 15 % of the step (`tools/benchmark.py --rows 5 --only
detr_train --profile 10` before this module; docs/BENCHMARKS.md, peer rows). Here one 32-bit draw of
the same generator (`torch.manual_seed` reproduces it) masks two elements: an int32 `random_()` is uniform on
[0, 2^31), so its low 16 bits and its next 15 bits are independent uniforms, and an element is dropped when its
lane falls below the lane's threshold.

The drop probability is p rounded to a multiple of 2^-15 (0.1 -> 0.100006) and the kept elements are scaled by
1 / (1 - that probability), so the expectation of the output is the input's, exactly, as in torch's dropout.
On CUDA (Philox, already cheap) and wherever p is within 2^-16 of 0 or 1 this is torch's own dropout.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout", "dropout_keep_mask"]

_BITS = 15  # the high lane of an int32 random_() draw has 15 random bits, the low lane 16


def dropout_keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True with probability 1 - p', and p' (p rounded to a multiple of 2^-15)."""
    n = 1
    for s in shape:
        n *= int(s)
    k = round(p * (1 << _BITS))
    if not 0 < k < (1 << _BITS):
        raise ValueError(f"dropout_keep_mask: p = {p} rounds to {k} / 2^15; it needs 0 < p' < 1 (use F.dropout)")
    draws = torch.empty((n + 1) // 2, dtype=torch.int32, device=device).random_()  # uniform on [0, 2^31)
    low = -(1 << 15) + 2 * k  # the 16-bit lane, signed: below this with probability 2k / 2^16 = k / 2^15
    thresholds = torch.tensor([low, k] if sys.byteorder == "little" else [k, low], dtype=torch.int16,
                              device=device)
    keep = draws.view(torch.int16).view(-1, 2) >= thresholds
    return keep.view(-1)[:n].view(shape), k / (1 << _BITS)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with the mask of `dropout_keep_mask` on CPU (module docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    k = round(p * (1 << _BITS))
    if not training or not 0 < k < (1 << _BITS) or x.device.type != "cpu" or x.numel() == 0:
        return F.dropout(x, p, training)  # p within 2^-16 of 0 or 1 (incl. 0 and 1): torch's, exactly
    keep, p_eff = dropout_keep_mask(x.shape, p, x.device)
    scale = torch.tensor(1.0 / (1.0 - p_eff), dtype=x.dtype)
    # the mask times the scale, in x's dtype: autograd keeps it for the backward (one multiply each way)
    return x * torch.where(keep, scale, torch.zeros((), dtype=x.dtype))


class Dropout(nn.Dropout):
    """nn.Dropout with `dropout` above (an nn.Dropout to isinstance checks; never in place)."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
