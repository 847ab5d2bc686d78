"""Inference fast paths, as one layer on top of the models: each pass changes a module in place and keeps its outputs
(tests/modeling/test_fast_paths.py checks every one for parity). One config key per effect:

- MODEL.FUSE_FROZEN_BN -> `fuse_conv_frozen_bn(model)` (fold.py): every `layers.Conv2d` that carries a
  FrozenBatchNorm2d (or an eval-mode BatchNorm2d) gets the norm folded into its weight and bias, and its `.norm`
  becomes None. The convs stay `layers.Conv2d` (nn.Conv2d): one conv instead of conv + norm.
- MODEL.MKLDNN_PREPACK -> `prepack_mkldnn(model)` (mkldnn.py, CPU only): every conv without a norm becomes an
  `MkldnnConv2d` holding its weight pre-reordered in oneDNN's blocked layout, with ReLU fused; modules that offer a
  fused inference form (`fuse_for_inference`, fusion.py: our ResNet stem and blocks, the ResNet, the FPN) install it,
  so a block's residual add + ReLU and the FPN's top-down add run inside the last conv as oneDNN post-ops. Under CPU
  bf16 autocast it runs bf16 kernels where the CPU has them and `F.conv2d` where oneDNN has none (AVX2-only CPUs).
  A torch build without oneDNN: a warning, the model unchanged.
- MODEL.CHANNELS_LAST -> `to_channels_last(model)` (layout.py): 4-D parameters and buffers in NHWC order, the layout
  oneDNN's fast CPU kernels and cuDNN's tensor-core kernels want (Faster R-CNN also takes it at build time, and
  trains in it).
- MODEL.COMPILE -> `compile_model(model)` (torch_compile.py): torch.compile.
- `inference_autocast(device, dtype="auto")` (autocast.py): mixed precision where this machine runs it natively
  (bf16 on AMX / AVX512-BF16 CPUs, fp16 / bf16 on CUDA), float32 elsewhere; see utils/precision.py.

`optimize_for_inference(model, cfg)` (optimize.py) applies the four keys in that order and puts the model in eval
mode; `fast_path_problems(cfg)` is the one check of their combinations (validate_cfg runs it too).

All of these are meant for an inference copy of the model: folded norms cannot be trained any more, and a prepacked
conv falls back to plain `F.conv2d` whenever autograd is recording, so the outputs stay right but the speed-up is
only there under `torch.no_grad()` / `torch.inference_mode()`. Keep the original (or its state_dict) for training
and checkpoints.
"""
from .autocast import autocast_dtype, inference_autocast
from .fold import fuse_conv_frozen_bn, norm_scale_shift
from .fusion import Fusable, computes_as
from .layout import to_channels_last
from .mkldnn import MkldnnConv2d, mkldnn_available, pack_conv, prepack_mkldnn
from .optimize import fast_path_problems, optimize_for_inference
from .torch_compile import compile_model

__all__ = [
    "fuse_conv_frozen_bn",
    "norm_scale_shift",
    "to_channels_last",
    "prepack_mkldnn",
    "pack_conv",
    "MkldnnConv2d",
    "Fusable",
    "computes_as",
    "inference_autocast",
    "autocast_dtype",
    "compile_model",
    "optimize_for_inference",
    "fast_path_problems",
    "mkldnn_available",
]
