"""Precise BatchNorm statistics (TEST.PRECISE_BN; Wu & Johnson, "Rethinking Batch in BatchNorm", 2021).

During training a BatchNorm layer keeps an exponential moving average of its batch statistics, dominated by the
last few batches and computed while the weights were still changing. Before an evaluation they are replaced by
population statistics under the current weights: the model runs forward in train mode, without grad, over N
batches, and every BatchNorm layer's running mean and variance become the mean and (biased) variance of all the
values it normalised in them, each batch weighted by its size (fvcore's `update_bn_stats`, which detectron2's
PreciseBN hook uses, estimates the same; tests/engine/test_precise_bn.py compares the two). The sums are taken
from each layer's input in float64 by a forward pre-hook; the layers' momentum plays no part.

    n = update_bn_stats(model, iter(train_batches), num_iters=200)   # the BatchNorm layers in training mode
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["BN_TYPES", "get_bn_modules", "update_bn_stats"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def get_bn_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of `model` in training mode that track running statistics (FrozenBatchNorm2d is not
    one: it has no batch statistics)."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.training and m.track_running_stats]


class _Moments:
    """Count, sum and sum of squares per channel of every input a BatchNorm layer sees (float64)."""

    def __init__(self):
        self.count, self.sum, self.sum_sq = 0, None, None

    def __call__(self, module, inputs):
        x = inputs[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]  # channels are dim 1 for every BatchNorm
        s = x.sum(dim=dims, dtype=torch.float64)
        sq = x.float().square().sum(dim=dims, dtype=torch.float64)
        n = x.numel() // x.shape[1]
        self.count += n
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq = sq if self.sum_sq is None else self.sum_sq + sq

    def reduce(self, sync: bool) -> None:
        """Add the moments of every process (SyncBatchNorm normalises over all of them)."""
        if sync and self.sum is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            packed = torch.cat([self.sum, self.sum_sq, self.sum.new_tensor([self.count])])
            torch.distributed.all_reduce(packed)
            c = self.sum.numel()
            self.sum, self.sum_sq, self.count = packed[:c], packed[c:2 * c], int(packed[-1].item())


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, num_iters: int = 200,
                    forward: Callable | None = None) -> int:
    """Set the running mean / var of every layer of get_bn_modules(model) to the mean / variance of everything it
    normalised during the next `num_iters` items of `batches` (`forward(batch)`, by default `model(batch)`).
    Returns how many layers were updated; a layer that saw no input keeps its statistics. ValueError when
    `batches` ends early."""
    bns = get_bn_modules(model)
    if not bns or num_iters <= 0:
        return 0
    moments = [_Moments() for _ in bns]
    hooks = [bn.register_forward_pre_hook(m) for bn, m in zip(bns, moments)]
    seen = 0
    try:
        for batch in itertools.islice(batches, num_iters):
            (forward or model)(batch)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
    if seen < num_iters:
        raise ValueError(f"TEST.PRECISE_BN.NUM_ITER is {num_iters} but the loader gave only {seen} batches")
    for bn, m in zip(bns, moments):
        m.reduce(isinstance(bn, nn.SyncBatchNorm))
        if not m.count:
            continue
        mean = m.sum / m.count
        var = (m.sum_sq / m.count - mean.square()).clamp_(min=0)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return len(bns)
