"""Inference fast paths: folded norms, channels_last, prepacked oneDNN convolutions, autocast, torch.compile.

Each switch keeps the model's outputs (tests/modeling/test_fast_paths.py checks every one for parity):

- `fuse_conv_frozen_bn(model)`: every `layers.Conv2d` that carries a FrozenBatchNorm2d (or a BatchNorm2d in
  eval mode) gets the norm folded into its weight and bias, and its `.norm` becomes None. One conv instead of
  conv + two elementwise passes over the feature map.
- `to_channels_last(model)`: 4-D parameters and buffers in NHWC order, the layout oneDNN's fast CPU kernels
  and cuDNN's tensor-core kernels want.
- `prepack_mkldnn(model)` (CPU): every conv becomes an `MkldnnConv2d` holding its weight pre-reordered in
  oneDNN's blocked layout (eager PyTorch re-reorders the weight on every call), with ReLU and, inside our
  ResNet blocks, the residual add + ReLU fused into the conv as oneDNN post-ops. Under CPU bf16 autocast it
  runs bf16 kernels (AMX / avx512_bf16 where the CPU has them) with a bf16 copy of the packed weight; where
  oneDNN has no bf16 kernels (AVX2-only CPUs) it computes through `F.conv2d` instead of failing.
- `inference_autocast(device, dtype="auto")`: mixed precision where this machine runs it natively (bf16 on
  AMX / AVX512-BF16 CPUs, fp16 / bf16 on CUDA), float32 elsewhere; see utils/precision.py.
- `optimize_for_inference(model, cfg)`: applies MODEL.FUSE_FROZEN_BN, MODEL.CHANNELS_LAST and MODEL.COMPILE
  (on CPU, FUSE_FROZEN_BN also prepacks the convs with fused post-ops) and puts the model in eval mode.

All of these change the module in place and are meant for an inference copy of the model: folded norms
cannot be trained any more, and a prepacked conv falls back to plain `F.conv2d` whenever autograd is
recording, so the outputs stay right but the speed-up is only there under `torch.no_grad()` /
`torch.inference_mode()`. Keep the original (or its state_dict) for training and checkpoints.
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Conv2d, FrozenBatchNorm2d

__all__ = [
    "fuse_conv_frozen_bn",
    "to_channels_last",
    "prepack_mkldnn",
    "MkldnnConv2d",
    "inference_autocast",
    "autocast_dtype",
    "compile_model",
    "optimize_for_inference",
    "mkldnn_available",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ norm folding
def _norm_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (scale, shift) with norm(x) == x * scale + shift, or None when the norm cannot be folded."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training or norm.running_mean is None or norm.running_var is None:
            return None  # batch statistics: the output depends on the batch, nothing to fold
        scale = (norm.running_var + norm.eps).rsqrt()
        if norm.affine:
            scale = scale * norm.weight
            shift = norm.bias - norm.running_mean * scale
        else:
            shift = -norm.running_mean * scale
        return scale, shift
    # torchvision.ops.FrozenBatchNorm2d and look-alikes: constant statistics held as buffers
    names = ("weight", "bias", "running_mean", "running_var", "eps")
    if all(hasattr(norm, n) for n in names) and not isinstance(norm, (nn.GroupNorm, nn.LayerNorm)) \
            and not any(isinstance(getattr(norm, n), nn.Parameter) for n in names[:2]):
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        return scale, norm.bias - norm.running_mean * scale
    return None


@torch.no_grad()
def _fold_norm(conv: nn.Conv2d, norm: nn.Module) -> bool:
    ss = _norm_scale_shift(norm)
    if ss is None:
        return False
    scale, shift = (t.detach().to(torch.float64) for t in ss)
    w = conv.weight.detach()
    new_w = (w.to(torch.float64) * scale.reshape(-1, 1, 1, 1)).to(w.dtype)
    old_b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(shift)
    new_b = (old_b * scale + shift).to(w.dtype)
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(new_w.contiguous(memory_format=_memory_format(w)), requires_grad=requires_grad)
    conv.bias = nn.Parameter(new_b, requires_grad=requires_grad)
    return True


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def fuse_conv_frozen_bn(model: nn.Module) -> nn.Module:
    """Fold each FrozenBatchNorm2d / eval-mode BatchNorm2d carried by a `layers.Conv2d` (as `.norm`) into the
    conv's weight and bias, in place; the conv's `.norm` becomes None. GroupNorm and train-mode BatchNorm stay.

    Returns `model`. The result computes the same function (to float rounding) for inference.
    """
    folded = 0
    for m in model.modules():
        if isinstance(m, Conv2d) and m.norm is not None and _fold_norm(m, m.norm):
            m.norm = None
            folded += 1
    logger.debug("fuse_conv_frozen_bn: folded %d norms", folded)
    return model


# ------------------------------------------------------------------------------------------ channels_last
def to_channels_last(model: nn.Module) -> nn.Module:
    """Put the model's 4-D weights in channels_last (NHWC) memory order, in place. Convolutions then produce
    channels_last outputs; inputs may stay NCHW (the first conv converts). Returns `model`."""
    return model.to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------ autocast
def autocast_dtype(dtype) -> torch.dtype:
    """torch dtype from a name ("bfloat16"/"bf16", "float16"/"fp16", "float32"/"fp32") or a torch.dtype."""
    from ..utils.precision import dtype_from_name

    return dtype_from_name(dtype)


def inference_autocast(device="cpu", dtype="auto", *, force: bool = False):
    """Mixed-precision context for inference, chosen with this machine's native support (utils/precision.py).

    - dtype "auto" (default): bf16 on a CPU with AMX / AVX512-BF16, float32 (a no-op context) on a CPU without
      native bf16 (where bf16 runs 15-25x slower); on CUDA bf16 where the GPU has it, else fp16.
    - dtype "bfloat16" / "float16": that dtype; a device without it natively raises `PrecisionError` (a
      ValueError) saying what it supports, unless `force=True` (CPU: run it emulated, with a warning).
    - dtype "float32" / None: a no-op context.
    """
    from ..utils.machine import machine
    from ..utils.precision import resolve_amp

    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"inference_autocast: unsupported device {device!r} (cpu or cuda)")
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dev = machine().cuda_device(torch.device(device).index) if device_type == "cuda" else None
        request, dt = "auto", ("float16" if dev is not None and not dev.bf16 else "bfloat16")
    else:
        dt = autocast_dtype(dtype)
        if dt == torch.float32:
            return contextlib.nullcontext()
        request = "force" if force else True
    decision = resolve_amp(request, dt, device, key=None)
    if decision.emulated or not decision.enabled:
        _log_once(logging.WARNING if decision.emulated else logging.INFO, decision.reason)
    return decision.autocast()


_logged: set[str] = set()


def _log_once(level: int, msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.log(level, msg)


# ------------------------------------------------------------------------------------------ oneDNN prepack
def mkldnn_available() -> bool:
    """True when this torch build has the oneDNN fused-convolution ops that `prepack_mkldnn` uses."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))


def _cpu_autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _bf16_kernels() -> bool:
    """oneDNN has bf16 conv kernels here (without them its bf16 weight reorder raises: AVX2-only CPUs)."""
    from ..utils.machine import machine

    return machine().cpu_bf16_kernels


class MkldnnConv2d(nn.Module):
    """A 2-D convolution with its weight prepacked for oneDNN, plus fused post-ops (CPU inference).

    forward(x) = act(conv(x)); forward(x, other) = act(conv(x) + other) with act in {None, "relu"}.
    The dense weight and bias stay as buffers (so `state_dict()` still holds them); the packed copies are
    built once per (dtype, input shape) and reused, at most `max_packed` of them (least recently used dropped;
    6 covers an RPN head shared by five FPN levels). When autograd is recording, or for non-CPU tensors, it
    computes the same thing with `F.conv2d`.
    """

    max_packed = 6
    fuses_add = True  # forward(x, other) adds `other` inside the conv (FPN's top-down merge uses it)

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

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None, *, accumulate: bool = False) -> torch.Tensor:
        """act(conv(x) [+ other]). accumulate=True allows writing the result into `other` (oneDNN's sum post-op:
        no new output buffer, `other` read once); it is done only when `other` already has the output's dtype
        and layout, and the caller promises nothing else reads `other` afterwards."""
        fast = x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or (
            other is not None and other.requires_grad)))
        if _cpu_autocast_bf16() and x.dtype == torch.float32:
            x = x.to(torch.bfloat16)
        if not fast or x.dtype not in (torch.float32, torch.bfloat16) or (
                x.dtype == torch.bfloat16 and not _bf16_kernels()):
            return self._reference(x, other)
        packed, bias = self._pack(x.dtype, tuple(x.shape))
        args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, *args, self.activation or "none", [], "")
        fmt = _memory_format(x)
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
    if type(conv) not in (nn.Conv2d, Conv2d):
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.weight.dtype != torch.float32:
        return False
    return getattr(conv, "norm", None) is None


class _FusedStem(nn.Module):
    """BasicStem with conv + relu fused."""

    def __init__(self, stem: nn.Module):
        super().__init__()
        self.conv1 = MkldnnConv2d(stem.conv1, "relu")
        self.in_channels, self.out_channels, self.stride = stem.in_channels, stem.out_channels, stem.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class _FusedResidualBlock(nn.Module):
    """BasicBlock / BottleneckBlock with conv+relu fused and the residual add + relu fused into the last conv."""

    def __init__(self, block: nn.Module):
        super().__init__()
        convs = ["conv1", "conv2", "conv3"] if hasattr(block, "conv3") else ["conv1", "conv2"]
        for name in convs[:-1]:
            setattr(self, name, MkldnnConv2d(getattr(block, name), "relu"))
        self.last = convs[-1]
        setattr(self, self.last, MkldnnConv2d(getattr(block, self.last), "relu"))
        self.shortcut = None if block.shortcut is None else MkldnnConv2d(block.shortcut, None)
        self.in_channels, self.out_channels, self.stride = block.in_channels, block.out_channels, block.stride
        # True when this block's input is read by nothing but this block (set by prepack_mkldnn for the 2nd and
        # later blocks of a stage): then the residual sum may be written into it
        self.input_private = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(x)
        if self.last == "conv3":
            out = self.conv2(out)
        # a projection shortcut's output is ours alone: accumulate into it, as into a private input
        return getattr(self, self.last)(out, identity, accumulate=self.shortcut is not None or self.input_private)


def _fusable_block(module: nn.Module) -> str | None:
    from .backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

    def clean(*convs):
        return all(c is not None and _packable(c) and c.activation is None for c in convs)

    t = type(module)
    if t is BasicStem and clean(module.conv1):
        return "stem"
    if t is BottleneckBlock and clean(module.conv1, module.conv2, module.conv3) and (
            module.shortcut is None or clean(module.shortcut)):
        return "block"
    if t is BasicBlock and clean(module.conv1, module.conv2) and (module.shortcut is None or clean(module.shortcut)):
        return "block"
    return None


def prepack_mkldnn(model: nn.Module) -> nn.Module:
    """Replace convolutions by prepacked oneDNN convolutions (`MkldnnConv2d`), in place; returns `model`.

    Our ResNet's stem and blocks (exact types BasicStem / BasicBlock / BottleneckBlock whose convs carry no
    norm any more, i.e. after `fuse_conv_frozen_bn`) become fused versions: conv+ReLU and conv+add+ReLU in one
    oneDNN call each. The residual sum is written in place into the projection shortcut's output, or, from the
    second block of a stage on, into the block's input (the previous block's output, which only this block
    reads): no new buffer per block. So do not keep references to (or hook) the outputs of blocks other than
    the last of a stage; the stage outputs (res2..res5) are never overwritten. Every other conv without a norm
    (`layers.Conv2d` or `nn.Conv2d`, fp32, zero padding) is swapped one for one, keeping a ReLU activation
    fused. Convs that still carry a norm, deformable convs and transposed convs are left alone. No-op (with a
    warning) when this torch has no oneDNN.
    """
    if not mkldnn_available():
        logger.warning("prepack_mkldnn: this torch build has no oneDNN fused conv ops; model left unchanged")
        return model
    if model.training:
        logger.warning("prepack_mkldnn: model is in training mode; prepacked convs only speed up no-grad inference")

    def visit(parent: nn.Module) -> None:
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            kind = _fusable_block(child)
            if kind == "stem":
                setattr(parent, name, _FusedStem(child))
            elif kind == "block":
                setattr(parent, name, _FusedResidualBlock(child))
            elif _packable(child):
                act = getattr(child, "activation", None)
                if act is None:
                    # inside a Sequential, conv followed by ReLU (e.g. torchvision's Conv2dNormActivation in
                    # the RPN head) feeds nothing else: fuse the ReLU and leave an Identity in its place
                    nxt = children[i + 1] if i + 1 < len(children) else None
                    if isinstance(parent, nn.Sequential) and nxt is not None and isinstance(nxt[1], nn.ReLU):
                        setattr(parent, name, MkldnnConv2d(child, "relu"))
                        setattr(parent, nxt[0], nn.Identity())
                    else:
                        setattr(parent, name, MkldnnConv2d(child, None))
                elif _relu_activation(act):
                    setattr(parent, name, MkldnnConv2d(child, "relu"))
            else:
                visit(child)
        if isinstance(parent, nn.Sequential):
            blocks = list(parent.children())
            if len(blocks) > 1 and all(isinstance(b, _FusedResidualBlock) for b in blocks):
                # inside a stage, block i's input is block i-1's output and nothing else reads it
                for b in blocks[1:]:
                    b.input_private = True

    visit(model)
    return model


# ------------------------------------------------------------------------------------------ compile
def compile_model(model: nn.Module, **kwargs) -> nn.Module:
    """`torch.compile(model, **kwargs)` (dynamic shapes allowed); the first calls are slow (compilation)."""
    kwargs.setdefault("dynamic", None)
    return torch.compile(model, **kwargs)


# ------------------------------------------------------------------------------------------ all together
def optimize_for_inference(model: nn.Module, cfg=None, *, fuse_bn: bool | None = None,
                           channels_last: bool | None = None, mkldnn: bool | None = None,
                           compile: bool | None = None) -> nn.Module:
    """Apply the inference fast paths chosen by the config (or by the keyword overrides) to `model`, in place.

    - MODEL.FUSE_FROZEN_BN -> `fuse_conv_frozen_bn`; on a CPU model it also runs `prepack_mkldnn`
      (override with `mkldnn=`).
    - MODEL.CHANNELS_LAST -> `to_channels_last`.
    - MODEL.COMPILE -> `torch.compile` (returns the compiled wrapper; its `_orig_mod` is `model`).

    The model is put in eval mode. Run it under `torch.inference_mode()` (and `inference_autocast` for
    mixed precision). Returns the model (or its compiled wrapper).
    """
    m = cfg.MODEL if cfg is not None else None
    fuse_bn = bool(m.FUSE_FROZEN_BN) if fuse_bn is None and m is not None else bool(fuse_bn)
    channels_last = bool(m.CHANNELS_LAST) if channels_last is None and m is not None else bool(channels_last)
    do_compile = bool(m.get("COMPILE", False)) if compile is None and m is not None else bool(compile)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if mkldnn is None:
        mkldnn = fuse_bn and on_cpu
    model.eval()
    if fuse_bn:
        fuse_conv_frozen_bn(model)
    if channels_last:
        to_channels_last(model)
    if mkldnn:
        prepack_mkldnn(model)
    if do_compile:
        return compile_model(model)
    return model
