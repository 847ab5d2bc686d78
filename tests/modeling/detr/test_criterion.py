import pytest
import torch
import torch.nn.functional as F

from resnet_backbone.modeling.detr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from resnet_backbone.modeling.detr.criterion import SetCriterion
from resnet_backbone.modeling.detr.matcher import HungarianMatcher

C = 3


def _criterion(**kw):
    return SetCriterion(C, HungarianMatcher(1, 5, 2), eos_coef=0.1, **kw)


def _targets():
    return [
        {"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]


def _perfect_outputs(targets, q=5):
    logits = torch.full((len(targets), q, C + 1), -10.0)
    logits[..., C] = 10.0  # unmatched queries say "no object"
    boxes = torch.rand(len(targets), q, 4) * 0.3 + 0.2
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n] = t["boxes"]
        logits[i, torch.arange(n), t["labels"]] = 10.0
        logits[i, :n, C] = -10.0
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_box_conversions_round_trip():
    b = torch.rand(10, 4)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(b)), b)
    assert box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])).tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])


def test_perfect_predictions_give_near_zero_losses():
    targets = _targets()
    losses = _criterion(deep_supervision=False)(_perfect_outputs(targets), targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert losses["loss_bbox"].item() < 1e-6
    assert losses["loss_giou"].item() < 1e-6
    assert losses["loss_ce"].item() < 1e-6
    # and a wrong box is penalized
    outputs = _perfect_outputs(targets)
    outputs["pred_boxes"][0, 0, 0] += 0.1
    assert _criterion(deep_supervision=False)(outputs, targets)["loss_bbox"].item() == pytest.approx(
        5 * 0.1 / 3, rel=1e-4)  # L1 weight 5, normalized by the 3 target boxes


def test_loss_is_invariant_to_permuting_queries():
    targets = _targets()
    outputs = {"pred_logits": torch.randn(2, 6, C + 1), "pred_boxes": torch.rand(2, 6, 4) * 0.5 + 0.2}
    perm = torch.randperm(6)
    permuted = {k: v[:, perm] for k, v in outputs.items()}
    a = _criterion()(outputs, targets)
    b = _criterion()(permuted, targets)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_classification_uses_the_no_object_weight():
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.randn(1, 4, C + 1)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.2, 0.8, 0.1, 0.1]]])
    losses = _criterion(deep_supervision=False)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    # query 0 matches the target (identical box); the others are "no object" (class 3) with weight 0.1
    nll = -F.log_softmax(logits[0], -1)
    expected = (nll[0, 1] + 0.1 * (nll[1, 3] + nll[2, 3] + nll[3, 3])) / (1 + 3 * 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_auxiliary_losses_and_weights():
    targets = _targets()
    main = {"pred_logits": torch.randn(2, 5, C + 1), "pred_boxes": torch.rand(2, 5, 4) * 0.5 + 0.2}
    aux = [_perfect_outputs(targets), {k: v.clone() for k, v in main.items()}]
    losses = _criterion(class_weight=2.0)({**main, "aux_outputs": aux}, targets)
    assert set(losses) == {f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")}
    assert losses["loss_bbox_0"].item() < 1e-6
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(losses[k + "_1"], losses[k])
    unweighted = _criterion(class_weight=1.0)({**main, "aux_outputs": aux}, targets)
    torch.testing.assert_close(losses["loss_ce"], 2 * unweighted["loss_ce"])
    no_aux = _criterion(deep_supervision=False)({**main, "aux_outputs": aux}, targets)
    assert set(no_aux) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_images_without_targets_and_gradients():
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    logits = torch.randn(1, 3, C + 1, requires_grad=True)
    boxes = torch.rand(1, 3, 4, requires_grad=True)
    losses = _criterion()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    sum(losses.values()).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_bad_labels_are_named():
    targets = [{"labels": torch.tensor([C]), "boxes": torch.rand(1, 4)}]
    with pytest.raises(ValueError, match="labels outside"):
        _criterion()(_perfect_outputs(_targets()[:1]), targets)


def test_box_losses_divide_by_the_mean_box_count_over_processes(monkeypatch):
    """Distributed: num_boxes is all_reduce'd (summed) and divided by the world size, so every rank
    normalizes by the same number. Simulated: this rank has 3 boxes, the other rank 5 -> divide by 4."""
    import resnet_backbone.modeling.detr.criterion as criterion_module

    calls = []

    def fake_all_reduce(t):
        calls.append(t.item())
        t += 5.0

    monkeypatch.setattr(criterion_module, "_world_size", lambda: 2)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", fake_all_reduce)
    targets = _targets()
    outputs = _perfect_outputs(targets)
    outputs["pred_boxes"][0, 0, 0] += 0.1
    losses = _criterion(deep_supervision=False)(outputs, targets)
    assert calls == [3.0]
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.1 / 4, rel=1e-4)
    # a batch without boxes on every rank still divides by at least 1
    monkeypatch.setattr(criterion_module.dist, "all_reduce", lambda t: None)
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    assert _criterion().num_boxes(empty, "cpu") == 1.0
