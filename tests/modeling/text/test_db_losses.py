import pytest
import torch

from resnet_backbone.modeling.text.losses import DBLoss, balanced_bce_loss, dice_loss, masked_l1_loss


def _bce(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


def test_balanced_bce_mines_hardest_negatives_at_ratio():
    gt = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0])
    pred = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.1, 0.2, 0.05, 0.3, 0.4, 0.01])
    mask = torch.ones(10)
    loss = balanced_bce_loss(pred, gt, mask, neg_pos_ratio=3.0)
    # 2 positives -> the 6 hardest of 8 negatives: 0.8, 0.7, 0.4, 0.3, 0.2, 0.1
    neg = torch.tensor([0.8, 0.7, 0.4, 0.3, 0.2, 0.1])
    expected = (_bce(pred[:2], gt[:2]).sum() + _bce(neg, torch.zeros(6)).sum()) / 8
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # from logits gives the same number
    loss_l = balanced_bce_loss(torch.logit(pred), gt, mask, 3.0, from_logits=True)
    assert loss_l.item() == pytest.approx(expected.item(), rel=1e-4)


def test_balanced_bce_respects_mask_and_no_positive_case():
    gt = torch.tensor([1.0, 0, 0, 0])
    pred = torch.tensor([0.5, 0.99, 0.2, 0.3])
    mask = torch.tensor([1.0, 0, 1, 1])  # the very wrong negative is don't care
    loss = balanced_bce_loss(pred, gt, mask, 1.0)
    expected = (_bce(torch.tensor(0.5), torch.tensor(1.0)) + _bce(torch.tensor(0.3), torch.tensor(0.0))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    zero = balanced_bce_loss(pred, torch.zeros(4), torch.ones(4))
    assert zero.item() == 0.0


def test_masked_l1_and_dice():
    pred = torch.tensor([0.2, 0.8, 0.5, 0.0])
    gt = torch.tensor([0.3, 0.3, 0.5, 1.0])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert masked_l1_loss(pred, gt, mask).item() == pytest.approx((0.1 + 0.5) / 2, rel=1e-5)
    p = torch.tensor([1.0, 1.0, 0.0, 0.0])
    g = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert dice_loss(p, g, torch.ones(4)).item() == pytest.approx(1 - 2 * 1 / 4, rel=1e-5)
    assert dice_loss(g, g, torch.ones(4)).item() == pytest.approx(0.0, abs=1e-5)
    # the masked-out miss does not count
    assert dice_loss(p, g, torch.tensor([1.0, 1, 1, 0])).item() == pytest.approx(1 - 2 / 3, rel=1e-5)


def test_db_loss_weights_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    thresh = torch.rand(2, 1, 8, 8, requires_grad=True)
    prob = torch.sigmoid(logits)
    binary = torch.sigmoid(50 * (prob - thresh))
    targets = {"prob_map": (torch.rand(2, 8, 8) > 0.7).float(), "prob_mask": torch.ones(2, 8, 8),
               "thresh_map": torch.rand(2, 8, 8) * 0.4 + 0.3, "thresh_mask": (torch.rand(2, 8, 8) > 0.5).float()}
    preds = {"prob_logits": logits, "prob": prob, "thresh": thresh, "binary": binary}
    base = DBLoss(1, 1, 1)(preds, targets)
    weighted = DBLoss(1, 10, 2)(preds, targets)
    assert set(base) == {"loss_prob", "loss_thresh", "loss_binary"}
    assert weighted["loss_thresh"].item() == pytest.approx(10 * base["loss_thresh"].item(), rel=1e-6)
    assert weighted["loss_binary"].item() == pytest.approx(2 * base["loss_binary"].item(), rel=1e-6)
    sum(weighted.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert thresh.grad.abs().sum() > 0
