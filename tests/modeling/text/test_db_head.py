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
