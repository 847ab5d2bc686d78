"""Small conv wrapper: a Conv2d that carries its own norm and activation."""
from __future__ import annotations

import torch
from torch import nn

from .batch_norm import FrozenBatchNorm2d


def fold_scale_shift(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
                     shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the conv that computes conv(x, weight, bias) * scale + shift (per output channel): the
    one way a norm is folded into a conv, per call here and once for inference in modeling/fast_paths."""
    return weight * scale.reshape(-1, 1, 1, 1), (shift if bias is None else bias * scale + shift)


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
            x = self._conv_forward(x, *fold_scale_shift(self.weight, self.bias, scale, shift))
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
