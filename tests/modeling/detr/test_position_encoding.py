import math

import pytest
import torch

from resnet_backbone.modeling.detr.position_encoding import PositionEmbeddingSine


def test_shape_and_padding_does_not_shift_valid_positions():
    pe = PositionEmbeddingSine(num_pos_feats=16, normalize=True)
    alone = pe(torch.zeros(1, 5, 7, dtype=torch.bool))
    assert alone.shape == (1, 32, 5, 7)
    mask = torch.ones(1, 9, 12, dtype=torch.bool)
    mask[0, :5, :7] = False
    padded = pe(mask)
    torch.testing.assert_close(padded[..., :5, :7], alone, rtol=0, atol=1e-6)
    # padding positions have coordinate 0: sin(0) = 0, cos(0) = 1
    assert torch.all(padded[0, 0::2, 6:, 8:] == 0) and torch.all(padded[0, 1::2, 6:, 8:] == 1)


def test_values_match_the_formula():
    f, t = 8, 10000.0
    pe = PositionEmbeddingSine(num_pos_feats=f, temperature=t, normalize=True)
    out = pe(torch.zeros(1, 4, 6, dtype=torch.bool))
    eps = 1e-6
    yy, xx = 2, 3  # pixel (row 2, col 3): y = 3/4 * 2pi, x = 4/6 * 2pi
    y = 3 / (4 + eps) * 2 * math.pi
    x = 4 / (6 + eps) * 2 * math.pi
    for i in range(f):
        freq = t ** (2 * (i // 2) / f)
        fn = math.sin if i % 2 == 0 else math.cos
        assert out[0, i, yy, xx].item() == pytest.approx(fn(y / freq), abs=1e-5)
        assert out[0, f + i, yy, xx].item() == pytest.approx(fn(x / freq), abs=1e-5)


def test_unnormalized_uses_pixel_counts():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=False)
    out = pe(torch.zeros(1, 3, 3, dtype=torch.bool))
    assert out[0, 0, 2, 0].item() == pytest.approx(math.sin(3.0), abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        PositionEmbeddingSine(normalize=False, scale=1.0)
    with pytest.raises(ValueError, match="mask"):
        PositionEmbeddingSine()(torch.zeros(3, 3, dtype=torch.bool))
