"""Hungarian matching between DETR's predictions and the ground truth of each image.

The cost of assigning query q to target t is
    cost_class * (-p_q(class_t)) + cost_bbox * |box_q - box_t|_1 + cost_giou * (-GIoU(box_q, box_t)),
with boxes in normalized cxcywh. The cost matrix is computed once for the whole batch (all queries against
all targets of all images), then split per image and solved with scipy's linear_sum_assignment.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

from .box_ops import box_cxcywh_to_xyxy

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """Per image, the (Q, num_targets_i) cost matrix, on the CPU."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if len(targets) != b:
            raise ValueError(f"HungarianMatcher: {b} predictions but {len(targets)} targets")
        if sum(sizes) == 0:
            return [logits.new_zeros((q, 0)).cpu() for _ in sizes]
        prob = logits.flatten(0, 1).float().softmax(-1)  # (B*Q, C+1)
        pred = boxes.flatten(0, 1).float()  # (B*Q, 4)
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(pred)
        cost = (self.cost_bbox * torch.cdist(pred, tgt_boxes, p=1)
                - self.cost_class * prob[:, tgt_ids]
                - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt_boxes)))
        cost = cost.view(b, q, -1).cpu()
        return [c[i] for i, c in enumerate(cost.split(sizes, dim=-1))]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: {"pred_logits" (B, Q, C+1), "pred_boxes" (B, Q, 4) normalized cxcywh};
        targets: per image {"labels" (T,), "boxes" (T, 4) normalized cxcywh}.

        Returns per image (query_indices, target_indices), int64, of length min(Q, T), sorted by query.
        """
        result = []
        for c in self.cost_matrices(outputs, targets):
            if c.shape[1] == 0:
                empty = torch.empty(0, dtype=torch.int64)
                result.append((empty, empty.clone()))
                continue
            if not torch.isfinite(c).all():
                raise ValueError("HungarianMatcher: the cost matrix has NaN/inf entries (non-finite predicted "
                                 "boxes or logits)")
            rows, cols = linear_sum_assignment(c.numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result
