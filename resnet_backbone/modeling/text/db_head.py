"""The DB head: fuse P2..P5 at 1/4 scale, predict probability and threshold maps at full resolution.

Each input level is reduced by a 3x3 conv to `inner_channels`, upsampled (nearest) to the size of the finest
level (stride 4) and the levels are concatenated. Two sibling heads (conv3x3-BN-ReLU, 2x deconv-BN-ReLU,
2x deconv) map the fused features to one-channel logits at 4x the finest level's size, i.e. the input size.
In training the differentiable binarization B = 1 / (1 + exp(-k (P - T))) is returned too.

With `asf=True` (DBNet++, MODEL.DBNET.ASF) the concatenation goes through Adaptive Scale Fusion (text/asf.py):
each level is weighted by its own attention map before the map heads read it (same channel count, so a DBNet's
reductions and map heads fit a DBNet++ unchanged; only `asf.*` is new).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import Conv2d, ShapeSpec, get_norm
from .asf import AdaptiveScaleFusion

__all__ = ["DBHead"]


class _MapHead(nn.Sequential):
    """conv3x3 -> norm -> ReLU -> deconv x2 -> norm -> ReLU -> deconv x2 (to 1 channel logits)."""

    def __init__(self, in_channels: int, mid_channels: int, norm: str):
        super().__init__(
            Conv2d(in_channels, mid_channels, 3, padding=1, bias=not norm, norm=get_norm(norm, mid_channels),
                   activation=nn.ReLU(inplace=True)),
            nn.ConvTranspose2d(mid_channels, mid_channels, 2, stride=2),
            get_norm(norm, mid_channels) or nn.Identity(),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid_channels, 1, 2, stride=2),
        )


class DBHead(nn.Module):
    def __init__(self, input_shape: dict[str, ShapeSpec], in_features: list[str], inner_channels: int = 64,
                 k: float = 50.0, norm: str = "BN", asf: bool = False, asf_channels: int | None = None):
        """
        Args:
            input_shape: the backbone's output_shape(); must contain `in_features`.
            in_features: feature names, finest first (e.g. ["p2", "p3", "p4", "p5"]); the finest has stride 4.
            inner_channels: channels per level after reduction (the fused map has len(in_features) x this).
            k: amplification factor of the differentiable binarization.
            norm: normalization in the reductions and heads ("BN", "GN", "FrozenBN", "" ...).
            asf: fuse the levels with DBNet++'s Adaptive Scale Fusion instead of concatenating them.
            asf_channels: channels of the ASF's 3x3 conv (None / 0: the fused channel count, as mmocr).
        """
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(f"MODEL.DBNET.IN_FEATURES: {missing} not produced by the backbone "
                             f"(it has {sorted(input_shape)})")
        self.in_features = list(in_features)
        self.k = float(k)
        strides = [input_shape[f].stride for f in self.in_features]
        if strides[0] is not None and strides[0] != 4:
            raise ValueError(f"DBHead: the finest input feature '{self.in_features[0]}' must have stride 4, "
                             f"got {strides[0]}")
        self.reduce = nn.ModuleList(
            Conv2d(input_shape[f].channels, inner_channels, 3, padding=1, bias=not norm,
                   norm=get_norm(norm, inner_channels), activation=nn.ReLU(inplace=True))
            for f in self.in_features
        )
        fused = inner_channels * len(self.in_features)
        # DBNet++: registered only when on, so a DBNet's state dict is unchanged
        self.asf = AdaptiveScaleFusion(inner_channels, len(self.in_features), asf_channels or None) if asf else None
        self.prob_head = _MapHead(fused, inner_channels, norm)
        self.thresh_head = _MapHead(fused, inner_channels, norm)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 1e-4)
        if self.asf is not None:
            self.asf.reset_parameters()  # its own rule for the spatial attention's kernel

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        size = features[self.in_features[0]].shape[-2:]
        maps = []
        for name, reduce in zip(self.in_features, self.reduce):
            x = reduce(features[name])
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="nearest")
            maps.append(x)
        if self.asf is not None:
            return self.asf(maps)
        return torch.cat(maps, dim=1)

    def forward(self, features: dict[str, torch.Tensor], with_binary: bool | None = None) -> dict[str, torch.Tensor]:
        """Returns "prob_logits", "prob", "thresh" (and "binary" when `with_binary`, default: in training),
        each (N, 1, 4h, 4w) for a finest level of size (h, w)."""
        if with_binary is None:
            with_binary = self.training
        fused = self.fuse(features)
        prob_logits = self.prob_head(fused)
        out = {"prob_logits": prob_logits, "prob": torch.sigmoid(prob_logits)}
        if with_binary:
            thresh = torch.sigmoid(self.thresh_head(fused))
            out["thresh"] = thresh
            out["binary"] = torch.sigmoid(self.k * (out["prob"] - thresh))
        return out
