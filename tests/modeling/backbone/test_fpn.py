"""FPN: parity with torchvision's FeaturePyramidNetwork, shapes vs output_shape(), top blocks, fuse types."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool

from resnet_backbone.layers import ShapeSpec
from resnet_backbone.modeling.backbone import BACKBONE_REGISTRY, Backbone
from resnet_backbone.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class PoolingBottomUp(Backbone):
    """A stand-in bottom-up network: strided 1x1 convs giving res2..res5 with the ResNet's strides (ceil sizes)."""

    def __init__(self, in_channels=3):
        super().__init__()
        self._out_features = list(CHANNELS)
        self._out_feature_channels = dict(CHANNELS)
        self._out_feature_strides = dict(STRIDES)
        self.proj = nn.ModuleDict({k: nn.Conv2d(in_channels, c, 1) for k, c in CHANNELS.items()})

    def forward(self, x):
        out = {}
        for k in self._out_features:
            s = STRIDES[k]
            # ceil_mode: a (possibly odd) input gives ceil(H / s) pixels, like a chain of stride-2 3x3 convs
            out[k] = self.proj[k](F.avg_pool2d(x, kernel_size=s, stride=s, ceil_mode=True))
        return out


class FixedBottomUp(Backbone):
    """Returns given feature maps whatever the input (to feed arbitrary, e.g. odd, sizes)."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats
        self._out_features = list(CHANNELS)
        self._out_feature_channels = dict(CHANNELS)
        self._out_feature_strides = dict(STRIDES)

    def forward(self, x):
        return dict(self.feats)


def _copy_to_torchvision(ours: FPN, tv: FeaturePyramidNetwork):
    """torchvision inner_blocks[i] <-> fpn_lateral{i+2}, layer_blocks[i] <-> fpn_output{i+2}."""
    sd = {}
    for i, stage in enumerate(range(2, 6)):
        for p in ("weight", "bias"):
            sd[f"inner_blocks.{i}.0.{p}"] = getattr(ours, f"fpn_lateral{stage}").state_dict()[p]
            sd[f"layer_blocks.{i}.0.{p}"] = getattr(ours, f"fpn_output{stage}").state_dict()[p]
    tv.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("hw", [(64, 96), (37, 53)])
def test_parity_with_torchvision_fpn(hw):
    bottom_up = PoolingBottomUp()
    ours = FPN(bottom_up, list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool()).eval()
    tv = FeaturePyramidNetwork(list(CHANNELS.values()), 16, extra_blocks=TVLastLevelMaxPool()).eval()
    _copy_to_torchvision(ours, tv)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = ours(x)
        ref = tv(OrderedDict(bottom_up(x)))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert list(ref) == ["res2", "res3", "res4", "res5", "pool"]
    for (name, a), b in zip(out.items(), ref.values()):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    # a changed weight must show up (the comparison above is not vacuous)
    with torch.no_grad():
        ours.fpn_output3.weight.add_(0.1)
        assert not torch.allclose(ours(x)["p3"], ref["res3"], atol=1e-5)


def test_names_match_detectron2():
    fpn = FPN(PoolingBottomUp(), list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool())
    keys = set(fpn.state_dict())
    for stage in range(2, 6):
        assert {f"fpn_lateral{stage}.weight", f"fpn_lateral{stage}.bias",
                f"fpn_output{stage}.weight", f"fpn_output{stage}.bias"} <= keys
    assert "bottom_up.proj.res2.weight" in keys
    assert not any(k.startswith("_") for k in keys)
    # every parameter is registered once
    assert len(list(fpn.parameters())) == len({id(p) for p in fpn.parameters()})
    # c2-xavier init: bias 0, weights within sqrt(3 / fan_in)
    w = fpn.fpn_output4.weight.detach()
    bound = (3.0 / (16 * 9)) ** 0.5
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.8 * bound
    assert float(fpn.fpn_lateral2.bias.detach().abs().max()) == 0.0


def test_norm_convs_have_no_bias():
    fpn = FPN(PoolingBottomUp(), list(CHANNELS), out_channels=32, norm="GN")
    assert fpn.fpn_lateral3.bias is None and isinstance(fpn.fpn_lateral3.norm, nn.GroupNorm)
    assert fpn.fpn_output3.bias is None and isinstance(fpn.fpn_output3.norm, nn.GroupNorm)
    out = fpn(torch.randn(1, 3, 64, 64))
    assert out["p2"].shape == (1, 32, 16, 16)


@pytest.mark.parametrize("hw", [(65, 97), (101, 33), (128, 160)])
def test_shapes_match_output_shape_after_padding(hw):
    """Odd input sizes: pad as the detector does, then every level has ceil(padded / stride) pixels."""
    from resnet_backbone.structures import ImageList

    fpn = FPN(PoolingBottomUp(), list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool())
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints == {"square_size": 0}
    images = ImageList.from_tensors([torch.randn(3, *hw), torch.randn(3, 40, 40)], fpn.size_divisibility,
                                    padding_constraints=fpn.padding_constraints)
    H, W = images.tensor.shape[-2:]
    assert H % 32 == 0 and W % 32 == 0
    out = fpn(images.tensor)
    shapes = fpn.output_shape()
    assert list(out) == list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [shapes[k].stride for k in shapes] == [4, 8, 16, 32, 64]
    for k, v in out.items():
        s = shapes[k].stride
        assert v.shape == (2, shapes[k].channels, -(-H // s), -(-W // s)), k


def test_odd_feature_sizes_upsample_to_lateral_size():
    """Without padding (odd maps 13 -> 7 -> 4 -> 2), the top-down path upsamples to each lateral's exact size."""
    feats = {"res2": torch.randn(1, 8, 13, 15), "res3": torch.randn(1, 16, 7, 8),
             "res4": torch.randn(1, 24, 4, 4), "res5": torch.randn(1, 32, 2, 2)}
    fpn = FPN(FixedBottomUp(feats), list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool())
    out = fpn(torch.zeros(1, 3, 1, 1))
    assert out["p2"].shape[-2:] == (13, 15)
    assert out["p3"].shape[-2:] == (7, 8)
    assert out["p6"].shape[-2:] == (1, 1)
    # p4 = output(lateral4 + nearest-up(lateral5)) computed by hand
    lat5 = fpn.fpn_lateral5(feats["res5"])
    lat4 = fpn.fpn_lateral4(feats["res4"])
    up = lat5.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    torch.testing.assert_close(out["p4"], fpn.fpn_output4(lat4 + up))


def test_fuse_avg():
    feats = {k: torch.randn(1, c, 32 // STRIDES[k] * 4, 32 // STRIDES[k] * 4) for k, c in CHANNELS.items()}
    fpn_sum = FPN(FixedBottomUp(feats), list(CHANNELS), out_channels=16, fuse_type="sum")
    fpn_avg = FPN(FixedBottomUp(feats), list(CHANNELS), out_channels=16, fuse_type="avg")
    fpn_avg.load_state_dict(fpn_sum.state_dict())
    x = torch.zeros(1, 3, 1, 1)
    s, a = fpn_sum(x), fpn_avg(x)
    assert list(a) == ["p2", "p3", "p4", "p5"]
    torch.testing.assert_close(a["p5"], s["p5"])  # nothing merged at the top
    # avg: T4 = (L4 + up(L5)) / 2, T3 = (L3 + up(T4)) / 2
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")
    t4 = (fpn_avg.fpn_lateral4(feats["res4"]) + up(fpn_avg.fpn_lateral5(feats["res5"]))) / 2
    t3 = (fpn_avg.fpn_lateral3(feats["res3"]) + up(t4)) / 2
    torch.testing.assert_close(a["p4"], fpn_avg.fpn_output4(t4))
    torch.testing.assert_close(a["p3"], fpn_avg.fpn_output3(t3))
    assert not torch.allclose(a["p3"], s["p3"])
    with pytest.raises(ValueError, match="FUSE_TYPE"):
        FPN(FixedBottomUp(feats), list(CHANNELS), out_channels=16, fuse_type="max")


@pytest.mark.parametrize("in_feature", ["res5", "p5"])
def test_last_level_p6p7(in_feature):
    in_ch = CHANNELS["res5"] if in_feature == "res5" else 16
    fpn = FPN(PoolingBottomUp(), list(CHANNELS), out_channels=16,
              top_block=LastLevelP6P7(in_ch, 16, in_feature=in_feature))
    x = torch.randn(1, 3, 128, 192)
    out = fpn(x)
    shapes = fpn.output_shape()
    assert list(out) == ["p2", "p3", "p4", "p5", "p6", "p7"]
    assert shapes["p6"] == ShapeSpec(channels=16, stride=64) and shapes["p7"] == ShapeSpec(channels=16, stride=128)
    assert out["p6"].shape == (1, 16, 2, 3) and out["p7"].shape == (1, 16, 1, 2)
    src = fpn.bottom_up(x)["res5"] if in_feature == "res5" else out["p5"]
    p6 = fpn.top_block.p6(src)
    torch.testing.assert_close(out["p6"], p6)
    torch.testing.assert_close(out["p7"], fpn.top_block.p7(F.relu(p6)))


def test_bad_in_features_are_named():
    with pytest.raises(ValueError, match="res6"):
        FPN(PoolingBottomUp(), ["res4", "res5", "res6"], out_channels=16)
    with pytest.raises(ValueError, match="double"):
        FPN(PoolingBottomUp(), ["res3", "res5"], out_channels=16)


def test_builders_registered():
    assert BACKBONE_REGISTRY.get("build_resnet_fpn_backbone") is not None
    assert BACKBONE_REGISTRY.get("build_retinanet_resnet_fpn_backbone") is not None


@pytest.mark.parametrize("name,levels", [("build_resnet_fpn_backbone", ["p2", "p3", "p4", "p5", "p6"]),
                                         ("build_retinanet_resnet_fpn_backbone", ["p3", "p4", "p5", "p6", "p7"])])
def test_builders_from_config(name, levels):
    from resnet_backbone.config import get_cfg
    from resnet_backbone.modeling.backbone import build_backbone

    cfg = get_cfg()
    in_features = ["res2", "res3", "res4", "res5"] if levels[0] == "p2" else ["res3", "res4", "res5"]
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", name, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", in_features,
                         "MODEL.FPN.IN_FEATURES", in_features, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.FPN.NORM", "GN", "MODEL.FPN.FUSE_TYPE", "avg"])
    fpn = build_backbone(cfg)
    assert isinstance(fpn, FPN) and fpn._fuse_type == "avg"
    assert isinstance(fpn.fpn_output3.norm, nn.GroupNorm)
    shapes = fpn.output_shape()
    assert list(shapes) == levels
    assert all(shapes[k].stride == 2 ** int(k[1:]) and shapes[k].channels == 32 for k in levels)
    if name.startswith("build_retinanet"):
        assert fpn.top_block.in_feature == "res5" and fpn.top_block.p6.in_channels == 512
    out = fpn(torch.randn(1, 3, 128, 128))
    assert list(out) == levels
    for k in levels:
        assert out[k].shape == (1, 32, 128 // shapes[k].stride, 128 // shapes[k].stride), k


# ---------------------------------------------------------------- MODEL.FPN.OUTPUT_CONVS False (DBNet's layout)
def _float64_top_down(fpn: FPN, feats: dict, fuse_type: str = "sum") -> dict:
    """P_k = T_k, T_5 = lateral_5(C_5), T_k = lateral_k(C_k) + nearest-up(T_{k+1}), computed in float64 with
    F.conv2d from the FPN's lateral weights, and P6 = P5[::2, ::2] (max pool of kernel 1)."""
    t, out = None, {}
    for stage in (5, 4, 3, 2):
        conv = getattr(fpn, f"fpn_lateral{stage}")
        lat = F.conv2d(feats[f"res{stage}"].double(), conv.weight.double(), conv.bias.double())
        if t is not None:
            # nearest to the lateral's size: source index floor(i * in / out)
            rows = (torch.arange(lat.shape[-2]) * t.shape[-2]) // lat.shape[-2]
            cols = (torch.arange(lat.shape[-1]) * t.shape[-1]) // lat.shape[-1]
            lat = lat + t[..., rows[:, None], cols[None, :]]
            if fuse_type == "avg":
                lat = lat / 2
        t = out[f"p{stage}"] = lat
    out["p6"] = out["p5"][..., ::2, ::2]
    return dict(sorted(out.items()))


@pytest.mark.parametrize("hw,fuse_type", [((64, 96), "sum"), ((37, 53), "sum"), ((64, 96), "avg")])
def test_no_output_convs_levels_are_the_top_down_sums(hw, fuse_type):
    bottom_up = PoolingBottomUp()
    fpn = FPN(bottom_up, list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool(), fuse_type=fuse_type,
              output_convs=False).eval()
    for stage in range(2, 6):  # non-zero biases, so a dropped bias would show
        nn.init.uniform_(getattr(fpn, f"fpn_lateral{stage}").bias, -0.5, 0.5)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = fpn(x)
        ref = _float64_top_down(fpn, bottom_up(x), fuse_type)
    assert list(out) == list(ref) == ["p2", "p3", "p4", "p5", "p6"]
    for name in out:
        assert out[name].shape == ref[name].shape, name
        torch.testing.assert_close(out[name].double(), ref[name], atol=1e-5, rtol=0, msg=name)


def test_no_output_convs_equals_torchvision_fpn_with_identity_layer_blocks():
    bottom_up = PoolingBottomUp()
    fpn = FPN(bottom_up, list(CHANNELS), out_channels=16, top_block=LastLevelMaxPool(), output_convs=False).eval()
    tv = FeaturePyramidNetwork(list(CHANNELS.values()), 16, extra_blocks=TVLastLevelMaxPool()).eval()
    with torch.no_grad():
        for i, stage in enumerate(range(2, 6)):
            tv.inner_blocks[i][0].weight.copy_(getattr(fpn, f"fpn_lateral{stage}").weight)
            tv.inner_blocks[i][0].bias.copy_(getattr(fpn, f"fpn_lateral{stage}").bias)
            tv.layer_blocks[i] = nn.Identity()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        out, ref = fpn(x), tv(OrderedDict(bottom_up(x)))
    for (name, a), b in zip(out.items(), ref.values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("norm", ["", "GN"])
def test_no_output_convs_drops_exactly_the_output_convs(norm):
    kw = dict(in_features=list(CHANNELS), out_channels=16, norm=norm, top_block=LastLevelMaxPool())
    torch.manual_seed(0)
    with_out = FPN(PoolingBottomUp(), **kw)
    without = FPN(PoolingBottomUp(), **kw, output_convs=False)
    assert with_out.output_convs is True and without.output_convs is False
    outputs = sum(p.numel() for s in range(2, 6) for p in getattr(with_out, f"fpn_output{s}").parameters())
    assert outputs == 4 * (16 * 16 * 9 + (16 if not norm else 2 * 16))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_out) - count(without) == outputs
    assert not any("fpn_output" in k for k in without.state_dict())
    assert {k for k in with_out.state_dict() if "fpn_output" not in k} == set(without.state_dict())
    assert without.output_shape() == with_out.output_shape()


def test_output_convs_must_be_a_bool():
    from resnet_backbone.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL.FPN.OUTPUT_CONVS"):
        FPN(PoolingBottomUp(), list(CHANNELS), out_channels=16, output_convs="False")


@pytest.mark.parametrize("name,top_in", [("build_resnet_fpn_backbone", ""),
                                         ("build_retinanet_resnet_fpn_backbone", "res5"),
                                         ("build_retinanet_resnet_fpn_backbone", "p5")])
def test_builders_honour_output_convs(name, top_in):
    from resnet_backbone.config import ConfigError, get_cfg
    from resnet_backbone.config.validate import find_cfg_problems
    from resnet_backbone.modeling.backbone import build_backbone

    cfg = get_cfg()
    feats = ["res2", "res3", "res4", "res5"] if name == "build_resnet_fpn_backbone" else ["res3", "res4", "res5"]
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", name, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                         "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", feats, "MODEL.FPN.IN_FEATURES",
                         feats, "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.FPN.TOP_BLOCK_IN_FEATURE", top_in,
                         "MODEL.FPN.OUTPUT_CONVS", False])
    fpn = build_backbone(cfg).eval()
    assert not fpn.output_convs and not any("fpn_output" in k for k in fpn.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, c = fpn(x), fpn.bottom_up(x)
        p5 = fpn.fpn_lateral5(c["res5"])
    assert list(out) == list(fpn.output_shape())
    torch.testing.assert_close(out["p5"], p5)  # the coarsest level is its lateral, no 3x3 conv after it
    if name == "build_resnet_fpn_backbone":
        torch.testing.assert_close(out["p6"], p5[..., ::2, ::2])
    else:  # the P6/P7 convs read C5 (detectron2) or P5 = the lateral (torchvision's input)
        p6 = fpn.top_block.p6(c["res5"] if top_in == "res5" else p5)
        torch.testing.assert_close(out["p6"], p6)
    cfg.MODEL.FPN.OUTPUT_CONVS = 0  # not a bool: refused naming the key, by validate_cfg and by the builder
    assert any(p.startswith("MODEL.FPN.OUTPUT_CONVS") for p in find_cfg_problems(cfg))
    with pytest.raises(ConfigError, match="MODEL.FPN.OUTPUT_CONVS"):
        build_backbone(cfg)


def test_output_convs_false_without_an_fpn_is_refused():
    from resnet_backbone.config import get_cfg
    from resnet_backbone.config.validate import find_cfg_problems

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    assert not any(p.startswith("MODEL.FPN.OUTPUT_CONVS") for p in find_cfg_problems(cfg))
    cfg.MODEL.FPN.OUTPUT_CONVS = False
    assert any(p.startswith("MODEL.FPN.OUTPUT_CONVS") and "no FPN" in p for p in find_cfg_problems(cfg))
