"""Feature Pyramid Network (Lin et al. 2017) on top of a bottom-up backbone, plus its extra top levels.

The FPN takes the bottom-up features named by `in_features` (e.g. res2..res5, strides 4..32) and returns
"p2".."p5" (the number is log2 of the stride), each with `out_channels` channels:

    lateral_k = fpn_lateral{k}(C_k)                     1x1 conv (+ norm)
    top-down:  T_5 = lateral_5,  T_k = lateral_k + up(T_{k+1})     ("avg" fuse: divided by 2)
    P_k = fpn_output{k}(T_k)                            3x3 conv (+ norm)    output_convs=True (detectron2)
    P_k = T_k                                           no fpn_output{k}     output_convs=False

`output_convs=False` (MODEL.FPN.OUTPUT_CONVS) is the FPN of DBNet's own code (MhLiao/DB's SegDetector), mmocr's
FPNC and docTR: the head's 3x3 reductions read the top-down sums directly.

`up` is nearest-neighbour upsampling to the lateral's exact spatial size. For inputs padded to
`size_divisibility` (what every detector does) that is exactly 2x, the same as detectron2's
`scale_factor=2`; for other sizes (odd feature maps) it still lines the maps up instead of failing, the
way torchvision's FeaturePyramidNetwork does. A top block adds coarser levels: `LastLevelMaxPool` (P6 for
Faster R-CNN) or `LastLevelP6P7` (RetinaNet's P6/P7).

Module names follow detectron2 (`bottom_up`, `fpn_lateral2`, `fpn_output2`, ..., `top_block`), so a
detectron2 checkpoint's FPN weights load by name.

Fused inference form (modeling/fast_paths/fusion.py): `fuse_for_inference(fuse_conv)` makes every lateral conv but
the coarsest add the upsampled coarser level inside the conv; forward() then calls them as `lateral(feat, top_down)`,
and only then.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ...layers import Conv2d, ShapeSpec, get_norm
from .backbone import Backbone
from .build import BACKBONE_REGISTRY

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "xavier_fill_like_c2",
]


def xavier_fill_like_c2(module: nn.Module) -> None:
    """Caffe2's "XavierFill" as detectron2 uses it for FPN convs: kaiming-uniform with a=1, bias 0.

    kaiming_uniform(a=1) draws from U(-b, b) with b = sqrt(3 / fan_in), Caffe2's XavierFill range.
    """
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class LastLevelMaxPool(nn.Module):
    """P6 = max_pool(P5, kernel 1, stride 2): subsampled P5, the extra level Faster R-CNN's RPN uses."""

    num_levels = 1

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels: P6 = conv3x3/2(x), P7 = conv3x3/2(relu(P6)), x = C5 ("res5") or P5 ("p5")."""

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            xavier_fill_like_c2(m)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(Backbone):
    """Feature pyramid over `bottom_up`'s features `in_features` (finest first, strides doubling).

    Args:
        bottom_up: a Backbone producing at least `in_features`.
        in_features: names of the bottom-up features to use, finest first, e.g. ["res2", ..., "res5"].
        out_channels: channels of every output level.
        norm: norm of the lateral and output convs ("", "BN", "GN", ...); convs carry a bias only without norm.
        top_block: None, LastLevelMaxPool or LastLevelP6P7 (anything with `num_levels`, `in_feature` and
            forward(x) -> list of maps). Its input is a bottom-up feature if `in_feature` names one,
            else an FPN output ("p5").
        fuse_type: "sum" or "avg" (sum divided by 2) for the top-down merge.
        square_pad: if > 0, detectors pad inputs to this square size (kept in `padding_constraints`).
        output_convs: True: a 3x3 conv `fpn_output{k}` on every level (detectron2); False: none, P_k is the
            top-down sum T_k (MODEL.FPN.OUTPUT_CONVS).
    """

    # True once fuse_for_inference installed laterals that take the top-down add (class default: older pickles)
    _lateral_add_fused = False

    def __init__(self, bottom_up: Backbone, in_features: list[str], out_channels: int, norm: str = "",
                 top_block: nn.Module | None = None, fuse_type: str = "sum", square_pad: int = 0,
                 output_convs: bool = True):
        super().__init__()
        if not isinstance(output_convs, bool):
            raise ConfigError(f"MODEL.FPN.OUTPUT_CONVS: must be True (a 3x3 output conv per level, detectron2) or "
                              f"False (P_k is the top-down sum), got {output_convs!r}")
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN bottom_up must be a Backbone, got {type(bottom_up).__name__}")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"MODEL.FPN.FUSE_TYPE: expected 'sum' or 'avg', got '{fuse_type}'")
        in_features = list(in_features)
        if not in_features:
            raise ValueError("MODEL.FPN.IN_FEATURES is empty; expected e.g. ['res2', 'res3', 'res4', 'res5']")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"MODEL.FPN.IN_FEATURES: {missing} not produced by the bottom-up backbone, which "
                             f"outputs {list(input_shapes)} (check MODEL.RESNETS.OUT_FEATURES)")
        strides = [input_shapes[f].stride for f in in_features]
        channels = [input_shapes[f].channels for f in in_features]
        for f, s in zip(in_features, strides):
            if s is None or s < 1 or 2 ** int(round(math.log2(s))) != s:
                raise ValueError(f"MODEL.FPN.IN_FEATURES: feature '{f}' has stride {s}; FPN needs powers of 2")
        for i in range(1, len(strides)):
            if strides[i] != 2 * strides[i - 1]:
                raise ValueError(f"MODEL.FPN.IN_FEATURES: strides must double from level to level, got "
                                 f"{dict(zip(in_features, strides))} (a dilated res5 cannot feed an FPN)")

        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.top_block = top_block
        self._fuse_type = fuse_type
        self._square_pad = square_pad
        self._output_convs = output_convs
        use_bias = norm in ("", "none", None)

        stages = []
        for in_ch, stride in zip(channels, strides):
            stage = int(math.log2(stride))
            lateral = Conv2d(in_ch, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels))
            # built before the lateral's init, as always: the default layout draws the same random numbers
            output = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=use_bias,
                            norm=get_norm(norm, out_channels)) if output_convs else None
            xavier_fill_like_c2(lateral)
            self.add_module(f"fpn_lateral{stage}", lateral)
            if output is not None:
                xavier_fill_like_c2(output)
                self.add_module(f"fpn_output{stage}", output)
            stages.append(stage)
        # Stages coarsest first, the order the top-down pass visits them. forward() looks the convs up by name
        # every time, so a conv swapped for another module (e.g. by fast_paths.prepack_mkldnn) is the one that runs.
        self._stages = tuple(stages[::-1])

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last_stage = int(math.log2(strides[-1]))
            for s in range(last_stage, last_stage + top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        # Padding to the coarsest bottom-up stride makes every top-down upsampling exactly 2x (detectron2's
        # choice; the extra top-block levels then have ceil(size / stride) pixels).
        self._size_divisibility = strides[-1]
        if top_block is not None:
            in_feature = top_block.in_feature
            if in_feature not in input_shapes and in_feature not in self._out_features:
                raise ValueError(f"top block input '{in_feature}' is neither a bottom-up feature "
                                 f"({list(input_shapes)}) nor an FPN output ({self._out_features})")

    @property
    def output_convs(self) -> bool:
        """Whether every level has its 3x3 output conv `fpn_output{k}` (False: P_k is the top-down sum)."""
        return self.__dict__.get("_output_convs", True)  # older pickles: built with them

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict:
        return {"square_size": self._square_pad}

    def fuse_for_inference(self, fuse_conv) -> FPN | None:
        """Install laterals that compute conv(feat) + top_down in one call (`fuse_conv(lateral, None)`) for every
        level but the coarsest, in place, and return self; None (nothing changed) when a lateral cannot be fused,
        e.g. it still carries a norm. The other convs are left to the pass."""
        names = [f"fpn_lateral{s}" for s in self._stages[1:]]
        fused = [fuse_conv(getattr(self, n), None) for n in names]
        if any(f is None for f in fused):
            return None
        for n, f in zip(names, fused):
            setattr(self, n, f)
        self._lateral_add_fused = True
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, C, H, W) image batch -> {"p2": ..., "p5": ... (+ top block levels)}, finest first."""
        bottom_up_features = self.bottom_up(x)
        feats = [bottom_up_features[f] for f in self.in_features[::-1]]  # coarsest first
        lateral_convs = [getattr(self, f"fpn_lateral{s}") for s in self._stages]
        identity = nn.Identity()  # P_k = T_k without output convs
        output_convs = [getattr(self, f"fpn_output{s}") if self.output_convs else identity for s in self._stages]
        prev = lateral_convs[0](feats[0])
        results = [output_convs[0](prev)]
        for feat, lateral_conv, output_conv in zip(feats[1:], lateral_convs[1:], output_convs[1:]):
            # the lateral conv is 1x1 / stride 1: its output has the bottom-up feature's size
            top_down = F.interpolate(prev, size=feat.shape[-2:], mode="nearest")
            if self._lateral_add_fused:
                prev = lateral_conv(feat, top_down)  # conv + add in one call, installed by fuse_for_inference
            else:
                prev = lateral_conv(feat) + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, output_conv(prev))
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                top_in = bottom_up_features[name]
            else:
                top_in = results[self._out_features.index(name)]
            results.extend(self.top_block(top_in))
        if len(results) != len(self._out_features):
            raise RuntimeError(f"FPN produced {len(results)} maps for outputs {self._out_features}")
        return dict(zip(self._out_features, results))


def _resnet_bottom_up(cfg, input_shape: ShapeSpec, resnet_class: type | None) -> Backbone:
    from .resnet import build_resnet_backbone  # imported here: resnet.py registers itself on import

    return build_resnet_backbone(cfg, input_shape, resnet_class=resnet_class)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec, *, fpn_class: type[FPN] | None = None,
                              resnet_class: type | None = None) -> FPN:
    """ResNet + FPN with P6 from max-pooling P5 (detectron2's builder of the same name; MODEL.FPN.* keys).

    `fpn_class` / `resnet_class` (default FPN / ResNet) are the classes built, subclasses taking the same
    arguments (e.g. the detectron2-facing classes of resnet_backbone.integrations.detectron2).
    """
    top_in = _top_block_in_feature(cfg, "p5")
    if top_in != "p5":
        raise ValueError(f"MODEL.FPN.TOP_BLOCK_IN_FEATURE = {top_in!r}: build_resnet_fpn_backbone's P6 max-pools P5; "
                         "set '' (or 'p5')")
    return (fpn_class or FPN)(
        bottom_up=_resnet_bottom_up(cfg, input_shape, resnet_class),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        output_convs=_output_convs(cfg),
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec, *, fpn_class: type[FPN] | None = None,
                                        resnet_class: type | None = None) -> FPN:
    """ResNet + FPN with RetinaNet's P6/P7 (detectron2's builder of the same name): computed from C5 (detectron2,
    MODEL.FPN.TOP_BLOCK_IN_FEATURE "" or "res5") or from P5 ("p5": torchvision's retinanet_resnet50_fpn, whose
    LastLevelP6P7(256, 256) takes P5).

    `fpn_class` / `resnet_class`: as for build_resnet_fpn_backbone.
    """
    bottom_up = _resnet_bottom_up(cfg, input_shape, resnet_class)
    top_in = _top_block_in_feature(cfg, "res5")
    if top_in not in ("res5", "p5"):
        raise ValueError(f"MODEL.FPN.TOP_BLOCK_IN_FEATURE = {top_in!r}: RetinaNet's P6/P7 come from 'res5' "
                         "(detectron2) or 'p5' (torchvision)")
    if top_in == "res5" and "res5" not in bottom_up.output_shape():
        raise ValueError("build_retinanet_resnet_fpn_backbone computes P6/P7 from res5; add 'res5' to "
                         "MODEL.RESNETS.OUT_FEATURES")
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels if top_in == "res5" else out_channels
    return (fpn_class or FPN)(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6p7, out_channels, in_feature=top_in),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        output_convs=_output_convs(cfg),
    )


def _top_block_in_feature(cfg, default: str) -> str:
    """MODEL.FPN.TOP_BLOCK_IN_FEATURE, "" meaning the builder's own `default` (a detectron2 config has no such key)."""
    return cfg.MODEL.FPN.get("TOP_BLOCK_IN_FEATURE", "") or default


def _output_convs(cfg) -> bool:
    """MODEL.FPN.OUTPUT_CONVS (True where the config has no such key: detectron2's FPN); the FPN refuses a non-bool."""
    return cfg.MODEL.FPN.get("OUTPUT_CONVS", True)
