"""Every inference fast path must give the same outputs as the plain model (fp32 to float rounding, bf16 to ~1%)."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import find_cfg_problems
from resnet_backbone.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbone.modeling.backbone import build_backbone
from resnet_backbone.modeling.backbone.resnet import FusedResidualBlock, FusedStem
from resnet_backbone.modeling.fast_paths import (
    MkldnnConv2d,
    autocast_dtype,
    fast_path_problems,
    fuse_conv_frozen_bn,
    inference_autocast,
    mkldnn_available,
    optimize_for_inference,
    prepack_mkldnn,
    to_channels_last,
)
from resnet_backbone.utils.machine import override_machine, probe_machine
from resnet_backbone.utils.precision import PrecisionError

needs_mkldnn = pytest.mark.skipif(not mkldnn_available(), reason="torch built without oneDNN")


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics, so folding them is actually exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def _resnet(depth=50, norm="FrozenBN", fpn=False, freeze_at=2, stem=False, output_convs=True):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["stem"] * stem + ["res2", "res3", "res4", "res5"]
    # thin but complete: every block type, shortcut and stride of the real net, 1/16 of the weights (with
    # stem=True, R18/34's res2 keeps the stem's width, so its first block has an identity shortcut as in the real net)
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 64 if stem and depth < 50 else 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    if fpn:
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.OUTPUT_CONVS = output_convs
    return _randomize_norms(build_backbone(cfg)).eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _run(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def r50_and_ref():
    torch.manual_seed(0)
    model = _resnet(50)
    x = torch.randn(2, 3, 64, 96)
    return model, x, _run(model, x)


def test_fuse_frozen_bn_parity(r50_and_ref):
    model, x, ref = r50_and_ref
    fused = copy.deepcopy(model)
    assert fuse_conv_frozen_bn(fused) is fused
    convs = [m for m in fused.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.norm is None for m in convs)
    assert all(m.bias is not None for m in convs)
    out = _run(fused, x)
    assert set(out) == set(ref)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k


def test_fuse_eval_batchnorm_but_not_train_batchnorm_or_groupnorm():
    torch.manual_seed(0)
    model = _resnet(18, norm="BN", freeze_at=0)
    x = torch.randn(2, 3, 64, 64)
    ref = _run(model, x)
    fused = fuse_conv_frozen_bn(copy.deepcopy(model))
    assert all(m.norm is None for m in fused.modules() if isinstance(m, Conv2d))
    out = _run(fused, x)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k

    train_bn = copy.deepcopy(model).train()
    fuse_conv_frozen_bn(train_bn)  # batch statistics cannot be folded
    assert all(isinstance(m.norm, nn.BatchNorm2d) for m in train_bn.modules() if isinstance(m, Conv2d))

    gn = _resnet(18, norm="GN", freeze_at=0)
    fuse_conv_frozen_bn(gn)
    assert all(isinstance(m.norm, nn.GroupNorm) for m in gn.modules() if isinstance(m, Conv2d))


def test_fold_keeps_existing_bias():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, bias=True, norm=FrozenBatchNorm2d(6))
    _randomize_norms(conv)
    x = torch.randn(1, 4, 9, 9)
    ref = conv(x).detach()
    fuse_conv_frozen_bn(conv)
    assert conv.norm is None
    torch.testing.assert_close(conv(x).detach(), ref, rtol=1e-5, atol=1e-5)


def test_channels_last_parity(r50_and_ref):
    model, x, ref = r50_and_ref
    cl = to_channels_last(copy.deepcopy(model))
    assert cl.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = _run(cl, x)
    assert out["res5"].is_contiguous(memory_format=torch.channels_last)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k


@needs_mkldnn
def test_prepack_mkldnn_resnet50_parity(r50_and_ref):
    model, x, ref = r50_and_ref
    fast = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, channels_last=False, mkldnn=True)
    assert type(fast.res2[0]) is FusedResidualBlock
    assert type(fast.stem) is FusedStem
    assert not any(isinstance(m, (nn.Conv2d, FrozenBatchNorm2d)) for m in fast.modules())
    assert fast.output_shape() == model.output_shape()
    out = _run(fast, x)
    for k in ref:
        assert out[k].shape == ref[k].shape
        assert _rel_err(out[k], ref[k]) < 1e-5, k


@needs_mkldnn
def test_prepack_basic_blocks_and_fpn_parity():
    torch.manual_seed(0)
    # the FPN with and without its 3x3 output convs (MODEL.FPN.OUTPUT_CONVS False: P_k is the fused lateral's sum)
    for model in (_resnet(18), _resnet(50, fpn=True), _resnet(50, fpn=True, output_convs=False)):
        x = torch.randn(1, 3, 64, 64)
        ref = _run(model, x)
        fast = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, channels_last=True, mkldnn=True)
        assert not any(type(m) in (nn.Conv2d, Conv2d) for m in fast.modules())
        if hasattr(fast, "fpn_lateral2"):  # the top-down add runs inside the laterals
            assert fast._lateral_add_fused and isinstance(fast.fpn_lateral2, MkldnnConv2d)
            assert hasattr(fast, "fpn_output2") is model.output_convs
        # the swapped-in convs are the ones that run (a model holding its convs in a plain list would still
        # call the old ones: the FPN once did)
        packed = [m for m in fast.modules() if isinstance(m, MkldnnConv2d)]
        called = set()
        for m in packed:
            m.register_forward_hook(lambda mod, args, out, seen=called: seen.add(id(mod)))
        out = _run(fast, x)
        assert len(called) == len(packed) > 0
        assert set(out) == set(ref)
        for k in ref:
            assert _rel_err(out[k], ref[k]) < 1e-5, k



@needs_mkldnn
@pytest.mark.parametrize("depth", [18, 50])
def test_residual_sum_written_in_place_but_never_into_a_returned_feature(depth, monkeypatch):
    """The last conv of a block accumulates into the projection shortcut's output or, from a stage's 2nd block
    on, into the block's input; R18's first res2 block (identity shortcut, input = the stem output) must not,
    so a requested "stem" feature and every stage output stay equal to the plain model's."""
    torch.manual_seed(0)
    model = _resnet(depth, stem=True)  # also return the stem output: the tensor an in-place add would corrupt
    x = torch.randn(1, 3, 64, 64)
    ref = _run(model, x)
    fast = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, channels_last=True, mkldnn=True)
    calls = []
    real = MkldnnConv2d.forward

    def spy(self, inp, other=None, *, accumulate=False):
        out = real(self, inp, other, accumulate=accumulate)
        if other is not None:
            calls.append((accumulate, out is other))
        return out

    monkeypatch.setattr(MkldnnConv2d, "forward", spy)
    out = _run(fast, x)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k
    blocks = sum(len(list(s.children())) for s in fast.stages)
    assert len(calls) == blocks
    in_place = sum(acc and same for acc, same in calls)
    assert all(acc == same for acc, same in calls)  # accumulate requested -> done in place
    # R50: every block has a projection or a private input; R18: res2's first block has neither
    assert in_place == (blocks if depth == 50 else blocks - 1)

@needs_mkldnn
def test_prepack_fuses_conv_relu_pairs_in_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1),
                          nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, 3, 12, 12)
    ref = _run(model, x)
    prepack_mkldnn(model)
    assert model[0].activation == "relu" and isinstance(model[1], nn.Identity)
    assert model[2].activation is None and model[3][0].activation == "relu"
    torch.testing.assert_close(_run(model, x), ref, rtol=1e-5, atol=1e-5)


@needs_mkldnn
def test_prepack_leaves_convs_with_norm_alone():
    model = _resnet(18, norm="GN")
    prepack_mkldnn(model)
    assert not any(isinstance(m, MkldnnConv2d) for m in model.modules())


@needs_mkldnn
@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=2, padding=1, bias=True),
    dict(kernel_size=3, stride=1, padding=2, dilation=2, bias=False),
    dict(kernel_size=3, stride=1, padding=1, groups=4, bias=True),
    dict(kernel_size=1, stride=1, padding=0, bias=False),
])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_mkldnn_conv_matches_conv2d(kw, activation):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, **kw)
    fast = MkldnnConv2d(conv, activation)
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        ref = conv(x)
        ref_act = ref.relu() if activation == "relu" else ref
        torch.testing.assert_close(fast(x), ref_act, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref_act,
                                   rtol=1e-5, atol=1e-5)
        other = torch.randn_like(ref)
        with_sum = ref + other
        with_sum = with_sum.relu() if activation == "relu" else with_sum
        torch.testing.assert_close(fast(x, other), with_sum, rtol=1e-5, atol=1e-5)
    # state_dict keeps the dense weights
    assert torch.equal(fast.state_dict()["weight"], conv.weight.detach())


@needs_mkldnn
def test_mkldnn_conv_falls_back_when_autograd_records():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    fast = MkldnnConv2d(conv, "relu")
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    y = fast(x)
    torch.testing.assert_close(y, conv(x).relu())
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_mkldnn
def test_mkldnn_conv_packs_per_input_shape_and_keeps_the_latest():
    """oneDNN picks the weight blocking per problem shape: one packed copy per input shape, at most max_packed."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 1)
    fast = MkldnnConv2d(conv, None)
    n = fast.max_packed
    shapes = [(1, 16, 9, 9), (2, 16, 9, 9)] + [(1, 16, 4 + k, 5) for k in range(n - 1)] + [(1, 16, 9, 9)]
    with torch.no_grad():
        for s in shapes:
            x = torch.randn(s)
            torch.testing.assert_close(fast(x), conv(x), rtol=1e-5, atol=1e-5)
    keys = list(fast._packed)
    assert len(keys) == n  # n + 1 shapes seen
    assert keys[-1] == (torch.float32, (1, 16, 9, 9))  # reused entry moved to most recent
    assert (torch.float32, (2, 16, 9, 9)) not in keys  # least recently used dropped


@needs_mkldnn
def test_mkldnn_conv_does_not_reorder_its_weight_on_every_call():
    """The case that used to re-reorder the weight inside each call (1024x256 1x1 at 14x14, batch 8, packed for a
    64x64 input): after the first call, oneDNN's verbose log must show no weight reorder at all."""
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from resnet_backbone.modeling.fast_paths import MkldnnConv2d
        fast = MkldnnConv2d(nn.Conv2d(256, 1024, 1), "relu")
        x = torch.randn(8, 256, 14, 14).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fast(x)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(3):
                    fast(x)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
    convs = [line for line in out.splitlines() if ",exec," in line and ",convolution," in line]
    reorders = [line for line in out.splitlines() if ",exec," in line and ",reorder," in line]
    assert len(convs) == 3, out[-2000:]
    assert reorders == []


def test_mkldnn_conv_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        MkldnnConv2d(nn.Conv2d(3, 4, 3), "gelu")


needs_bf16_kernels = pytest.mark.skipif(not probe_machine().cpu_bf16_kernels,
                                        reason="this CPU has no oneDNN bf16 kernels (AVX2 only): the packed bf16 "
                                               "path cannot run here; the fallback is tested on every CPU")


def _bf16_parity(model, x, ref):
    fast = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, channels_last=True, mkldnn=True)
    # force: bf16 even where it is only emulated, so the numerics are checked on every CPU
    with torch.inference_mode(), inference_autocast("cpu", "bfloat16", force=True):
        out = fast(x)
        plain = model(x)
    for k in ref:
        assert out[k].dtype == torch.bfloat16
        assert _rel_err(out[k], ref[k]) < 3e-2, k
        assert _rel_err(plain[k], ref[k]) < 3e-2, k
    return fast


@needs_mkldnn
@needs_bf16_kernels
def test_bf16_autocast_parity_packed_kernels(r50_and_ref, monkeypatch):
    packed = []
    orig = MkldnnConv2d._pack
    monkeypatch.setattr(MkldnnConv2d, "_pack", lambda self, dt, size: packed.append(dt) or orig(self, dt, size))
    _bf16_parity(*r50_and_ref)
    assert packed and set(packed) == {torch.bfloat16}


@needs_mkldnn
def test_bf16_autocast_without_onednn_bf16_kernels_falls_back_instead_of_failing(r50_and_ref, monkeypatch):
    """An AVX2-only CPU: oneDNN's bf16 weight reorder would raise; the prepacked convs compute through F.conv2d."""
    def no_reorder(*a, **k):
        raise AssertionError("mkldnn_reorder_conv2d_weight called for bf16 on a CPU without bf16 kernels")

    with override_machine(cpu_bf16_kernels=False, cpu_bf16_native=False, cpu_amx=False):
        fast = optimize_for_inference(copy.deepcopy(r50_and_ref[0]), fuse_bn=True, channels_last=True, mkldnn=True)
        monkeypatch.setattr(MkldnnConv2d, "_pack", no_reorder)
        _bf16_parity(fast, *r50_and_ref[1:])
        with torch.inference_mode():  # float32 still takes the packed path
            monkeypatch.undo()
            torch.testing.assert_close(fast(r50_and_ref[1])["res5"], r50_and_ref[2]["res5"], rtol=1e-3, atol=1e-3)


def test_inference_autocast_choices():
    assert autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="autocast dtype"):
        autocast_dtype("int8")
    with inference_autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with override_machine(cpu_bf16_native=True, cpu_fp16_native=True):
        for request in ("auto", "bfloat16"):
            with inference_autocast("cpu", request):
                assert torch.is_autocast_enabled("cpu")
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
                y = nn.Linear(4, 4)(torch.randn(2, 4))
            assert y.dtype == torch.bfloat16
        with inference_autocast("cpu", "float16"):
            assert torch.get_autocast_dtype("cpu") == torch.float16


def test_inference_autocast_on_a_cpu_without_native_bf16():
    with override_machine(cpu_bf16_native=False, cpu_fp16_native=False):
        with inference_autocast("cpu"):  # auto: float32, not 15-25x slower bf16
            assert not torch.is_autocast_enabled("cpu")
        for dtype in ("bfloat16", "float16"):
            with pytest.raises(PrecisionError, match=rf"inference_autocast\(dtype='{dtype}'\) .*no native {dtype} .*"
                                                     r"dtype='auto'.*force=True"):
                inference_autocast("cpu", dtype)
        with inference_autocast("cpu", "bfloat16", force=True):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_autocast_and_channels_last(dtype):
    model = _resnet(50).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    ref = _run(model, x)
    fast = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, channels_last=True)
    assert not any(isinstance(m, MkldnnConv2d) for m in fast.modules())  # oneDNN prepack is CPU only
    with pytest.raises(ValueError, match="CPU only"):
        optimize_for_inference(copy.deepcopy(model), mkldnn=True)
    with torch.inference_mode(), inference_autocast("cuda", dtype):
        out = fast(x)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 3e-2, k


def test_optimize_for_inference_reads_config(r50_and_ref):
    model, x, ref = r50_and_ref
    cfg = get_cfg()
    m = optimize_for_inference(copy.deepcopy(model).train(), cfg)  # all switches off by default
    assert not m.training
    assert any(isinstance(c, FrozenBatchNorm2d) for c in m.modules())
    cfg.MODEL.FUSE_FROZEN_BN = True
    cfg.MODEL.CHANNELS_LAST = True
    m = optimize_for_inference(copy.deepcopy(model), cfg)
    assert not any(isinstance(c, FrozenBatchNorm2d) for c in m.modules())
    assert not any(isinstance(c, MkldnnConv2d) for c in m.modules())  # folding does not prepack
    assert m.res5[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    cfg.MODEL.MKLDNN_PREPACK = True
    packed = optimize_for_inference(copy.deepcopy(model), cfg)
    if mkldnn_available():
        assert type(packed.res5[0]) is FusedResidualBlock
    for fast in (m, packed):
        out = _run(fast, x)
        for k in ref:
            assert _rel_err(out[k], ref[k]) < 1e-5, k
    assert "COMPILE" in cfg.MODEL and cfg.MODEL.COMPILE is False


def _conv_kinds(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if isinstance(m, (nn.Conv2d, MkldnnConv2d))}


def test_fuse_frozen_bn_alone_folds_and_leaves_convs_as_convs(r50_and_ref):
    model, x, ref = r50_and_ref
    cfg = get_cfg()
    cfg.MODEL.FUSE_FROZEN_BN = True
    fast = optimize_for_inference(copy.deepcopy(model), cfg)
    assert _conv_kinds(fast) == {"Conv2d"} and all(type(m) is Conv2d for m in fast.modules()
                                                   if isinstance(m, nn.Conv2d))
    assert all(m.norm is None for m in fast.modules() if isinstance(m, Conv2d))
    assert type(fast.stem).__name__ == "BasicStem" and type(fast.res2[0]).__name__ == "BottleneckBlock"
    assert fast.stem.conv1.weight.is_contiguous()  # CHANNELS_LAST is its own key
    out = _run(fast, x)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k


@needs_mkldnn
def test_mkldnn_prepack_alone_prepacks_a_model_without_norms():
    torch.manual_seed(0)
    model = _resnet(18, norm="", freeze_at=0)
    x = torch.randn(1, 3, 64, 64)
    ref = _run(model, x)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.NORM = ""
    cfg.MODEL.MKLDNN_PREPACK = True
    assert fast_path_problems(cfg) == []
    fast = optimize_for_inference(copy.deepcopy(model), cfg)
    assert _conv_kinds(fast) == {"MkldnnConv2d"}
    assert type(fast.stem) is FusedStem and all(type(b) is FusedResidualBlock for s in fast.stages for b in s)
    assert fast.res2[0].conv1.weight.is_contiguous()  # not channels_last: that is MODEL.CHANNELS_LAST
    out = _run(fast, x)
    for k in ref:
        assert _rel_err(out[k], ref[k]) < 1e-5, k


def test_mkldnn_prepack_refused_off_the_cpu_and_over_unfolded_norms():
    cfg = get_cfg()
    cfg.MODEL.MKLDNN_PREPACK = True
    cfg.MODEL.FUSE_FROZEN_BN = True
    assert fast_path_problems(cfg) == []
    cfg.MODEL.DEVICE = "cuda"
    (problem,) = fast_path_problems(cfg)
    assert problem.startswith("MODEL.MKLDNN_PREPACK:") and "CPU only" in problem and "'cuda'" in problem
    assert problem in find_cfg_problems(cfg, 1, model=False)  # validate_cfg refuses it before anything is written
    with pytest.raises(ConfigError, match=r"MODEL\.MKLDNN_PREPACK: .*CPU only"):
        optimize_for_inference(nn.Sequential(nn.Conv2d(3, 4, 1)), cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FUSE_FROZEN_BN = False  # FrozenBN convs cannot be prepacked unless folded first
    (problem,) = fast_path_problems(cfg)
    assert problem.startswith("MODEL.MKLDNN_PREPACK:") and "MODEL.FUSE_FROZEN_BN" in problem and "FrozenBN" in problem
    cfg.MODEL.RESNETS.NORM = "GN"  # nothing to fold: prepacking the norm-free convs is all it can do
    assert fast_path_problems(cfg) == []
    # a model whose tensors live elsewhere: refused, naming the key (from the config) or the argument
    off_cpu = nn.Sequential(nn.Conv2d(3, 4, 1, device="meta"))
    with pytest.raises(ConfigError, match=r"MODEL\.MKLDNN_PREPACK: .*the model is on meta"):
        optimize_for_inference(off_cpu, cfg)
    with pytest.raises(ValueError, match=r"mkldnn=True\): .*CPU only, and the model is on meta"):
        optimize_for_inference(off_cpu, mkldnn=True)


def test_prepack_without_onednn_warns_and_leaves_the_model(monkeypatch, caplog):
    from resnet_backbone.modeling.fast_paths import mkldnn as mkldnn_pass

    monkeypatch.setattr(mkldnn_pass, "mkldnn_available", lambda: False)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval()
    with caplog.at_level("WARNING", logger=mkldnn_pass.__name__):
        assert optimize_for_inference(model, mkldnn=True) is model
    assert _conv_kinds(model) == {"Conv2d"}
    assert "no oneDNN" in caplog.text and "unchanged" in caplog.text


@needs_mkldnn
def test_prepack_alone_over_frozen_bn_says_what_stayed_unpacked(caplog):
    model = _resnet(18)
    with caplog.at_level("WARNING", logger="resnet_backbone.modeling.fast_paths.mkldnn"):
        prepack_mkldnn(model)
    n_convs = sum(1 for m in model.modules() if isinstance(m, Conv2d))
    assert _conv_kinds(model) == {"Conv2d"}
    assert f"{n_convs} convs carry a norm that could be folded" in caplog.text


def test_packed_kernel_or_reference_on_each_cpu_kind():
    """Every branch of MkldnnConv2d's choice, on any machine: AMX / AVX512-BF16 CPUs run bf16 through oneDNN's
    packed kernels, AVX2-only ones (oneDNN without bf16 kernels) through F.conv2d; fp32 is packed on both."""
    x = torch.randn(1, 3, 8, 8)
    for bf16_kernels in (True, False):
        with override_machine(cpu_bf16_kernels=bf16_kernels), torch.no_grad():
            assert MkldnnConv2d.uses_packed_kernel(x)
            assert MkldnnConv2d.uses_packed_kernel(x.bfloat16()) is bf16_kernels
            assert not MkldnnConv2d.uses_packed_kernel(x.half())
            assert not MkldnnConv2d.uses_packed_kernel(torch.randn(1, 3, 8, 8, device="meta"))
    with torch.enable_grad():  # autograd recording through the input or the added map: the reference
        assert not MkldnnConv2d.uses_packed_kernel(x.clone().requires_grad_())
        assert not MkldnnConv2d.uses_packed_kernel(x, torch.zeros(1, 3, 8, 8, requires_grad=True))
        assert MkldnnConv2d.uses_packed_kernel(x)


def test_compile_switch_compiles_the_model_it_returns(monkeypatch):
    """MODEL.COMPILE: the object optimize_for_inference returns is the compiled form of the model it was given,
    and running it runs dynamo's capture (a counting backend stands in for inductor; inductor: the slow test)."""
    torch.manual_seed(0)
    model = nn.Sequential(Conv2d(3, 8, 3, padding=1, norm=FrozenBatchNorm2d(8), activation=nn.ReLU()),
                          Conv2d(8, 4, 1)).eval()
    _randomize_norms(model)
    x = torch.randn(1, 3, 16, 16)
    ref = _run(model, x)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, **{**kw, "backend": counting_backend}))
    torch._dynamo.reset()
    cfg = get_cfg()
    cfg.MODEL.COMPILE = True
    cfg.MODEL.FUSE_FROZEN_BN = True
    target = copy.deepcopy(model)
    compiled = optimize_for_inference(target, cfg)
    assert compiled is not target and compiled._orig_mod is target
    assert target[0].norm is None  # the fast paths before compile were applied to the same object
    assert graphs == []
    torch.testing.assert_close(_run(compiled, x), ref, rtol=1e-5, atol=1e-5)
    assert len(graphs) >= 1  # the returned object ran compiled


@pytest.mark.slow
def test_compile_inductor_parity():
    torch.manual_seed(0)
    model = nn.Sequential(Conv2d(3, 8, 3, padding=1, norm=FrozenBatchNorm2d(8), activation=nn.ReLU()),
                          Conv2d(8, 4, 1))
    _randomize_norms(model)
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    ref = _run(model, x)
    # prepacked convs under inductor too: MODEL.MKLDNN_PREPACK and MODEL.COMPILE go together
    compiled = optimize_for_inference(copy.deepcopy(model), fuse_bn=True, mkldnn=mkldnn_available(), compile=True)
    torch.testing.assert_close(_run(compiled, x), ref, rtol=1e-4, atol=1e-4)
