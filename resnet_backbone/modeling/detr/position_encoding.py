"""Sine positional encoding for DETR, computed from the padding mask.

Each valid pixel's (y, x) coordinate is its running count of valid pixels along the column / row
(a cumulative sum over the non-padding mask), optionally divided by the image's valid extent and scaled
to [0, scale]. Because only valid pixels are counted, padding added to the right or bottom of an image
does not change the encoding of its valid pixels; padding positions themselves get 0 coordinates.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Maps a padding mask (B, H, W) (True = padding) to an encoding (B, 2 * num_pos_feats, H, W).

    The first `num_pos_feats` channels encode y, the rest x; within each half, channel pairs (2i, 2i+1)
    hold sin and cos of coordinate / temperature ** (2i / num_pos_feats).
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` is only used with normalize=True")
        if num_pos_feats % 2:
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.dim() != 3:
            raise ValueError(f"PositionEmbeddingSine expects a (B, H, W) mask, got shape {tuple(mask.shape)}")
        valid = (~mask.bool()).to(torch.float32)
        y = valid.cumsum(dim=1)
        x = valid.cumsum(dim=2)
        if self.normalize:
            eps = 1e-6
            # the last row / column of the cumulative sum is the valid height / width of that column / row
            y = y / (y[:, -1:, :] + eps) * self.scale
            x = x / (x[:, :, -1:] + eps) * self.scale
        exponent = 2 * (torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device) // 2)
        freq = self.temperature ** (exponent / self.num_pos_feats)
        pos_y = self._interleave(y[..., None] / freq)
        pos_x = self._interleave(x[..., None] / freq)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    @staticmethod
    def _interleave(angles: torch.Tensor) -> torch.Tensor:
        # (B, H, W, F) -> sin on even channels, cos on odd channels, same layout as the official encoding
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)
