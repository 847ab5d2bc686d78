"""Small conv wrapper: a Conv2d that carries its own norm and activation."""
from __future__ import annotations

import torch
from torch import nn


class Conv2d(nn.Conv2d):
    """nn.Conv2d with optional `norm` and `activation` applied after the convolution.

    Keeping the norm inside the conv module gives checkpoint names like detectron2's
    (`conv1.weight`, `conv1.norm.weight`), which our converters rely on.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
