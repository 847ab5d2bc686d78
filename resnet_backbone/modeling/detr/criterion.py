"""DETR's set loss: match predictions to targets one-to-one, then classify and regress the matches.

- classification: cross-entropy over C+1 classes for every query; unmatched queries target the
  "no object" class (index C), whose weight is `eos_coef` (NO_OBJECT_WEIGHT);
- boxes: L1 and (1 - GIoU) on matched pairs, summed and divided by the number of target boxes in the
  whole (possibly distributed) batch, clamped to at least 1;
- auxiliary outputs (one per decoder layer but the last) get the same losses, suffixed `_0`, `_1`, ...

The returned losses are already multiplied by their weights, so a trainer sums them.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou

from .box_ops import box_cxcywh_to_xyxy
from .matcher import HungarianMatcher

__all__ = ["SetCriterion"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SetCriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: HungarianMatcher, eos_coef: float = 0.1,
                 class_weight: float = 1.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                 deep_supervision: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.weights = {"loss_ce": class_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight}
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)  # not part of a checkpoint

    def num_boxes(self, targets: list[dict], device) -> float:
        """Target boxes in the batch, averaged over processes so every rank divides by the same number."""
        n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world = _world_size()
        if world > 1:
            dist.all_reduce(n)
        return torch.clamp(n / world, min=1).item()

    def loss_labels(self, outputs, targets, indices) -> torch.Tensor:
        logits = outputs["pred_logits"]
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for i, (src, tgt) in enumerate(indices):
            target_classes[i, src.to(logits.device)] = targets[i]["labels"][tgt.to(logits.device)].long()
        return F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)

    def loss_boxes(self, outputs, targets, indices, num_boxes: float) -> tuple[torch.Tensor, torch.Tensor]:
        pred = outputs["pred_boxes"]
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(pred.device)
        query_idx = torch.cat([src for src, _ in indices]).to(pred.device)
        src_boxes = pred[batch_idx, query_idx].float()
        tgt_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, indices)])
        tgt_boxes = tgt_boxes.to(src_boxes)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)))
        loss_giou = (1 - giou).sum() / num_boxes
        return loss_bbox, loss_giou

    def _losses(self, outputs, targets, num_boxes: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        loss_bbox, loss_giou = self.loss_boxes(outputs, targets, indices, num_boxes)
        raw = {"loss_ce": self.loss_labels(outputs, targets, indices), "loss_bbox": loss_bbox,
               "loss_giou": loss_giou}
        return {k: v * self.weights[k] for k, v in raw.items()}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        """outputs: {"pred_logits", "pred_boxes", optional "aux_outputs": [{"pred_logits", "pred_boxes"}, ...]};
        targets: per image {"labels" (T,) int64 in [0, C), "boxes" (T, 4) normalized cxcywh}."""
        for i, t in enumerate(targets):
            labels = t["labels"]
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"SetCriterion: image {i} has labels outside [0, {self.num_classes}): "
                                 f"{sorted(set(labels.tolist()))}")
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes).items()})
        return losses
