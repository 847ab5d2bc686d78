"""The fused inference forms our blocks, ResNet and FPN offer (`fuse_for_inference`, modeling/fast_paths/fusion.py):
offered by subclasses that compute what their base computes, never by one that computes something else, and the
FPN's fused lateral add used only once the FPN asked for it. Every fused model must equal the unfused one."""
import copy

import pytest
import torch
from torch import nn

from resnet_backbone.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbone.modeling.backbone.fpn import FPN, LastLevelMaxPool
from resnet_backbone.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    FusedResidualBlock,
    FusedStem,
    ResNet,
    make_stage,
)
from resnet_backbone.modeling.fast_paths import (
    MkldnnConv2d,
    fuse_conv_frozen_bn,
    mkldnn_available,
    pack_conv,
    prepack_mkldnn,
)

needs_mkldnn = pytest.mark.skipif(not mkldnn_available(), reason="torch built without oneDNN")


class TaggedBottleneck(BottleneckBlock):
    """A subclass that changes how it is built, not what it computes: it must get BottleneckBlock's fused form."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = "mine"


class TaggedBasicBlock(BasicBlock):
    pass


class TaggedStem(BasicStem):
    pass


class HalvedResidual(BottleneckBlock):
    """A subclass that computes something else: BottleneckBlock's fused form would be wrong for it."""

    def forward(self, x):
        return super().forward(x) * 0.5


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def _resnet(block_class, stem_class=BasicStem, **block_kwargs) -> ResNet:
    torch.manual_seed(0)
    stem = stem_class(3, 16, norm="FrozenBN")
    if issubclass(block_class, BottleneckBlock):
        block_kwargs.setdefault("bottleneck_channels", 8)
    stages = [make_stage(block_class, 2, in_channels=16, out_channels=32, first_stride=1, norm="FrozenBN",
                         **block_kwargs),
              make_stage(block_class, 2, in_channels=32, out_channels=64, first_stride=2, norm="FrozenBN",
                         **block_kwargs)]
    return _randomize(ResNet(stem, stages, out_features=["res2", "res3"]))


def _run(model, x):
    with torch.inference_mode():
        return model(x)


def _assert_same(out, ref):
    assert set(out) == set(ref)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


@needs_mkldnn
@pytest.mark.parametrize("block_class, stem_class", [(TaggedBottleneck, TaggedStem), (TaggedBasicBlock, BasicStem)])
def test_a_subclass_that_computes_the_same_gets_its_base_fused_form(block_class, stem_class):
    model = _resnet(block_class, stem_class)
    x = torch.randn(1, 3, 48, 48)
    ref = _run(model, x)
    fast = prepack_mkldnn(fuse_conv_frozen_bn(copy.deepcopy(model)))
    assert type(fast.stem) is FusedStem
    blocks = [b for s in fast.stages for b in s]
    assert len(blocks) == 4 and all(type(b) is FusedResidualBlock for b in blocks)
    # inside a stage, the second block may write into its input (the first block's output, private to it)
    assert [b.input_private for b in blocks] == [False, True, False, True]
    _assert_same(_run(fast, x), ref)


@needs_mkldnn
@pytest.mark.parametrize("block_class, kwargs", [(HalvedResidual, {}),
                                                 (DeformBottleneckBlock, {"deform_modulated": True})])
def test_a_block_that_computes_something_else_is_left_unfused(block_class, kwargs):
    model = _resnet(block_class, **kwargs)
    with torch.no_grad():  # offsets away from zero, so the deformable conv is not a plain conv in disguise
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels in (18, 27):
                m.weight.normal_(0, 0.1)
    x = torch.randn(1, 3, 48, 48)
    ref = _run(model, x)
    fast = prepack_mkldnn(fuse_conv_frozen_bn(copy.deepcopy(model)))
    blocks = [b for s in fast.stages for b in s]
    assert all(type(b) is block_class for b in blocks)
    assert all(isinstance(b.conv1, MkldnnConv2d) for b in blocks)  # its plain convs are still swapped one by one
    _assert_same(_run(fast, x), ref)


def test_a_block_with_a_norm_left_has_no_fused_form():
    model = _resnet(BottleneckBlock)  # FrozenBN not folded: no conv can be prepacked
    assert model.res2[0].fuse_for_inference(pack_conv) is None
    assert model.stem.fuse_for_inference(pack_conv) is None
    assert model.fuse_for_inference(pack_conv) is model
    assert type(model.stem) is BasicStem and all(type(b) is BottleneckBlock for s in model.stages for b in s)


class _RecordingFusedConv(nn.Module):
    """fusion.py's fused-conv contract computed with the conv itself, recording whether the add was passed in."""

    def __init__(self, conv: nn.Module, activation, calls: list):
        super().__init__()
        self.conv, self.activation, self.calls = conv, activation, calls

    def forward(self, x, other=None, *, accumulate=False):
        self.calls.append(other is not None)
        y = self.conv(x) if other is None else self.conv(x) + other
        return y.relu() if self.activation == "relu" else y


def _fpn() -> FPN:
    bottom_up = _resnet(BottleneckBlock)
    torch.manual_seed(0)
    return FPN(bottom_up, ["res2", "res3"], out_channels=8, top_block=LastLevelMaxPool("p3")).eval()


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_fpn_fused_lateral_add_when_asked_equals_the_plain_fpn(fuse_type):
    fpn = _fpn()
    fpn._fuse_type = fuse_type
    x = torch.randn(1, 3, 48, 48)
    ref = _run(fpn, x)
    calls = []
    assert fpn.fuse_for_inference(lambda conv, act: _RecordingFusedConv(conv, act, calls)) is fpn
    _assert_same(_run(fpn, x), ref)
    assert calls == [True]  # the finer lateral takes the add; the coarsest (no add) is left to the pass


@needs_mkldnn
def test_fpn_lateral_swapped_from_outside_is_not_handed_the_add(monkeypatch):
    """A prepacked conv can take the add, but the FPN hands it the top-down map only after asking for that
    (fuse_for_inference), never because of what the module it finds happens to be."""
    fpn = fuse_conv_frozen_bn(_fpn())
    x = torch.randn(1, 3, 48, 48)
    ref = _run(fpn, x)
    adds = []
    real = MkldnnConv2d.forward

    def spy(self, inp, other=None, *, accumulate=False):
        adds.append(other is not None)
        return real(self, inp, other, accumulate=accumulate)

    monkeypatch.setattr(MkldnnConv2d, "forward", spy)
    swapped = copy.deepcopy(fpn)
    for s in (2, 3):
        setattr(swapped, f"fpn_lateral{s}", MkldnnConv2d(getattr(swapped, f"fpn_lateral{s}")))
    _assert_same(_run(swapped, x), ref)
    assert adds == [False, False]
    adds.clear()
    assert fpn.fuse_for_inference(pack_conv) is fpn
    _assert_same(_run(fpn, x), ref)
    assert adds == [True]  # the finer lateral, with the add (the coarsest is left to the pass)


def test_fpn_with_normed_laterals_has_no_fused_form():
    bottom_up = _resnet(BottleneckBlock)
    fpn = FPN(bottom_up, ["res2", "res3"], out_channels=8, norm="GN").eval()
    assert fpn.fuse_for_inference(pack_conv) is None
    assert not fpn._lateral_add_fused and type(fpn.fpn_lateral2) is Conv2d


@needs_mkldnn
def test_prepacked_fpn_uses_the_fused_add_and_equals_the_plain_one(monkeypatch):
    fpn = _fpn()
    x = torch.randn(1, 3, 48, 48)
    ref = _run(fpn, x)
    fast = prepack_mkldnn(fuse_conv_frozen_bn(copy.deepcopy(fpn)))
    assert fast._lateral_add_fused
    adds = []
    real = MkldnnConv2d.forward

    def spy(self, inp, other=None, *, accumulate=False):
        if other is not None and self is fast.fpn_lateral2:
            adds.append(True)
        return real(self, inp, other, accumulate=accumulate)

    monkeypatch.setattr(MkldnnConv2d, "forward", spy)
    _assert_same(_run(fast, x), ref)
    assert adds == [True]
