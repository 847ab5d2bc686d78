"""Adaptive Scale Fusion (DBNet++, Liao et al., TPAMI 2022): the DB head's levels weighted per scale and pixel.

DBNet concatenates its n reduced levels X_1..X_n (each C channels, at 1/4) into X. DBNet++ fuses them instead as

    S  = conv3x3(X)                                   (n C -> D channels, with bias)
    S' = S + sigmoid(W2 relu(W1 avgpool(S)))          channel attention, broadcast over H x W (added, not multiplied)
    S" = S' + sigmoid(w2 relu(w1 * mean_c(S')))       spatial attention on the channel-mean map, broadcast over C
    A  = sigmoid(W_a S")                              (D -> n channels: one weight map per scale)
    out = concat_i(A_i * X_i)                         (n C channels, what the DB maps read)

W1 (D -> D/4), W2 (D/4 -> D), w1 (3x3, 1 -> 1), w2 (1x1, 1 -> 1) and W_a are bias-free 1x1 convs unless noted.
That is the paper's scale-channel-spatial attention as both public implementations compute it (MhLiao/DB
`ScaleFeatureSelection` with "scale_channel_spatial", mmocr `FPNC` + `ScaleChannelSpatialAttention`). They differ
in D: mmocr keeps D = n C, MhLiao/DB reduces to D = n C / 4 (`channels` here; None = n C). The scales keep the
order of their inputs (finest first), as in mmocr. Initialisation: see `reset_parameters`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveScaleFusion", "ScaleChannelSpatialAttention"]


class ScaleChannelSpatialAttention(nn.Module):
    """(N, D, H, W) -> (N, num_scales, H, W) weights in (0, 1): A of the module docstring."""

    def __init__(self, channels: int, num_scales: int, hidden_channels: int):
        super().__init__()
        if hidden_channels < 1:
            raise ValueError(f"ScaleChannelSpatialAttention: hidden_channels must be >= 1, got {hidden_channels}")
        self.channel_reduce = nn.Conv2d(channels, hidden_channels, 1, bias=False)
        self.channel_expand = nn.Conv2d(hidden_channels, channels, 1, bias=False)
        self.spatial_conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.spatial_proj = nn.Conv2d(1, 1, 1, bias=False)
        self.scale_weights = nn.Conv2d(channels, num_scales, 1, bias=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(s, 1)
        s = s + torch.sigmoid(self.channel_expand(F.relu(self.channel_reduce(pooled))))
        spatial = torch.sigmoid(self.spatial_proj(F.relu(self.spatial_conv(s.mean(dim=1, keepdim=True)))))
        return torch.sigmoid(self.scale_weights(s + spatial))


class AdaptiveScaleFusion(nn.Module):
    """n maps of `scale_channels` channels each (same size) -> their concatenation, each scale weighted by its
    attention map (N, n * scale_channels, H, W).

    Args:
        scale_channels: channels of each input map (the DB head's inner_channels).
        num_scales: number of input maps (levels).
        channels: output channels of the 3x3 conv feeding the attention (D); None: num_scales * scale_channels.
        attention_ratio: the channel attention's hidden width is channels // attention_ratio (4 in both
            references).
    """

    def __init__(self, scale_channels: int, num_scales: int, channels: int | None = None, attention_ratio: int = 4):
        super().__init__()
        fused = scale_channels * num_scales
        channels = int(channels or fused)
        if channels // attention_ratio < 1:
            raise ValueError(f"AdaptiveScaleFusion: channels {channels} // attention_ratio {attention_ratio} leaves "
                             "no channel for the channel attention")
        self.num_scales = int(num_scales)
        self.conv = nn.Conv2d(fused, channels, 3, padding=1)
        self.attention = ScaleChannelSpatialAttention(channels, num_scales, channels // attention_ratio)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-normal convs (ReLU gain), zero bias, as the DB head and both references, with two exceptions:

        - the scale-weight conv W_a starts at zero, so every A_i starts at 0.5: the fusion starts as DBNet's
          concatenation (halved) and learns to weigh the scales from there. With random W_a the untrained
          attention saturates (weights of 0 or 1 per pixel and scale), and the overfit run learnt far slower
          (hmean 0.47 after 300 iterations where DBNet reaches 0.9 in about 175);
        - the spatial branch's 3x3 kernel starts non-negative. Its input, the channel mean of S' = S +
          sigmoid(...), is mostly positive, and a random kernel summing to a negative number makes the 1-channel
          ReLU after it zero everywhere: the branch is then dead from the start (no gradient, a constant 0.5)
          and stays so."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.attention.spatial_conv.weight.abs_()
        nn.init.zeros_(self.attention.scale_weights.weight)

    def scale_weights(self, fused: torch.Tensor) -> torch.Tensor:
        """The concatenation (N, n C, H, W) -> the per-scale weights A (N, n, H, W)."""
        return self.attention(self.conv(fused))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != self.num_scales:
            raise ValueError(f"AdaptiveScaleFusion: built for {self.num_scales} scales, got {len(maps)} maps")
        fused = torch.cat(maps, dim=1)
        weights = self.scale_weights(fused)
        return torch.cat([weights[:, i:i + 1] * m for i, m in enumerate(maps)], dim=1)
