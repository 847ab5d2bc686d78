"""RetinaNet's anchor labels and losses: torchvision's matcher and focal loss, both libraries' normalisers.

Kept (the same in both libraries): the anchor matcher (torchvision's Matcher: IoU below IOU_THRESHOLDS[0]
background, at or above IOU_THRESHOLDS[1] foreground, between ignored; each ground-truth box also claims the
anchors it overlaps most, `allow_low_quality_matches`), the sigmoid focal loss (torchvision.ops.sigmoid_focal_loss,
FOCAL_LOSS_ALPHA / GAMMA) summed over the anchors that are not ignored, with one-hot targets over the K classes
(background: all zeros), and the box loss summed over the foreground anchors (modeling/rcnn/losses.py:
SMOOTH_L1_LOSS_BETA, 0 = L1, which is torchvision's; BBOX_REG_LOSS_TYPE giou / diou / ciou). What the sums are
divided by is MODEL.RETINANET.LOSS_NORMALIZER:

    "ema"        detectron2: n = 0.9 n + 0.1 max(1, positive anchors of the batch), n starting at 100, updated on
                 every training forward; both sums over the batch divided by n
    "per_image"  torchvision: each image's sums divided by max(1, its positive anchors), averaged over the images

The EMA is a plain attribute, as detectron2's: it is not saved in checkpoints, and a resumed run starts it again.
"""
from __future__ import annotations

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

from ..rcnn.losses import box_regression_loss

__all__ = ["RetinaNetLosses", "LOSS_NORMALIZERS"]

LOSS_NORMALIZERS = ("ema", "per_image")


class RetinaNetLosses:
    """Labels anchors and computes {"loss_cls", "loss_box_reg"} (detectron2's names).

    Args:
        iou_thresholds: (background_below, foreground_at_or_above).
        box_coder: torchvision's BoxCoder with BBOX_REG_WEIGHTS.
        focal_alpha, focal_gamma: sigmoid_focal_loss's alpha (< 0: no weighting) and gamma.
        box_loss_type, smooth_l1_beta: modeling/rcnn/losses.py's box_regression_loss arguments.
        normalizer: "ema" or "per_image" (module docstring).
    """

    ema_initial, ema_momentum = 100.0, 0.9  # detectron2's RetinaNet

    def __init__(self, iou_thresholds, box_coder: det_utils.BoxCoder, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, box_loss_type: str = "smooth_l1", smooth_l1_beta: float = 0.1,
                 normalizer: str = "ema"):
        if normalizer not in LOSS_NORMALIZERS:
            raise ValueError(f"MODEL.RETINANET.LOSS_NORMALIZER = {normalizer!r}: choose from "
                             f"{', '.join(LOSS_NORMALIZERS)}")
        bg, fg = (float(t) for t in iou_thresholds)
        self.matcher = det_utils.Matcher(fg, bg, allow_low_quality_matches=True)
        self.box_coder = box_coder
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_loss_type, self.smooth_l1_beta = box_loss_type, float(smooth_l1_beta)
        self.normalizer = normalizer
        self.loss_normalizer = self.ema_initial

    def match(self, anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """Per anchor: the index of its ground-truth box, -1 background, -2 ignored."""
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        return self.matcher(box_ops.box_iou(gt_boxes, anchors))

    def __call__(self, cls_logits: torch.Tensor, deltas: torch.Tensor, anchors: list[torch.Tensor],
                 targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """cls_logits (N, R, K), deltas (N, R, 4), anchors: N x (R, 4); targets: "boxes" (M, 4), "labels" (M,)
        in 0..K-1."""
        cls_sums, box_sums, positives = [], [], []
        for logits, pred, anc, t in zip(cls_logits.float(), deltas.float(), anchors, targets):
            matched = self.match(anc, t["boxes"])
            fg = torch.where(matched >= 0)[0]
            valid = matched != self.matcher.BETWEEN_THRESHOLDS
            target = torch.zeros_like(logits)
            target[fg, t["labels"][matched[fg]]] = 1.0
            cls_sums.append(sigmoid_focal_loss(logits[valid], target[valid], alpha=self.focal_alpha,
                                               gamma=self.focal_gamma, reduction="sum"))
            box_sums.append(box_regression_loss(self.box_loss_type, self.smooth_l1_beta, self.box_coder, pred[fg],
                                                anc[fg], t["boxes"][matched[fg]]))
            positives.append(int(fg.numel()))
        if self.normalizer == "per_image":
            n = len(targets)
            return {"loss_cls": sum(c / max(1, p) for c, p in zip(cls_sums, positives)) / n,
                    "loss_box_reg": sum(b / max(1, p) for b, p in zip(box_sums, positives)) / n}
        self.loss_normalizer = (self.ema_momentum * self.loss_normalizer
                                + (1 - self.ema_momentum) * max(1, sum(positives)))
        return {"loss_cls": sum(cls_sums) / self.loss_normalizer,
                "loss_box_reg": sum(box_sums) / self.loss_normalizer}
