"""Box regression losses of the two-stage detector, with detectron2's BBOX_REG_LOSS_TYPE / SMOOTH_L1_BETA meaning.

    "smooth_l1"  on the encoded deltas; beta < 1e-5 is plain L1 (detectron2's default beta is 0; torchvision's
                 heads use 1/9)
    "giou" / "diou" / "ciou"  on the decoded boxes against the matched ground truth (torchvision.ops losses,
                 eps 1e-7, the formulas detectron2 uses)

Every function returns the SUM over the given boxes: the caller divides by its normaliser.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

__all__ = ["BOX_LOSS_TYPES", "box_regression_loss"]

_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss, "ciou": complete_box_iou_loss}
BOX_LOSS_TYPES = ("smooth_l1", *_IOU_LOSSES)


def box_regression_loss(kind: str, beta: float, box_coder, pred_deltas: torch.Tensor, src_boxes: torch.Tensor,
                        gt_boxes: torch.Tensor) -> torch.Tensor:
    """Summed loss of `pred_deltas` (R, 4) applied to `src_boxes` (R, 4) (anchors or proposals) against
    `gt_boxes` (R, 4), all float32."""
    if kind == "smooth_l1":
        target = box_coder.encode_single(gt_boxes, src_boxes)
        if beta < 1e-5:
            return F.l1_loss(pred_deltas, target, reduction="sum")
        return F.smooth_l1_loss(pred_deltas, target, beta=beta, reduction="sum")
    if kind in _IOU_LOSSES:
        pred_boxes = box_coder.decode_single(pred_deltas, src_boxes)
        return _IOU_LOSSES[kind](pred_boxes, gt_boxes, reduction="sum", eps=1e-7)
    raise ValueError(f"unknown box regression loss {kind!r}; choose from {', '.join(BOX_LOSS_TYPES)}")
