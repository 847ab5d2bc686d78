"""`optimize_for_inference`: the fast paths a config asks for, one key per effect, and the check of their
combinations (`fast_path_problems`, run by validate_cfg too)."""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ...config import ConfigError
from .fold import fuse_conv_frozen_bn
from .layout import to_channels_last
from .mkldnn import prepack_mkldnn
from .torch_compile import compile_model

__all__ = ["optimize_for_inference", "fast_path_problems"]

# norms a conv can have folded into it (FUSE_FROZEN_BN); a conv still carrying one cannot be prepacked
_FOLDABLE_NORMS = ("FrozenBN", "BN", "SyncBN")


def fast_path_problems(cfg) -> list[str]:
    """Every fast-path key combination of `cfg` that cannot work, as "KEY: what is wrong" lines:

    - MODEL.MKLDNN_PREPACK on a MODEL.DEVICE other than the CPU (oneDNN's packed convs are CPU kernels);
    - MODEL.MKLDNN_PREPACK without MODEL.FUSE_FROZEN_BN while MODEL.RESNETS.NORM is a foldable norm: a conv that
      carries a norm cannot be prepacked, so the backbone would silently stay unpacked.
    """
    m = cfg.MODEL
    problems = []
    if not m.get("MKLDNN_PREPACK", False):
        return problems
    try:
        device = torch.device(str(m.DEVICE or "cpu")).type
    except RuntimeError:  # not a device: MODEL.DEVICE's own check says so
        device = "cpu"
    if device != "cpu":
        problems.append(f"MODEL.MKLDNN_PREPACK: prepacked oneDNN convolutions run on the CPU only, and MODEL.DEVICE "
                        f"is {m.DEVICE!r}; set MODEL.MKLDNN_PREPACK False (MODEL.FUSE_FROZEN_BN and "
                        "MODEL.CHANNELS_LAST work on every device)")
    norm = m.RESNETS.NORM
    if not m.FUSE_FROZEN_BN and norm in _FOLDABLE_NORMS:
        problems.append(f"MODEL.MKLDNN_PREPACK: a conv that carries a norm cannot be prepacked, and without "
                        f"MODEL.FUSE_FROZEN_BN the ResNet's convs keep their {norm!r} norms (MODEL.RESNETS.NORM), "
                        "so the backbone would stay unpacked; set MODEL.FUSE_FROZEN_BN True too (it folds them "
                        "first)")
    return problems


def optimize_for_inference(model: nn.Module, cfg=None, *, fuse_bn: bool | None = None,
                           channels_last: bool | None = None, mkldnn: bool | None = None,
                           compile: bool | None = None) -> nn.Module:
    """Apply the inference fast paths chosen by the config (or by the keyword overrides) to `model`, in place.

    - MODEL.FUSE_FROZEN_BN / `fuse_bn` -> `fuse_conv_frozen_bn`: norms folded into the convs (they stay convs);
    - MODEL.CHANNELS_LAST / `channels_last` -> `to_channels_last`;
    - MODEL.MKLDNN_PREPACK / `mkldnn` -> `prepack_mkldnn`: prepacked oneDNN convs with fused post-ops. CPU only: a
      model with tensors on another device is refused (ConfigError naming the key, or ValueError for `mkldnn=`);
      without oneDNN in this torch build a warning and the model unchanged;
    - MODEL.COMPILE / `compile` -> `torch.compile` (returns the compiled wrapper; its `_orig_mod` is `model`).

    A keyword that is not None overrides its key; without `cfg` a switch not given is off. A `cfg` whose keys do
    not go together (`fast_path_problems`) raises ConfigError. The model is put in eval mode. Run it under
    `torch.inference_mode()` (and `inference_autocast` for mixed precision). Returns the model (or its compiled
    wrapper).
    """
    m = cfg.MODEL if cfg is not None else None
    if cfg is not None:
        problems = fast_path_problems(cfg)
        if problems:
            raise ConfigError("optimize_for_inference: " + "; ".join(problems))

    def switch(value, key: str) -> bool:
        return bool(value) if value is not None else bool(m is not None and m.get(key, False))

    do_prepack = switch(mkldnn, "MKLDNN_PREPACK")
    if do_prepack:
        devices = sorted({t.device.type for t in itertools.chain(model.parameters(), model.buffers())} - {"cpu"})
        if devices:
            if mkldnn is None:
                raise ConfigError(f"MODEL.MKLDNN_PREPACK: prepacked oneDNN convolutions run on the CPU only, and "
                                  f"the model is on {', '.join(devices)}; set MODEL.MKLDNN_PREPACK False")
            raise ValueError(f"optimize_for_inference(mkldnn=True): prepacked oneDNN convolutions run on the CPU "
                             f"only, and the model is on {', '.join(devices)}")
    model.eval()
    if switch(fuse_bn, "FUSE_FROZEN_BN"):
        fuse_conv_frozen_bn(model)
    if switch(channels_last, "CHANNELS_LAST"):
        to_channels_last(model)
    if do_prepack:
        model = prepack_mkldnn(model)
    if switch(compile, "COMPILE"):
        return compile_model(model)
    return model
