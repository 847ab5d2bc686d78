"""ResNet (He et al. 2016) and ResNeXt as a detection backbone, plus an optional ImageNet classifier head.

Structure and module names follow detectron2 so its checkpoints (and converted torchvision / Caffe2 ones)
load by name:

    stem.conv1 (+ .norm)                     7x7/2 conv, norm, relu, 3x3/2 max pool       stride 4
    res2 .. res5                             stages of blocks "0", "1", ...               strides 4, 8, 16, 32
        block.conv1 / conv2 / conv3          (+ .norm each), block.shortcut (+ .norm) when shapes change
    linear                                   global average pool + fc (only with num_classes)

`BottleneckBlock` puts the stride on its 1x1 conv when `stride_in_1x1` is True (MSRA/Caffe2 weights) and on
the 3x3 conv otherwise (torchvision / "ResNet v1.5"). ResNeXt is `num_groups` > 1 with
`bottleneck_channels = num_groups * width_per_group`. `res5_dilation=2` keeps res5 at stride 16 ("DC5").

Freezing (`freeze_at`): 0 nothing, 1 the stem, 2 the stem and res2, ... 5 everything. A frozen part has
`requires_grad=False` and its BatchNorms are replaced by FrozenBatchNorm2d, so its running statistics never
change, even in train mode.

`build_resnet_backbone(cfg, input_shape)` maps MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT to these
arguments the same way detectron2's builder of that name does.

Fused inference forms (modeling/fast_paths/fusion.py): `fuse_for_inference(fuse_conv)` on the stem, the blocks and
the ResNet returns / installs `FusedStem` and `FusedResidualBlock` (conv + ReLU, and the residual add + ReLU inside
the last conv). A subclass inherits them as long as it computes what its base computes.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import DeformConv2d

from ...layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from ..fast_paths.fusion import computes_as
from .backbone import Backbone
from .build import BACKBONE_REGISTRY

__all__ = [
    "CNNBlockBase",
    "BasicStem",
    "BasicBlock",
    "FusedStem",
    "FusedResidualBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
    "RESNET_DEPTHS",
    "default_feature_strides",
]

# depth -> (blocks per stage res2..res5, uses bottleneck blocks)
RESNET_DEPTHS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _first_stride(stage_idx: int, dilation: int) -> int:
    """The stride of a default stage's first block: res2 follows the stem's pool, a dilated stage keeps its input's."""
    return 1 if stage_idx == 2 or dilation == 2 else 2


def default_feature_strides(res5_dilation: int = 1) -> dict[str, int]:
    """The output strides of the default stages ("stem", "res2".."res5"), the rule `make_default_stages` builds
    them by; validate_cfg checks feature names and FPN levels against these without building a model."""
    strides, s = {"stem": 4}, 4
    for idx in range(2, 6):
        s *= _first_stride(idx, res5_dilation if idx == 5 else 1)
        strides[f"res{idx}"] = s
    return strides


def msra_fill(module: nn.Module) -> None:
    """He/MSRA init for a conv feeding a ReLU: normal with std sqrt(2 / fan_out), bias 0."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


def _zero_norm_weight(norm: nn.Module | None) -> None:
    """Make a norm layer output zeros (its weight/gamma = 0), so the residual branch starts as identity."""
    if norm is None:
        return
    weight = getattr(norm, "weight", None)
    if weight is not None:
        with torch.no_grad():
            weight.zero_()


class CNNBlockBase(nn.Module):
    """A block with known `in_channels`, `out_channels` and `stride`, that can be frozen in place."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> CNNBlockBase:
        """No gradients for this block's parameters, and its BatchNorms become FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self

    def fuse_for_inference(self, fuse_conv) -> nn.Module | None:
        """This block's fused inference form built with `fuse_conv` (modeling/fast_paths/fusion.py), or None:
        a block of unknown computation has none."""
        return None


class BasicStem(CNNBlockBase):
    """conv1 (7x7, stride 2, pad 3) + norm + relu, then a 3x3 stride-2 max pool: stride 4 in all."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=get_norm(norm, out_channels))
        msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu_(self.conv1(x)))

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)

    def fuse_for_inference(self, fuse_conv) -> FusedStem | None:
        """`FusedStem`: conv1 with its ReLU fused (None when conv1 cannot be fused, e.g. it still carries a norm,
        or when a subclass computes something else)."""
        conv1 = fuse_conv(self.conv1, "relu") if computes_as(self, BasicStem, ("forward", "pool")) else None
        return None if conv1 is None else FusedStem(self, conv1)


class FusedStem(nn.Module):
    """BasicStem's inference form: `conv1` computes relu(conv(x)) in one call, then the same max pool."""

    def __init__(self, stem: BasicStem, conv1: nn.Module):
        super().__init__()
        self.conv1 = conv1
        self.in_channels, self.out_channels, self.stride = stem.in_channels, stem.out_channels, stem.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BasicStem.pool(self.conv1(x))


def _make_shortcut(in_channels: int, out_channels: int, stride: int, norm) -> Conv2d | None:
    if in_channels == out_channels and stride == 1:
        return None
    conv = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                  norm=get_norm(norm, out_channels))
    msra_fill(conv)
    return conv


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs (the first carries the stride) and a residual connection: ResNet-18/34's block."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN",
                 zero_init_residual: bool = False):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for conv in (self.conv1, self.conv2):
            msra_fill(conv)
        if zero_init_residual:
            _zero_norm_weight(self.conv2.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += x if self.shortcut is None else self.shortcut(x)  # in place: the branch output is not saved
        return F.relu_(out)

    def fuse_for_inference(self, fuse_conv) -> FusedResidualBlock | None:
        """`FusedResidualBlock` of conv1 (+ReLU) and conv2 (+residual add + ReLU), or None."""
        if not computes_as(self, BasicBlock):
            return None
        return FusedResidualBlock.build(self, fuse_conv, ("conv1", "conv2"))


class BottleneckBlock(CNNBlockBase):
    """1x1 (reduce) - 3x3 (grouped, dilated, strided unless `stride_in_1x1`) - 1x1 (expand) + residual."""

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 num_groups: int = 1, norm="BN", stride_in_1x1: bool = False, dilation: int = 1,
                 zero_init_residual: bool = False):
        super().__init__(in_channels, out_channels, stride)
        if bottleneck_channels % num_groups != 0:
            raise ValueError(f"bottleneck_channels ({bottleneck_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv2 = self._make_conv2(bottleneck_channels, stride_3x3, num_groups, dilation, norm)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for conv in (self.conv1, self.conv2, self.conv3):
            msra_fill(conv)
        if zero_init_residual:
            _zero_norm_weight(self.conv3.norm)

    def _make_conv2(self, channels: int, stride: int, num_groups: int, dilation: int, norm) -> nn.Module:
        return Conv2d(channels, channels, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                      groups=num_groups, bias=False, norm=get_norm(norm, channels))

    def _conv2_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self._conv2_forward(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)  # in place: the branch output is not saved
        return F.relu_(out)

    def fuse_for_inference(self, fuse_conv) -> FusedResidualBlock | None:
        """`FusedResidualBlock` of conv1, conv2 (+ReLU each) and conv3 (+residual add + ReLU), or None (e.g.
        DeformBottleneckBlock, whose conv2 is computed differently)."""
        if not computes_as(self, BottleneckBlock, ("forward", "_conv2_forward")):
            return None
        return FusedResidualBlock.build(self, fuse_conv, ("conv1", "conv2", "conv3"))


class FusedResidualBlock(nn.Module):
    """The inference form of a BasicBlock / BottleneckBlock: every conv but the last computes relu(conv(x)) in one
    call, the last relu(conv(x) + identity) (modeling/fast_paths/fusion.py's fused-conv contract).

    The residual sum is written into the projection shortcut's output (ours alone), or into the block's input when
    `input_private` is True: the ResNet sets it for the second and later blocks of a stage, whose input (the
    previous block's output) nothing else reads.
    """

    def __init__(self, block: CNNBlockBase, convs: dict[str, nn.Module], shortcut: nn.Module | None):
        super().__init__()
        for name, conv in convs.items():
            self.add_module(name, conv)
        self.conv_names = tuple(convs)
        self.shortcut = shortcut
        self.in_channels, self.out_channels, self.stride = block.in_channels, block.out_channels, block.stride
        self.input_private = False

    @classmethod
    def build(cls, block: CNNBlockBase, fuse_conv, names: tuple[str, ...]) -> FusedResidualBlock | None:
        """`block`'s convs `names` (in order) fused with `fuse_conv`, its shortcut too; None if any cannot be."""
        convs = {name: fuse_conv(getattr(block, name), "relu") for name in names}
        shortcut = None if block.shortcut is None else fuse_conv(block.shortcut, None)
        if any(c is None for c in convs.values()) or (block.shortcut is not None and shortcut is None):
            return None
        return cls(block, convs, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = x
        for name in self.conv_names[:-1]:
            out = getattr(self, name)(out)
        # a projection shortcut's output is ours alone: accumulate into it, as into a private input
        return getattr(self, self.conv_names[-1])(out, identity,
                                                  accumulate=self.shortcut is not None or self.input_private)


class _DeformConv(DeformConv2d):
    """torchvision's DeformConv2d carrying its norm as `.norm` (detectron2's naming)."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = super().forward(x, offset, mask)
        return x if self.norm is None else self.norm(x)


class DeformBottleneckBlock(BottleneckBlock):
    """Bottleneck whose 3x3 conv is a deformable conv (Dai et al. 2017; modulated = DCNv2, Zhu et al. 2019).

    `conv2_offset` predicts 2*9 offsets per deformable group (plus 9 mask logits when modulated) and starts
    at zero, so a fresh block behaves like a plain bottleneck.
    """

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 num_groups: int = 1, norm="BN", stride_in_1x1: bool = False, dilation: int = 1,
                 deform_modulated: bool = False, deform_num_groups: int = 1, zero_init_residual: bool = False):
        self.deform_modulated = deform_modulated
        self.deform_num_groups = deform_num_groups
        super().__init__(in_channels, out_channels, bottleneck_channels=bottleneck_channels, stride=stride,
                         num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1, dilation=dilation,
                         zero_init_residual=zero_init_residual)

    def _make_conv2(self, channels: int, stride: int, num_groups: int, dilation: int, norm) -> nn.Module:
        per_group = 27 if self.deform_modulated else 18
        self.conv2_offset = nn.Conv2d(channels, per_group * self.deform_num_groups, kernel_size=3, stride=stride,
                                      padding=dilation, dilation=dilation)
        nn.init.constant_(self.conv2_offset.weight, 0)
        nn.init.constant_(self.conv2_offset.bias, 0)
        return _DeformConv(channels, channels, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                           groups=num_groups, bias=False, norm=get_norm(norm, channels))

    def _conv2_forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv2_offset(x)
        if self.deform_modulated:
            n = 18 * self.deform_num_groups
            return self.conv2(x, offset[:, :n], offset[:, n:].sigmoid())
        return self.conv2(x, offset)


def make_stage(block_class, num_blocks: int, *, in_channels: int, out_channels: int, first_stride: int = 1,
               **kwargs) -> list[CNNBlockBase]:
    """`num_blocks` blocks of `block_class`; the first takes `in_channels` and `first_stride`, the rest
    `out_channels` and stride 1. Extra keyword arguments go to every block."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(block_class(in_channels if i == 0 else out_channels, out_channels,
                                  stride=first_stride if i == 0 else 1, **kwargs))
    return blocks


class ResNet(Backbone):
    """Stem + stages res2..res5 (+ optional classifier `linear`), returning the features named in
    `out_features` (any of "stem", "res2".."res5", and "linear" when `num_classes` is set)."""

    STAGE_NAMES = ("res2", "res3", "res4", "res5")

    def __init__(self, stem: CNNBlockBase, stages: Sequence[Sequence[CNNBlockBase]], num_classes: int | None = None,
                 out_features: Sequence[str] | None = None, freeze_at: int = 0):
        super().__init__()
        if len(stages) == 0 or len(stages) > 4:
            raise ValueError(f"ResNet takes 1 to 4 stages (res2..res5), got {len(stages)}")
        self.num_classes = num_classes if num_classes else None
        self.stem = stem
        names = ["stem"] + list(self.STAGE_NAMES[: len(stages)])
        valid = names + (["linear"] if self.num_classes else [])
        if out_features is None:
            out_features = ["linear"] if self.num_classes else [names[-1]]
        out_features = list(out_features)
        if len(out_features) == 0:
            raise ValueError(f"ResNet out_features is empty; choose from {', '.join(valid)}")
        for name in out_features:
            if name not in valid:
                hint = " ('linear' needs num_classes > 0)" if name == "linear" else ""
                raise ValueError(f"ResNet out_features: unknown feature '{name}'{hint}; valid: {', '.join(valid)}")
        self._out_features = out_features

        # Without a classifier, stages after the last requested feature are never run: do not build them.
        if not self.num_classes:
            last = max(names.index(n) for n in out_features)
            stages = stages[:last]

        stride = stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        self.stage_names: list[str] = []
        self.stages: list[nn.Sequential] = []
        for name, blocks in zip(self.STAGE_NAMES, stages):
            blocks = list(blocks)
            if len(blocks) == 0:
                raise ValueError(f"ResNet stage {name} has no blocks")
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for b in blocks:
                stride *= b.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self._wanted = set(out_features)

        if self.num_classes:
            self.linear = nn.Linear(self._out_feature_channels[self.stage_names[-1]], self.num_classes)
            nn.init.normal_(self.linear.weight, std=0.01)
            nn.init.constant_(self.linear.bias, 0)
            self._out_feature_channels["linear"] = self.num_classes
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._wanted:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)  # by name: a stage swapped for another module is the one that runs
            if name in self._wanted:
                outputs[name] = x
        if self.num_classes:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            x = self.linear(x)
            if "linear" in self._wanted:
                outputs["linear"] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides.get(name))
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the stem (freeze_at >= 1) and stages res2..res{freeze_at} (freeze_at >= 2)."""
        if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be an int in 0..5 (0 = nothing, 1 = stem, 2 = stem+res2, ...), "
                             f"got {freeze_at!r}")
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage.children():
                    block.freeze()
        return self

    def fuse_for_inference(self, fuse_conv) -> ResNet:
        """Install the stem's and every block's fused inference form (their own `fuse_for_inference`), in place.
        Inside a stage of fused blocks, a block's input is the previous block's output, which nothing else reads
        (only stage outputs are returned): from the second block on, the residual sum may be written into it."""
        stem = self.stem.fuse_for_inference(fuse_conv) if isinstance(self.stem, CNNBlockBase) else None
        if stem is not None:
            self.stem = stem
        for stage in (getattr(self, name) for name in self.stage_names):  # by name, as forward() runs them
            fused = {name: b.fuse_for_inference(fuse_conv) if isinstance(b, CNNBlockBase) else None
                     for name, b in stage.named_children()}
            for name, block in fused.items():
                if block is not None:
                    setattr(stage, name, block)
            blocks = list(stage.children())
            if len(blocks) > 1 and all(isinstance(b, FusedResidualBlock) for b in blocks):
                for b in blocks[1:]:
                    b.input_private = True
        return self

    @staticmethod
    def make_stage(block_class, num_blocks: int, **kwargs) -> list[CNNBlockBase]:
        """See `make_stage`."""
        return make_stage(block_class, num_blocks, **kwargs)

    @staticmethod
    def depth_to_spec(depth: int) -> tuple[tuple[int, int, int, int], bool]:
        """(blocks per stage res2..res5, bottleneck?) for a ResNet depth in 18/34/50/101/152."""
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth {depth!r} is not supported; valid depths: "
                             f"{', '.join(str(d) for d in RESNET_DEPTHS)}")
        return RESNET_DEPTHS[depth]

    @staticmethod
    def make_default_stages(depth: int, *, in_channels: int = 64, out_channels: int | None = None,
                            num_groups: int = 1, width_per_group: int = 64, norm="BN", stride_in_1x1: bool = False,
                            res5_dilation: int = 1, deform_on_per_stage: Sequence[bool] = (False,) * 4,
                            deform_modulated: bool = False, deform_num_groups: int = 1,
                            zero_init_residual: bool = False) -> list[list[CNNBlockBase]]:
        """The four stages res2..res5 of a standard ResNet/ResNeXt of `depth` (detectron2's channel plan).

        `out_channels` is res2's output (256 for bottleneck nets, 64 for 18/34; default by depth).
        """
        num_blocks, bottleneck = ResNet.depth_to_spec(depth)
        if res5_dilation not in (1, 2):
            raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation!r}")
        if out_channels is None:
            out_channels = 256 if bottleneck else 64
        if not bottleneck:
            if out_channels != 64:
                raise ValueError(f"ResNet-{depth}: res2 out_channels must be 64 (RES2_OUT_CHANNELS), "
                                 f"got {out_channels}")
            if res5_dilation != 1:
                raise ValueError(f"ResNet-{depth}: res5_dilation must be 1 for basic blocks, got {res5_dilation}")
            if any(deform_on_per_stage):
                raise ValueError(f"ResNet-{depth}: deformable convs need bottleneck blocks (depth >= 50)")
            if num_groups != 1:
                raise ValueError(f"ResNet-{depth}: num_groups must be 1 for basic blocks, got {num_groups}")
        if len(deform_on_per_stage) != 4:
            raise ValueError(f"deform_on_per_stage needs 4 entries (res2..res5), got {len(deform_on_per_stage)}")
        bottleneck_channels = num_groups * width_per_group
        stages = []
        for i, n in enumerate(num_blocks):
            stage_idx = i + 2
            dilation = res5_dilation if stage_idx == 5 else 1
            first_stride = _first_stride(stage_idx, dilation)
            kwargs = dict(in_channels=in_channels, out_channels=out_channels, first_stride=first_stride, norm=norm,
                          zero_init_residual=zero_init_residual)
            if bottleneck:
                kwargs.update(bottleneck_channels=bottleneck_channels, stride_in_1x1=stride_in_1x1,
                              dilation=dilation, num_groups=num_groups)
                if deform_on_per_stage[i]:
                    block_class = DeformBottleneckBlock
                    kwargs.update(deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
                else:
                    block_class = BottleneckBlock
            else:
                block_class = BasicBlock
            stages.append(make_stage(block_class, n, **kwargs))
            in_channels = out_channels
            out_channels *= 2
            bottleneck_channels *= 2
        return stages


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec | None = None, *,
                          resnet_class: type[ResNet] | None = None) -> ResNet:
    """ResNet from MODEL.RESNETS.* and MODEL.BACKBONE.FREEZE_AT (detectron2's builder of the same name).

    MODEL.RESNETS.NUM_CLASSES > 0 (ours) adds the classifier; its logits are the "linear" output.
    `resnet_class` (default ResNet) is the class built: a subclass taking ResNet's arguments, e.g. the
    detectron2-facing class of resnet_backbone.integrations.detectron2.
    """
    r = cfg.MODEL.RESNETS
    in_channels = input_shape.channels if input_shape is not None and input_shape.channels else 3
    stem = BasicStem(in_channels=in_channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    num_classes = r.NUM_CLASSES if r.NUM_CLASSES and r.NUM_CLASSES > 0 else None
    out_features = list(r.OUT_FEATURES)
    if num_classes and "linear" not in out_features:
        out_features.append("linear")
    stages = ResNet.make_default_stages(
        r.DEPTH,
        in_channels=r.STEM_OUT_CHANNELS,
        out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        deform_on_per_stage=r.DEFORM_ON_PER_STAGE,
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
        zero_init_residual=r.ZERO_INIT_RESIDUAL,
    )
    return (resnet_class or ResNet)(stem, stages, num_classes=num_classes, out_features=out_features,
                                    freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
