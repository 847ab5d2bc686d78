"""Small conv wrapper: a Conv2d that carries its own norm and activation."""
from __future__ import annotations

import torch
from torch import nn

from .batch_norm import FrozenBatchNorm2d


class Conv2d(nn.Conv2d):
    """nn.Conv2d with optional `norm` and `activation` applied after the convolution.

    Keeping the norm inside the conv module gives checkpoint names like detectron2's
    (`conv1.weight`, `conv1.norm.weight`), which our converters rely on.

    A FrozenBatchNorm2d is a constant per-channel affine map, so it is applied by scaling the conv's weight and
    bias instead of the conv's output: one convolution with a bias rather than a convolution plus two passes
    over its output (and, in training, no extra pass in the backward either; the gradient still reaches
    `weight`). Same function up to float rounding. Forward hooks on `.norm` do not fire in that case.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d):
            scale, shift = (t.to(self.weight.dtype) for t in self.norm.scale_and_shift())
            weight = self.weight * scale.reshape(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias * scale + shift
            x = self._conv_forward(x, weight, bias)
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
