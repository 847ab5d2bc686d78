import itertools

import pytest
import torch

from resnet_backbone.modeling.detr.matcher import HungarianMatcher


def _random_case(b, q, sizes, c=4):
    logits = torch.randn(b, q, c + 1)
    boxes = torch.rand(b, q, 4) * 0.5 + 0.1
    targets = [{"labels": torch.randint(0, c, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.1} for n in sizes]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def _brute_force(cost: torch.Tensor) -> float:
    q, t = cost.shape
    best = float("inf")
    for queries in itertools.permutations(range(q), t):  # target j -> queries[j]
        best = min(best, sum(cost[queries[j], j].item() for j in range(t)))
    return best


@pytest.mark.parametrize("sizes", [[3, 1], [5, 0], [0, 0], [2, 4]])
def test_assignment_is_the_brute_force_minimum(sizes):
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    outputs, targets = _random_case(2, 5, sizes)
    indices = matcher(outputs, targets)
    costs = matcher.cost_matrices(outputs, targets)
    for (rows, cols), cost, n in zip(indices, costs, sizes):
        assert len(rows) == len(cols) == n
        assert rows.dtype == cols.dtype == torch.int64
        assert sorted(cols.tolist()) == list(range(n))  # every target matched once
        assert len(set(rows.tolist())) == n  # no query used twice
        if n:
            got = cost[rows, cols].sum().item()
            assert got == pytest.approx(_brute_force(cost), abs=1e-5)


def test_batched_cost_equals_per_image_cost():
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2)
    outputs, targets = _random_case(3, 4, [2, 3, 1])
    batched = matcher.cost_matrices(outputs, targets)
    for i in range(3):
        single = matcher.cost_matrices({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]])[0]
        torch.testing.assert_close(batched[i], single)


def test_hand_made_case_picks_the_obvious_pairs():
    # query 2 sits exactly on target 0, query 0 on target 1; query 1 is far away and predicts no-object
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.1, 0.9, 0.05, 0.05], [0.3, 0.3, 0.2, 0.2]]])
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])}]
    rows, cols = HungarianMatcher(1, 5, 2)({"pred_logits": logits, "pred_boxes": boxes}, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_class_cost_alone_decides_when_boxes_are_equal():
    boxes = torch.full((1, 2, 4), 0.5)
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.full((2, 4), 0.5)}]
    rows, cols = HungarianMatcher(1, 1, 1)({"pred_logits": logits, "pred_boxes": boxes}, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_errors():
    with pytest.raises(ValueError, match="all costs"):
        HungarianMatcher(0, 0, 0)
    outputs, targets = _random_case(2, 3, [1])
    with pytest.raises(ValueError, match="targets"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = _random_case(1, 3, [1])
    outputs["pred_boxes"][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher()(outputs, targets)
