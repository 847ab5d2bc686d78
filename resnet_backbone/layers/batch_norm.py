"""Normalization layers and the `get_norm` factory used by every builder."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "get_norm", "NORM_CHOICES", "batch_norm_scale_shift"]


def batch_norm_scale_shift(weight: torch.Tensor | None, bias: torch.Tensor | None, running_mean: torch.Tensor,
                           running_var: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with batch_norm(x) == x * scale + shift under constant statistics: the one
    formula for FrozenBatchNorm2d and for folding a norm into a conv (modeling/fast_paths). weight / bias None
    (a BatchNorm2d without affine) count as 1 / 0."""
    scale = (running_var + eps).rsqrt()
    if weight is not None:
        scale = weight * scale
    shift = -(running_mean * scale) if bias is None else bias - running_mean * scale
    return scale, shift


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are constants (buffers).

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, folded into one scale and shift.
    Loads state dicts written by nn.BatchNorm2d (num_batches_tracked is accepted and ignored).
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_norm_scale_shift(self.weight, self.bias, self.running_mean, self.running_var, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        return x * scale + shift

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm in `module` by a FrozenBatchNorm2d with its statistics."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.data.copy_(module.weight.detach())
                frozen.bias.data.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.data.copy_(module.running_mean)
                frozen.running_var.data.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


NORM_CHOICES = ("", "none", "BN", "SyncBN", "FrozenBN", "GN")


def get_norm(norm, out_channels: int) -> nn.Module | None:
    """Build a norm layer from its config name ("BN", "SyncBN", "FrozenBN", "GN", "" / "none") or a callable."""
    if norm is None:
        return None
    if callable(norm) and not isinstance(norm, str):
        return norm(out_channels)
    if norm in ("", "none"):
        return None
    if norm == "BN":
        return nn.BatchNorm2d(out_channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(out_channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(out_channels)
    if norm == "GN":
        return nn.GroupNorm(32 if out_channels % 32 == 0 else _largest_divisor(out_channels, 32), out_channels)
    raise ValueError(f"unknown norm '{norm}'; expected one of {', '.join(repr(n) for n in NORM_CHOICES)}")


def _largest_divisor(n: int, at_most: int) -> int:
    return max(g for g in range(1, at_most + 1) if n % g == 0)


def norm_in_eval_mode(module: nn.Module) -> None:
    """Put norm layers with running statistics into eval behaviour (used by freezing)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
