"""DBNet++'s Adaptive Scale Fusion (modeling/text/asf.py): shapes, that the per-scale weights are applied, and one
forward against an independent float64 computation of the paper's equations (einsum / unfold, not the module's
convs).

Parity with the public implementations was checked outside the test suite (neither is installable beside the
project: mmocr needs mmcv's compiled ops, MhLiao/DB is not a package): mmocr's FPNC ASF path and MhLiao/DB's
ScaleFeatureSelection, run from their sources with stand-ins for mmcv / mmengine and our weights copied in, give
this module's outputs bit for bit in float32 and float64.
"""
import pytest
import torch
import torch.nn.functional as F

from resnet_backbone.modeling.text.asf import AdaptiveScaleFusion


def _maps(n=4, c=6, h=9, w=11, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g, dtype=dtype) * (i + 1) for i in range(n)]


def _randomised(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def test_shapes_and_weights_in_unit_interval():
    maps = _maps()
    for channels, hidden in ((None, 6), (8, 2)):
        asf = AdaptiveScaleFusion(6, 4, channels=channels)
        assert asf.conv.out_channels == (channels or 24)
        assert asf.attention.channel_reduce.out_channels == hidden  # a quarter of the conv's channels
        out = asf(maps)
        assert out.shape == (2, 24, 9, 11)
        w = asf.scale_weights(torch.cat(maps, 1))
        assert w.shape == (2, 4, 9, 11) and 0 < w.min() and w.max() < 1
    with pytest.raises(ValueError, match="4 scales, got 3"):
        AdaptiveScaleFusion(6, 4)(maps[:3])
    with pytest.raises(ValueError, match="no channel for the channel attention"):
        AdaptiveScaleFusion(1, 2, channels=3)


def test_each_scale_is_multiplied_by_its_own_weight_map(monkeypatch):
    """The attention's output, replaced by known maps that differ per scale and per pixel, multiplies scale i
    (and only scale i): a fusion that ignored the weights, used one map for every scale or mixed up the order
    fails."""
    maps = _maps()
    asf = AdaptiveScaleFusion(6, 4)
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(2, 4, 9, 11, generator=g)
    monkeypatch.setattr(asf.attention, "forward", lambda s: weights)
    out = asf(maps)
    for i, m in enumerate(maps):
        torch.testing.assert_close(out[:, 6 * i:6 * (i + 1)], weights[:, i:i + 1] * m, rtol=0, atol=0)
        assert (out[:, 6 * i:6 * (i + 1)] - m).abs().max() > 0.1
    # the real attention is not a constant: different inputs, different weights per scale
    monkeypatch.undo()
    _randomised(asf)
    w = asf.scale_weights(torch.cat(maps, 1))
    assert (w[:, 0] - w[:, 1]).abs().max() > 0.05 and w.std() > 0.05


def _conv3x3(x, weight, bias=None):
    """3x3, stride 1, zero padding 1, as unfold + einsum."""
    n, _, h, w = x.shape
    cols = F.unfold(x, 3, padding=1)  # (N, C*9, H*W)
    y = torch.einsum("ok,nkl->nol", weight.reshape(weight.shape[0], -1), cols).reshape(n, -1, h, w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _conv1x1(x, weight):
    return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)


def test_forward_matches_an_independent_computation_of_the_paper_equations():
    maps = _maps(dtype=torch.float64)
    asf = _randomised(AdaptiveScaleFusion(6, 4, channels=12).double())
    a = asf.attention
    x = torch.cat(maps, 1)
    s = _conv3x3(x, asf.conv.weight, asf.conv.bias)                                    # S
    pooled = s.mean(dim=(2, 3))                                                         # (N, D)
    hidden = torch.clamp(pooled @ a.channel_reduce.weight[:, :, 0, 0].T, min=0)
    s = s + torch.sigmoid(hidden @ a.channel_expand.weight[:, :, 0, 0].T)[:, :, None, None]  # S'
    spatial = torch.clamp(_conv3x3(s.mean(dim=1, keepdim=True), a.spatial_conv.weight), min=0)
    s = s + torch.sigmoid(spatial * a.spatial_proj.weight.reshape(()))                 # S"
    weights = torch.sigmoid(_conv1x1(s, a.scale_weights.weight))                       # A (N, 4, H, W)
    expected = torch.cat([weights[:, i:i + 1] * m for i, m in enumerate(maps)], 1)
    with torch.no_grad():
        got = asf(maps)
    assert weights.std() > 0.05  # not saturated: every branch shows in the comparison
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # each attention branch matters: dropping one changes the output far beyond the tolerance above
    for name in ("channel_expand", "spatial_proj"):
        with torch.no_grad():
            saved = getattr(a, name).weight.clone()
            getattr(a, name).weight.mul_(2.0)
            assert (asf(maps) - got).abs().max() > 1e-3, name
            getattr(a, name).weight.copy_(saved)
