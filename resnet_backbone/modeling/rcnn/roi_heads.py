"""Box RoI heads: torchvision's RoIHeads (matcher, sampler, box coder), with detectron2's box head, losses and
inference rules.

Kept from torchvision (the same as detectron2's StandardROIHeads): proposal matching (IoU thresholds, no
low-quality matches), the balanced sampler, gt boxes appended to the proposals, class-specific box deltas with
BBOX_REG_WEIGHTS, and the inference order (softmax, decode per class, clip, score threshold with `>`, per-class
NMS, top DETECTIONS_PER_IMAGE). Replaced, because they differ:

- the pooler: RoIAlign with `aligned` (POOLER_TYPE "ROIAlignV2", detectron2's default; torchvision's
  MultiScaleRoIAlign has aligned=False only) and detectron2's level rule under RCNN_EDGE_RULES "detectron2"
  (floor(4 + log2(sqrt(area) / 224 + 1e-8)); torchvision adds 1e-6 after the log);
- the box head: NUM_CONV 3x3 convs (CONV_DIM, NORM) then NUM_FC fc layers (FC_DIM), detectron2's
  FastRCNNConvFCHead, built as torchvision's TwoMLPHead (fc6 / fc7) when it is 0 convs + 2 fc and as torchvision's
  FastRCNNConvFCHead otherwise (its _v2 layout), so torchvision checkpoints keep their names;
- the losses: SMOOTH_L1_BETA (0 = L1) and BBOX_REG_LOSS_TYPE (torchvision: smooth-L1 with beta 1/9, fixed) and
  BBOX_REG_LOSS_WEIGHT; the box loss is divided by the number of sampled RoIs in both libraries;
- PROPOSAL_APPEND_GT False is honoured (torchvision always appends);
- inference drops non-finite predictions (detectron2) and, under torchvision's rules only, boxes with a side
  under 1e-2 px before NMS.

With a mask branch (mask_roi_pool, mask_head, mask_predictor given: MODEL.MASK_ON), training adds `loss_mask` over
the foreground RoIs and inference adds each image's "mask_probs" (N, M, M) for its detections; mask_head.py has the
rules and FasterRCNN.postprocess pastes them into the image.

Class ids: background is class 0 here (torchvision), contiguous class c is label c + 1; detectron2 puts background
last. The converters move the rows (checkpoint/detector_converters.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as _TVRoIHeads
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import LevelMapper

from ...layers import ThreadedMultiScaleRoIAlign, get_norm
from .losses import box_regression_loss
from .mask_head import mask_loss

__all__ = ["RoIHeads", "Detectron2LevelMapper", "build_box_pooler", "build_box_head", "build_box_predictor",
           "init_box_head", "init_box_predictor"]


class Detectron2LevelMapper:
    """detectron2's assign_boxes_to_levels: level = floor(canonical_level + log2(sqrt(area) / canonical_scale +
    1e-8)), clamped to [k_min, k_max]; returns 0-based level indices."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4):
        self.k_min, self.k_max = int(k_min), int(k_max)
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def __call__(self, boxlists: list[torch.Tensor]) -> torch.Tensor:
        sizes = torch.sqrt(torch.cat([box_ops.box_area(b) for b in boxlists]))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_scale + 1e-8))
        return (levels.clamp(min=self.k_min, max=self.k_max) - self.k_min).to(torch.int64)


def build_box_pooler(in_features: list[str], strides: list[int], resolution: int, sampling_ratio: int,
                     aligned: bool, edge_rules: str) -> ThreadedMultiScaleRoIAlign:
    pooler = ThreadedMultiScaleRoIAlign(in_features, output_size=resolution, sampling_ratio=sampling_ratio,
                                        aligned=aligned)
    # The scales are known: set them instead of letting torchvision's pooler guess them once, from the first
    # batch, as 2 ** round(log2(feature_size / image_size)), which is wrong for small images padded a lot.
    pooler.scales = [1.0 / s for s in strides]
    k_min, k_max = int(math.log2(strides[0])), int(math.log2(strides[-1]))
    if edge_rules == "torchvision":
        pooler.map_levels = LevelMapper(k_min, k_max, canonical_scale=224, canonical_level=4)
    else:
        pooler.map_levels = Detectron2LevelMapper(k_min, k_max)
    return pooler


def build_box_head(in_channels: int, resolution: int, num_conv: int, conv_dim: int, num_fc: int, fc_dim: int,
                   norm: str) -> tuple[nn.Module, int]:
    """(box head, its output width), with PyTorch's default init: `init_box_head` gives it detectron2's."""
    if num_conv == 0 and num_fc == 2:
        head: nn.Module = TwoMLPHead(in_channels * resolution * resolution, fc_dim)
        out = fc_dim
    else:
        norm_layer = None if norm in ("", "none") else (lambda c: get_norm(norm, c))
        head = FastRCNNConvFCHead((in_channels, resolution, resolution), [conv_dim] * num_conv, [fc_dim] * num_fc,
                                  norm_layer=norm_layer)
        out = fc_dim if num_fc else (conv_dim if num_conv else in_channels) * resolution * resolution
    return head, out


def init_box_head(head: nn.Module) -> None:
    """detectron2's init: convs kaiming-normal fan_out, fcs kaiming-uniform a=1, biases 0."""
    for layer in head.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=1)
        else:
            continue
        if layer.bias is not None:
            nn.init.constant_(layer.bias, 0)


def build_box_predictor(in_dim: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's predictor (NUM_CLASSES + 1 scores, background 0; 4 deltas per class incl. background),
    with PyTorch's default init: `init_box_predictor` gives it detectron2's."""
    return FastRCNNPredictor(in_dim, num_classes + 1)


def init_box_predictor(predictor: FastRCNNPredictor) -> None:
    """detectron2's init: scores N(0, 0.01), deltas N(0, 0.001), biases 0."""
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.constant_(layer.bias, 0)


class RoIHeads(_TVRoIHeads):
    """RoIHeads (boxes, and masks when a mask branch is given) with the replacements listed in the module docstring.

    Extra arguments: proposal_append_gt, edge_rules, box_loss_type, smooth_l1_beta, bbox_reg_loss_weight.
    """

    def __init__(self, *args, proposal_append_gt: bool = True, edge_rules: str = "detectron2",
                 box_loss_type: str = "smooth_l1", smooth_l1_beta: float = 0.0, bbox_reg_loss_weight: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)  # mask_roi_pool / mask_head / mask_predictor: Mask R-CNN (mask_head.py)
        self.proposal_append_gt = bool(proposal_append_gt)
        self.edge_rules = edge_rules
        self.box_loss_type = box_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.bbox_reg_loss_weight = float(bbox_reg_loss_weight)

    def add_gt_proposals(self, proposals, gt_boxes):
        return super().add_gt_proposals(proposals, gt_boxes) if self.proposal_append_gt else proposals

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training")
            proposals, matched_idxs, labels, _ = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            losses = self.losses(class_logits.float(), box_regression.float(), proposals, matched_idxs, labels,
                                 targets)
            if self.has_mask():
                losses["loss_mask"] = self.mask_losses(features, proposals, matched_idxs, labels, targets,
                                                       image_shapes)
            return [], losses
        boxes, scores, labels = self.postprocess_detections(class_logits.float(), box_regression.float(), proposals,
                                                            image_shapes)
        result = [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, labels)]
        if self.has_mask():
            for r, probs in zip(result, self.mask_probabilities(features, boxes, labels, image_shapes)):
                r["mask_probs"] = probs
        return result, {}

    def _mask_logits(self, features, boxes: list[torch.Tensor], image_shapes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))).float()

    def mask_losses(self, features, proposals, matched_idxs, labels, targets, image_shapes) -> torch.Tensor:
        """loss_mask over the foreground RoIs (label > 0), targets from each image's gt "masks" (mask_head.py)."""
        fg = [torch.where(lab > 0)[0] for lab in labels]
        fg_boxes = [p[i] for p, i in zip(proposals, fg)]
        logits = self._mask_logits(features, fg_boxes, image_shapes)
        return mask_loss(logits, fg_boxes, [t["masks"] for t in targets], [lab[i] for lab, i in zip(labels, fg)],
                         [m[i] for m, i in zip(matched_idxs, fg)], self.edge_rules)

    def mask_probabilities(self, features, boxes: list[torch.Tensor], labels: list[torch.Tensor], image_shapes
                           ) -> list[torch.Tensor]:
        """Per image, the (N, M, M) sigmoid of each detection's predicted-class channel (channel 0 when the
        predictor is class-agnostic), the mask head run on the detections' boxes."""
        logits = self._mask_logits(features, boxes, image_shapes)
        labels = torch.cat(labels)
        channels = labels if logits.shape[1] > 1 else torch.zeros_like(labels)
        probs = logits[torch.arange(labels.numel(), device=logits.device), channels].sigmoid()
        return list(probs.split([int(b.shape[0]) for b in boxes]))

    def losses(self, class_logits, box_regression, proposals, matched_idxs, labels, targets) -> dict:
        gt_boxes = torch.cat([t["boxes"][m.clamp(min=0)] if t["boxes"].numel() else
                              torch.zeros((m.numel(), 4), dtype=class_logits.dtype, device=class_logits.device)
                              for t, m in zip(targets, matched_idxs)])
        labels = torch.cat(labels)
        if labels.numel() == 0:  # nothing sampled: zero losses that keep the graph (detectron2's rule)
            zero = class_logits.sum() * 0 + box_regression.sum() * 0
            return {"loss_classifier": zero, "loss_box_reg": zero}
        cls_loss = F.cross_entropy(class_logits, labels)
        fg = torch.where(labels > 0)[0]
        deltas = box_regression.reshape(labels.numel(), -1, 4)[fg, labels[fg]]
        box_loss = box_regression_loss(self.box_loss_type, self.smooth_l1_beta, self.box_coder, deltas,
                                       torch.cat(proposals)[fg], gt_boxes[fg])
        return {"loss_classifier": cls_loss,
                "loss_box_reg": box_loss / labels.numel() * self.bbox_reg_loss_weight}

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        num_classes = class_logits.shape[-1]
        per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(per_image)
        pred_scores = F.softmax(class_logits, -1).split(per_image)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, shape in zip(pred_boxes, pred_scores, image_shapes):
            valid = torch.isfinite(boxes).flatten(1).all(dim=1) & torch.isfinite(scores).all(dim=1)
            if not bool(valid.all()):
                boxes, scores = boxes[valid], scores[valid]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
            # drop background (class 0); one candidate per (proposal, class), proposal-major as both libraries
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if self.edge_rules == "torchvision":
                keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels
