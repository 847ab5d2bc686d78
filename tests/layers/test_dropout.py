"""layers.dropout: torch's dropout distribution (drop probability p to 2^-15, expectation kept, independent
elements) from a cheaper CPU mask, reproducible under torch.manual_seed."""
import math

import pytest
import torch
import torch.nn.functional as F

from resnet_backbone.layers import Dropout
from resnet_backbone.layers.dropout import dropout, dropout_keep_mask

N = 1 << 20


def _sigmas(observed: float, p: float, n: int) -> float:
    return abs(observed - p) / math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.01])
def test_drop_rate_in_each_lane_is_p(p):
    """Both halves of every 32-bit draw (even and odd elements) drop at p: fails if int32 random_() stopped
    being uniform on [0, 2^31), the assumption the thresholds rest on."""
    torch.manual_seed(0)
    keep, p_eff = dropout_keep_mask((N,), p)
    assert abs(p_eff - p) <= 2 ** -16 and keep.dtype == torch.bool and keep.shape == (N,)
    for lane in (keep[0::2], keep[1::2]):
        assert _sigmas(1 - lane.float().mean().item(), p_eff, lane.numel()) < 5


def test_neighbours_are_independent():
    torch.manual_seed(1)
    keep, p = dropout_keep_mask((N,), 0.5)
    k = keep.float()
    both = (k[:-1] * k[1:]).mean().item()  # P(keep, keep) of adjacent elements, within and across draws
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt(0.25 * 0.75 / N)


def test_output_scale_expectation_and_gradient():
    torch.manual_seed(2)
    x = torch.randn(257, 33, requires_grad=True)  # odd element count: the last draw is half used
    y = dropout(x, 0.25)
    kept = y != 0
    p_eff = round(0.25 * 2 ** 15) / 2 ** 15
    torch.testing.assert_close(y[kept], x[kept] / (1 - p_eff))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p_eff))
    ones = dropout(torch.ones(N), 0.3)
    assert abs(ones.mean().item() - 1.0) < 5 * math.sqrt(0.3 / 0.7 / N)


def test_reproducible_under_manual_seed_and_fresh_each_call():
    torch.manual_seed(3)
    a, b = dropout(torch.ones(1000), 0.5), dropout(torch.ones(1000), 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(torch.ones(1000), 0.5), a)
    assert not torch.equal(a, b)


def test_bf16_keeps_its_dtype():
    y = dropout(torch.ones(64, 64, dtype=torch.bfloat16), 0.1)
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, float(torch.tensor(1 / (1 - round(
        0.1 * 2 ** 15) / 2 ** 15), dtype=torch.bfloat16))}


def test_eval_and_edge_probabilities_are_torchs():
    x = torch.randn(100)
    assert dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 1.0), F.dropout(x, 1.0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5)
    # p that rounds to 0 or 1 in steps of 2^-15: torch's own dropout (the mask's int16 threshold would overflow)
    torch.manual_seed(4)
    near_one = dropout(torch.ones(10000), 1 - 1e-6)
    assert float(near_one.sum()) <= 1e6 + 1 and dropout(x, 1e-6).shape == x.shape
    with pytest.raises(ValueError, match="rounds to"):
        dropout_keep_mask((4,), 1 - 1e-6)
    m = Dropout(0.2)
    assert isinstance(m, torch.nn.Dropout) and m.p == 0.2
    m.eval()
    assert m(x) is x
