import pytest
import torch

from resnet_backbone.layers import ShapeSpec
from resnet_backbone.modeling.text.db_head import DBHead

SHAPES = {f"p{i}": ShapeSpec(channels=32, stride=2 ** i) for i in range(2, 7)}


def _features(h=16, w=24):
    return {f"p{i}": torch.randn(2, 32, h // 2 ** (i - 2), w // 2 ** (i - 2)) for i in range(2, 6)}


def test_maps_at_input_resolution_and_binarization_formula():
    head = DBHead(SHAPES, ["p2", "p3", "p4", "p5"], inner_channels=8, k=50.0)
    head.train()
    out = head(_features())
    for key in ("prob_logits", "prob", "thresh", "binary"):
        assert out[key].shape == (2, 1, 64, 96), key
    torch.testing.assert_close(out["prob"], torch.sigmoid(out["prob_logits"]))
    expected = 1.0 / (1.0 + torch.exp(-50.0 * (out["prob"] - out["thresh"])))
    torch.testing.assert_close(out["binary"], expected)
    assert head.fuse(_features()).shape == (2, 32, 16, 24)  # 4 levels x 8 channels at 1/4
    head.eval()
    out = head(_features())
    assert set(out) == {"prob_logits", "prob"}  # no threshold branch at inference
    assert set(head(_features(), with_binary=True)) == {"prob_logits", "prob", "thresh", "binary"}


def test_input_checks_and_norms():
    with pytest.raises(ValueError, match="p7"):
        DBHead(SHAPES, ["p2", "p7"])
    with pytest.raises(ValueError, match="stride 4"):
        DBHead(SHAPES, ["p3", "p4"])
    for norm in ("GN", "", "FrozenBN"):
        head = DBHead(SHAPES, ["p2", "p3", "p4", "p5"], inner_channels=16, norm=norm)
        assert head(_features(), with_binary=True)["binary"].shape == (2, 1, 64, 96)


def test_asf_head_adds_only_asf_keys_and_its_maps_read_the_weighted_levels(monkeypatch):
    """DBNet++'s head: a DBNet head's state dict plus `asf.*` (same shapes), the same map shapes, and its maps read
    the ASF's output: with the attention forced to 1 the head computes what a DBNet head with the same weights
    does, with the real attention it does not."""
    torch.manual_seed(0)
    plain = DBHead(SHAPES, ["p2", "p3", "p4", "p5"], inner_channels=8)
    asf = DBHead(SHAPES, ["p2", "p3", "p4", "p5"], inner_channels=8, asf=True)
    own, extra = plain.state_dict(), asf.state_dict()
    assert sorted(k for k in extra if k not in own) == sorted(k for k in extra if k.startswith("asf."))
    assert {k: v.shape for k, v in extra.items() if k in own} == {k: v.shape for k, v in own.items()}
    assert extra["asf.conv.weight"].shape == (32, 32, 3, 3)  # ASF_CHANNELS 0: the fused channel count
    assert DBHead(SHAPES, ["p2", "p3", "p4", "p5"], inner_channels=8, asf=True,
                  asf_channels=8).state_dict()["asf.conv.weight"].shape == (8, 32, 3, 3)
    asf.load_state_dict(own, strict=False)
    plain.eval(), asf.eval()
    feats = _features()
    with torch.no_grad():
        out = asf(feats, with_binary=True)
        ref = plain(feats, with_binary=True)
        assert all(out[k].shape == ref[k].shape == (2, 1, 64, 96) for k in ref)
        assert (out["prob_logits"] - ref["prob_logits"]).abs().max() > 1e-3
        monkeypatch.setattr(asf.asf.attention, "forward", lambda s: torch.ones(s.shape[0], 4, *s.shape[-2:]))
        out = asf(feats, with_binary=True)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
