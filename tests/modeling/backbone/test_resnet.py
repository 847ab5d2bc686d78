"""ResNet backbone: shapes for every depth, output_shape() contract, freezing, config errors."""
import math

import pytest
import torch
from torch import nn

from resnet_backbone.config import get_cfg
from resnet_backbone.layers import FrozenBatchNorm2d, ShapeSpec
from resnet_backbone.modeling.backbone import BACKBONE_REGISTRY, build_backbone
from resnet_backbone.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
    build_resnet_backbone,
)

ALL_FEATURES = ["stem", "res2", "res3", "res4", "res5"]


def _cfg(depth=50, **resnets):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_FEATURES)
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for k, v in resnets.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    return cfg


EXPECTED_CHANNELS = {
    18: {"stem": 64, "res2": 64, "res3": 128, "res4": 256, "res5": 512},
    34: {"stem": 64, "res2": 64, "res3": 128, "res4": 256, "res5": 512},
    50: {"stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
    101: {"stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
    152: {"stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
}
EXPECTED_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("depth", [18, 34, 50, pytest.param(101, marks=pytest.mark.slow),
                                   pytest.param(152, marks=pytest.mark.slow)])
def test_every_depth_outputs_match_output_shape(depth):
    model = build_backbone(_cfg(depth)).eval()
    shapes = model.output_shape()
    assert list(shapes) == ALL_FEATURES
    for name in ALL_FEATURES:
        assert shapes[name].channels == EXPECTED_CHANNELS[depth][name]
        assert shapes[name].stride == EXPECTED_STRIDES[name]
    for h, w in [(224, 224), (225, 301)]:
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert list(out) == ALL_FEATURES
        for name, t in out.items():
            s = shapes[name]
            assert t.shape == (1, s.channels, math.ceil(h / s.stride), math.ceil(w / s.stride)), (depth, name, h, w)


def test_res5_dilation_keeps_stride_16():
    model = build_backbone(_cfg(50, RES5_DILATION=2, OUT_FEATURES=["res4", "res5"])).eval()
    assert model.output_shape()["res5"].stride == 16
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out["res5"].shape == (1, 2048, 4, 6)
    assert model.res5[0].conv2.dilation == (2, 2)
    assert model.res5[0].conv2.stride == (1, 1)


def test_stride_in_1x1_puts_stride_on_the_right_conv():
    msra = build_backbone(_cfg(50, STRIDE_IN_1X1=True))
    tv = build_backbone(_cfg(50, STRIDE_IN_1X1=False))
    assert msra.res3[0].conv1.stride == (2, 2) and msra.res3[0].conv2.stride == (1, 1)
    assert tv.res3[0].conv1.stride == (1, 1) and tv.res3[0].conv2.stride == (2, 2)


def test_resnext_groups_and_width():
    model = build_backbone(_cfg(50, NUM_GROUPS=32, WIDTH_PER_GROUP=4, OUT_FEATURES=["res2"]))
    conv2 = model.res2[0].conv2
    assert conv2.groups == 32 and conv2.in_channels == 128
    assert model.res2[0].conv3.out_channels == 256


def test_detectron2_module_names():
    model = build_backbone(_cfg(50, OUT_FEATURES=["res5"], NUM_CLASSES=10, NORM="BN"))
    names = set(model.state_dict())
    for key in ["stem.conv1.weight", "stem.conv1.norm.running_mean", "res2.0.conv1.weight",
                "res2.0.conv3.norm.weight", "res2.0.shortcut.weight", "res2.0.shortcut.norm.bias",
                "res5.2.conv3.weight", "linear.weight", "linear.bias"]:
        assert key in names, key
    assert "res2.1.shortcut.weight" not in names


def test_unused_stages_are_not_built():
    model = build_backbone(_cfg(50, OUT_FEATURES=["res3"]))
    assert hasattr(model, "res3") and not hasattr(model, "res4") and not hasattr(model, "res5")


def test_classifier_head_outputs_linear():
    model = build_backbone(_cfg(18, NUM_CLASSES=7, OUT_FEATURES=["res5"])).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["linear"].shape == (2, 7)
    assert model.output_shape()["linear"].channels == 7


def test_param_count_r50_matches_torchvision():
    cfg = _cfg(50, NORM="BN", NUM_CLASSES=1000, OUT_FEATURES=["res5"])
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    with_head = sum(p.numel() for p in build_backbone(cfg).parameters())
    assert with_head == 25_557_032
    cfg.MODEL.RESNETS.NUM_CLASSES = 0
    without = sum(p.numel() for p in build_backbone(cfg).parameters())
    assert without == 25_557_032 - (2048 * 1000 + 1000)
    assert abs(without / 1e6 - 23.5) < 0.05


def test_bad_depth_lists_valid_depths():
    with pytest.raises(ValueError, match=r"depth 42.*18, 34, 50, 101, 152"):
        build_backbone(_cfg(42))


def test_bad_out_feature_names_it_and_lists_valid():
    with pytest.raises(ValueError, match=r"'res6'.*stem, res2, res3, res4, res5"):
        build_backbone(_cfg(50, OUT_FEATURES=["res4", "res6"]))
    with pytest.raises(ValueError, match="linear"):
        build_backbone(_cfg(50, OUT_FEATURES=["linear"]))


def test_basic_block_constraints():
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        build_backbone(_cfg(18, RES2_OUT_CHANNELS=256))
    with pytest.raises(ValueError, match="res5_dilation"):
        build_backbone(_cfg(34, RES5_DILATION=2))
    with pytest.raises(ValueError, match="res5_dilation must be 1 or 2"):
        build_backbone(_cfg(50, RES5_DILATION=3))


def test_bad_freeze_at():
    cfg = _cfg(18)
    cfg.MODEL.BACKBONE.FREEZE_AT = 6
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone(cfg)


def _bn_modules(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at):
    cfg = _cfg(18, NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = build_backbone(cfg)
    parts = [model.stem, model.res2, model.res3, model.res4, model.res5]
    frozen, trainable = parts[:freeze_at], parts[freeze_at:]
    for part in frozen:
        assert not _bn_modules(part), "frozen norms must be FrozenBatchNorm2d"
        assert any(isinstance(m, FrozenBatchNorm2d) for m in part.modules())
        assert all(not p.requires_grad for p in part.parameters())
    for part in trainable:
        assert _bn_modules(part)
        assert all(p.requires_grad for p in part.parameters())

    frozen_stats = {k: v.clone() for k, v in model.state_dict().items()
                    if "running" in k and any(k.startswith(n) for n in ALL_FEATURES[:freeze_at])}
    model.train()
    out = model(torch.randn(2, 3, 64, 64) * 3 + 1)
    if trainable:
        sum(v.sum() for v in out.values()).backward()
    for part in frozen:
        assert all(p.grad is None for p in part.parameters())
    for part in trainable:
        assert all(p.grad is not None for p in part.parameters())
    after = model.state_dict()
    for k, v in frozen_stats.items():
        assert torch.equal(after[k], v), k
    # trainable BNs did update their running stats in train mode
    for part in trainable:
        bn = _bn_modules(part)[0]
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_frozen_model_output_unchanged_by_train_mode():
    cfg = _cfg(18, NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    model = build_backbone(cfg)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a = model(x)["res5"]
    model.train()
    with torch.no_grad():
        b = model(x)["res5"]
    assert torch.equal(a, b)


def test_zero_init_residual_makes_blocks_identity_like():
    block = BottleneckBlock(256, 256, bottleneck_channels=64, norm="BN", zero_init_residual=True).eval()
    x = torch.rand(1, 256, 8, 8)
    assert torch.allclose(block(x), x)
    basic = BasicBlock(64, 64, norm="FrozenBN", zero_init_residual=True).eval()
    x = torch.rand(1, 64, 8, 8)
    assert torch.allclose(basic(x), x)


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_res5(modulated):
    cfg = _cfg(50, DEFORM_ON_PER_STAGE=[False, False, False, True], DEFORM_MODULATED=modulated,
               OUT_FEATURES=["res5"], RES5_DILATION=2)
    model = build_backbone(cfg).eval()
    assert isinstance(model.res5[0], DeformBottleneckBlock)
    assert model.res5[0].conv2_offset.out_channels == (27 if modulated else 18)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)["res5"]
    assert out.shape == (1, 2048, 4, 4)
    # zero offsets (and mask 0.5 when modulated): the deformable conv equals a plain conv scaled accordingly
    block = model.res5[1]
    inp = torch.randn(1, 2048, 4, 4)
    plain = BottleneckBlock(2048, 2048, bottleneck_channels=512, norm="FrozenBN", dilation=2).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if "offset" not in k})
    if modulated:
        with torch.no_grad():
            plain.conv2.weight.mul_(0.5)
    with torch.no_grad():
        assert torch.allclose(block(inp), plain(inp), atol=1e-4)


def test_resnet_from_plain_arguments():
    stem = BasicStem(3, 64, norm="FrozenBN")
    stages = ResNet.make_default_stages(50, norm="FrozenBN")
    model = ResNet(stem, stages, out_features=["res2", "res4"])
    out = model(torch.randn(1, 3, 64, 64))
    assert out["res2"].shape == (1, 256, 16, 16) and out["res4"].shape == (1, 1024, 4, 4)
    assert ResNet.depth_to_spec(101) == ((3, 4, 23, 3), True)


def test_registered_and_input_channels():
    assert BACKBONE_REGISTRY.get("build_resnet_backbone") is build_resnet_backbone
    model = build_resnet_backbone(_cfg(18), ShapeSpec(channels=1))
    assert model.stem.conv1.in_channels == 1


@pytest.mark.parametrize("norm,norm_type", [("GN", nn.GroupNorm), ("", type(None)), ("none", type(None)),
                                            ("FrozenBN", FrozenBatchNorm2d), ("BN", nn.BatchNorm2d)])
def test_norm_choices_train(norm, norm_type):
    cfg = _cfg(18, NORM=norm, OUT_FEATURES=["res2", "res5"])
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = build_backbone(cfg).train()
    assert isinstance(model.res3[0].conv1.norm, norm_type) and isinstance(model.stem.conv1.norm, norm_type)
    out = model(torch.randn(2, 3, 64, 64))
    (out["res5"].sum() + out["res2"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.isfinite(out["res5"]).all()


def test_bad_norm_name():
    with pytest.raises(ValueError, match="unknown norm 'LN'"):
        build_backbone(_cfg(18, NORM="LN"))
