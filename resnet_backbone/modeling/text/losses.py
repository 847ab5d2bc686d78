"""DBNet losses: balanced BCE (probability map), masked L1 (threshold map), dice (approximate binary map).

All maps are (N, H, W) or (N, 1, H, W) tensors at the same resolution; masks are 1 where a pixel counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["balanced_bce_loss", "masked_l1_loss", "dice_loss", "DBLoss"]

_EPS = 1e-6


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1)


def balanced_bce_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                      neg_pos_ratio: float = 3.0, from_logits: bool = False) -> torch.Tensor:
    """BCE over all positive pixels and the hardest `neg_pos_ratio` x #positives negative pixels.

    `pred` holds probabilities (after sigmoid), or logits with `from_logits=True` (numerically safer and
    allowed under autocast). With no positive pixel in the batch no negative is mined either and the loss
    is 0 (as in DBNet: nothing to balance against).
    """
    pred, gt, mask = _flat(pred).float(), _flat(gt).float(), _flat(mask).float()
    positive = gt * mask
    negative = (1.0 - gt) * mask
    num_pos = int(positive.sum().round().item())
    num_neg = min(int(negative.sum().round().item()), int(num_pos * neg_pos_ratio))
    if from_logits:
        loss = F.binary_cross_entropy_with_logits(pred, gt, reduction="none")
    else:
        # log() clamped like torch's binary_cross_entropy (at -100), written out so autocast accepts it.
        p = pred.clamp(0.0, 1.0)
        loss = -(gt * torch.log(p).clamp(min=-100.0) + (1.0 - gt) * torch.log1p(-p).clamp(min=-100.0))
    pos_loss = (loss * positive).sum()
    if num_neg > 0:
        neg_loss = torch.topk(loss * negative, num_neg, sorted=False).values.sum()
    else:
        neg_loss = loss.new_zeros(())
    return (pos_loss + neg_loss) / (num_pos + num_neg + _EPS)


def masked_l1_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - gt| over pixels where mask is 1 (0 when the mask is empty)."""
    pred, gt, mask = _flat(pred).float(), _flat(gt).float(), _flat(mask).float()
    return ((pred - gt).abs() * mask).sum() / (mask.sum() + _EPS)


def dice_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - 2 |P n G| / (|P| + |G|) over masked pixels."""
    pred, gt, mask = _flat(pred).float(), _flat(gt).float(), _flat(mask).float()
    inter = (pred * gt * mask).sum()
    union = (pred * mask).sum() + (gt * mask).sum() + _EPS
    return 1.0 - 2.0 * inter / union


class DBLoss(torch.nn.Module):
    """Weighted sum of the three DBNet losses, returned as named terms (the trainer sums them)."""

    def __init__(self, prob_weight: float = 1.0, thresh_weight: float = 10.0, binary_weight: float = 1.0,
                 neg_pos_ratio: float = 3.0):
        super().__init__()
        self.prob_weight = prob_weight
        self.thresh_weight = thresh_weight
        self.binary_weight = binary_weight
        self.neg_pos_ratio = neg_pos_ratio

    def forward(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """preds: "prob" (or "prob_logits"), "thresh", "binary" (N, 1, H, W);
        targets: "prob_map", "prob_mask", "thresh_map", "thresh_mask" (N, H, W)."""
        losses = {
            "loss_prob": self.prob_weight * (
                balanced_bce_loss(preds["prob_logits"], targets["prob_map"], targets["prob_mask"],
                                  self.neg_pos_ratio, from_logits=True)
                if "prob_logits" in preds else
                balanced_bce_loss(preds["prob"], targets["prob_map"], targets["prob_mask"], self.neg_pos_ratio)),
            "loss_thresh": self.thresh_weight * masked_l1_loss(
                preds["thresh"], targets["thresh_map"], targets["thresh_mask"]),
        }
        if "binary" in preds:
            losses["loss_binary"] = self.binary_weight * dice_loss(
                preds["binary"], targets["prob_map"], targets["prob_mask"])
        return losses
