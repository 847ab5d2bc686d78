"""The Backbone contract every detector relies on (same API as detectron2's Backbone)."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from ...layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network that maps an image batch (N, C, H, W) to named feature maps.

    Subclasses set `self._out_features`, `self._out_feature_channels` and `self._out_feature_strides`
    (or override `output_shape`) and implement `forward(x) -> dict[str, Tensor]`.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ...

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0 = no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> dict:
        """Extra padding rules, as in detectron2: {"size_divisibility": int, "square_size": int}."""
        return {}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
