"""Prepacked oneDNN convolutions with fused post-ops, for CPU inference (MODEL.MKLDNN_PREPACK)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import Conv2d
from .fold import norm_scale_shift
from .fusion import Fusable, computes_as
from .layout import memory_format_of

__all__ = ["MkldnnConv2d", "mkldnn_available", "pack_conv", "prepack_mkldnn"]

logger = logging.getLogger(__name__)


def mkldnn_available() -> bool:
    """True when this torch build has the oneDNN fused-convolution ops that `prepack_mkldnn` uses."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def _cpu_autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _bf16_kernels() -> bool:
    """oneDNN has bf16 conv kernels here (without them its bf16 weight reorder raises: AVX2-only CPUs)."""
    from ...utils.machine import machine

    return machine().cpu_bf16_kernels


class MkldnnConv2d(nn.Module):
    """A 2-D convolution with its weight prepacked for oneDNN, plus fused post-ops (CPU inference).

    forward(x) = act(conv(x)); forward(x, other) = act(conv(x) + other) with act in {None, "relu"}: the fused-conv
    contract of fusion.py. The dense weight and bias stay as buffers (so `state_dict()` still holds them); the
    packed copies are built once per (dtype, input shape) and reused, at most `max_packed` of them (least recently
    used dropped; 6 covers an RPN head shared by five FPN levels). When autograd is recording, for non-CPU tensors,
    or in bf16 where oneDNN has no bf16 kernels, it computes the same thing with `F.conv2d` (`uses_packed_kernel`).
    """

    max_packed = 6

    def __init__(self, conv: nn.Conv2d, activation: str | None = None):
        super().__init__()
        if activation not in (None, "relu"):
            raise ValueError(f"MkldnnConv2d: activation must be None or 'relu', got {activation!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("MkldnnConv2d: only numeric zero padding is supported")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation, self.groups = tuple(conv.padding), tuple(conv.dilation), conv.groups
        self.activation = activation
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self._packed: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"activation={self.activation}")

    def _apply(self, fn, recurse=True):
        self._packed = {}  # weights moved or changed: repack lazily
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def _pack(self, dtype: torch.dtype, input_size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight reordered into the blocked layout oneDNN picks for this input shape (and the bias).

        oneDNN chooses the weight's blocking from the whole problem (batch, spatial size, channels); a weight packed
        for one input shape and used with another is reordered again inside every call, and that blocked-to-blocked
        reorder is slower than eager PyTorch's plain-to-blocked one. So packed copies are kept per (dtype, input
        shape), the most recent `max_packed` of them.
        """
        key = (dtype, input_size)
        hit = self._packed.pop(key, None)
        if hit is None:
            w = self.weight.to(dtype).contiguous()
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(input_size))
            bias = None if self.bias is None else self.bias.to(dtype).contiguous()
            hit = (packed, bias)
            while len(self._packed) >= self.max_packed:
                self._packed.pop(next(iter(self._packed)))  # least recently used
        self._packed[key] = hit  # (re)inserted last: most recently used
        return hit

    def _reference(self, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = y + other
        return F.relu(y) if self.activation == "relu" else y

    @staticmethod
    def uses_packed_kernel(x: torch.Tensor, other: torch.Tensor | None = None) -> bool:
        """Whether `forward` runs oneDNN's packed kernel for this input (after CPU bf16 autocast has cast it): a
        CPU tensor, autograd not recording through it, float32, or bfloat16 where oneDNN has bf16 kernels (AMX /
        AVX512-BF16; an AVX2-only CPU has none and takes `F.conv2d`). Otherwise the `F.conv2d` reference."""
        if x.device.type != "cpu" or (torch.is_grad_enabled() and (
                x.requires_grad or (other is not None and other.requires_grad))):
            return False
        return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _bf16_kernels())

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None, *, accumulate: bool = False) -> torch.Tensor:
        """act(conv(x) [+ other]). accumulate=True allows writing the result into `other` (oneDNN's sum post-op:
        no new output buffer, `other` read once); it is done only when `other` already has the output's dtype
        and layout, and the caller promises nothing else reads `other` afterwards."""
        if _cpu_autocast_bf16() and x.dtype == torch.float32:
            x = x.to(torch.bfloat16)
        if not self.uses_packed_kernel(x, other):
            return self._reference(x, other)
        packed, bias = self._pack(x.dtype, tuple(x.shape))
        args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, *args, self.activation or "none", [], "")
        fmt = memory_format_of(x)
        if accumulate and other.dtype == x.dtype and other.is_contiguous(memory_format=fmt) \
                and not other.requires_grad:
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, packed, bias, *args, "add", 1.0,
                                                                   self.activation, [], "")
        other = other.to(x.dtype)
        if not other.is_contiguous(memory_format=fmt):
            other = other.contiguous(memory_format=fmt)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, packed, bias, *args, "add", 1.0,
                                                       self.activation, [], "")


def _relu_activation(act) -> bool:
    return isinstance(act, nn.ReLU) or act in (F.relu, F.relu_, torch.relu, torch.relu_)


def _packable(conv: nn.Module) -> bool:
    """A plain convolution (nn.Conv2d or layers.Conv2d, or a subclass computing as one of them), fp32, numeric zero
    padding, carrying no norm."""
    if not any(computes_as(conv, base, ("forward", "_conv_forward")) for base in (Conv2d, nn.Conv2d)):
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.weight.dtype != torch.float32:
        return False
    return getattr(conv, "norm", None) is None


def pack_conv(conv: nn.Module, activation: str | None = None) -> MkldnnConv2d | None:
    """The `fuse_conv` of the oneDNN prepack (fusion.py): `conv` as an `MkldnnConv2d` with `activation` fused, or
    None when it cannot be one (not a plain fp32 zero-padded conv, or it carries a norm or an activation)."""
    if not _packable(conv) or getattr(conv, "activation", None) is not None:
        return None
    return MkldnnConv2d(conv, activation)


def _prepack(module: nn.Module) -> nn.Module:
    """`module`'s fused form if it offers one, then every plain conv below it swapped (recursively)."""
    if isinstance(module, Fusable):
        module = module.fuse_for_inference(pack_conv) or module
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        if not _packable(child):
            new = _prepack(child)
            if new is not child:
                setattr(module, name, new)
            continue
        act = getattr(child, "activation", None)
        if act is None:
            # inside a Sequential, conv followed by ReLU (e.g. torchvision's Conv2dNormActivation in the RPN head)
            # feeds nothing else: fuse the ReLU and leave an Identity in its place
            nxt = children[i + 1] if i + 1 < len(children) else None
            if isinstance(module, nn.Sequential) and nxt is not None and isinstance(nxt[1], nn.ReLU):
                setattr(module, name, MkldnnConv2d(child, "relu"))
                setattr(module, nxt[0], nn.Identity())
            else:
                setattr(module, name, MkldnnConv2d(child, None))
        elif _relu_activation(act):
            setattr(module, name, MkldnnConv2d(child, "relu"))
    return module


def prepack_mkldnn(model: nn.Module) -> nn.Module:
    """Replace convolutions by prepacked oneDNN convolutions (`MkldnnConv2d`), in place; returns `model` (or its
    fused form, when `model` itself is e.g. a single block).

    Every module that offers a fused inference form (fusion.py) installs it: our ResNet's stem and blocks (any
    subclass computing as they do) whose convs carry no norm any more, i.e. after `fuse_conv_frozen_bn`, become
    conv+ReLU and conv+add+ReLU in one oneDNN call each, and the residual sum is written in place into the
    projection shortcut's output or, from the second block of a stage on, into the block's input (the previous
    block's output, which only this block reads): no new buffer per block. So do not keep references to (or hook)
    the outputs of blocks other than the last of a stage; the stage outputs (res2..res5) are never overwritten.
    The FPN's lateral convs add the upsampled coarser level as a post-op. Every other conv without a norm
    (`layers.Conv2d` or `nn.Conv2d`, fp32, zero padding) is swapped one for one, keeping a ReLU activation fused.
    Convs that still carry a norm (a warning names how many could have been folded first), deformable convs and
    transposed convs are left alone. No-op (with a warning) when this torch has no oneDNN.
    """
    if not mkldnn_available():
        logger.warning("prepack_mkldnn: this torch build has no oneDNN fused conv ops; model left unchanged")
        return model
    if model.training:
        logger.warning("prepack_mkldnn: model is in training mode; prepacked convs only speed up no-grad inference")
    model = _prepack(model)
    foldable = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and getattr(m, "norm", None) is not None
                   and norm_scale_shift(m.norm) is not None)
    if foldable:
        logger.warning("prepack_mkldnn: %d convs carry a norm that could be folded (FrozenBatchNorm2d / eval "
                       "BatchNorm2d) and stay unpacked; fold them first (fuse_conv_frozen_bn, MODEL.FUSE_FROZEN_BN)",
                       foldable)
    return model
