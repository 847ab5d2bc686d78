"""Region proposal network: torchvision's RegionProposalNetwork, with detectron2's losses and proposal filter.

Kept from torchvision (the same as detectron2's): the anchor matcher (IoU thresholds, low-quality matches), the
balanced sampler (it draws the same torch.randperm sequence as detectron2's subsample_labels), the box coder,
per-level pre-NMS top-k and the per-level NMS. Replaced, because they differ:

- the head (`RPNHead`): any number of 3x3 convs (MODEL.RPN.CONV_DIMS; torchvision's takes one width for all);
- the losses (`RPN.losses`): SMOOTH_L1_BETA and BBOX_REG_LOSS_TYPE (torchvision: smooth-L1 with beta 1/9, fixed),
  LOSS_WEIGHT and BBOX_REG_LOSS_WEIGHT, and the normaliser MODEL.RPN.LOSS_NORMALIZER ("batch_size": detectron2's
  BATCH_SIZE_PER_IMAGE x images; "sampled": torchvision's count of sampled anchors). Regression targets are
  encoded for the positive anchors only (torchvision encodes every anchor and uses the positives);
- the proposal filter (`filter_proposals`) under MODEL.RCNN_EDGE_RULES: detectron2 ranks NMS by the logits and
  keeps sides > MIN_SIZE, torchvision ranks by sigmoid(logit) and keeps sides >= max(MIN_SIZE, 1e-3). Both drop
  proposals with a non-finite box or score (detectron2 does; torchvision does not check);
- RPN.BOUNDARY_THRESH >= 0 (detectron2's legacy option) ignores anchors that reach further outside the image;
- deltas and objectness are float32 before decoding (under autocast they arrive in bf16 / fp16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.models.detection.rpn import RPNHead as _TVRPNHead
from torchvision.ops import Conv2dNormActivation
from torchvision.ops import boxes as box_ops

from .losses import box_regression_loss

__all__ = ["RPNHead", "RPN"]


class RPNHead(_TVRPNHead):
    """torchvision's RPNHead (names `conv.{k}.0`, `cls_logits`, `bbox_pred`) with one conv per entry of
    `conv_dims` (detectron2's StandardRPNHead; -1 = that conv's input channels, i.e. the previous width)."""

    def __init__(self, in_channels: int, num_anchors: int, conv_dims: list[int] = (-1,)):
        dims = []
        for d in conv_dims:  # detectron2: -1 keeps the current width (the previous conv's, not the head's input)
            dims.append((dims[-1] if dims else in_channels) if int(d) == -1 else int(d))
        if not dims or any(d <= 0 for d in dims):
            raise ValueError(f"MODEL.RPN.CONV_DIMS = {list(conv_dims)}: give one positive width (or -1) per conv")
        super().__init__(in_channels, num_anchors, conv_depth=len(dims))
        if dims != [in_channels] * len(dims):  # other widths: rebuild the stack (torchvision's takes one width)
            widths = [in_channels, *dims]
            self.conv = nn.Sequential(*[Conv2dNormActivation(a, b, kernel_size=3, norm_layer=None)
                                        for a, b in zip(widths, widths[1:])])
            self.cls_logits = nn.Conv2d(dims[-1], num_anchors, kernel_size=1)
            self.bbox_pred = nn.Conv2d(dims[-1], num_anchors * 4, kernel_size=1)
            for layer in self.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0)


class RPN(RegionProposalNetwork):
    """RegionProposalNetwork with the losses and filter described in the module docstring.

    Extra arguments: in_features (backbone outputs it reads, in order), min_size, edge_rules ("detectron2" |
    "torchvision"), loss_normalizer ("batch_size" | "sampled"), box_loss_type, smooth_l1_beta, loss_weight,
    bbox_reg_loss_weight, bbox_reg_weights, boundary_thresh.
    """

    def __init__(self, anchor_generator, head, *, in_features: list[str], min_size: float = 0.0,
                 edge_rules: str = "detectron2", loss_normalizer: str = "batch_size", box_loss_type: str = "smooth_l1",
                 smooth_l1_beta: float = 0.0, loss_weight: float = 1.0, bbox_reg_loss_weight: float = 1.0,
                 bbox_reg_weights=(1.0, 1.0, 1.0, 1.0), boundary_thresh: float = -1, **kwargs):
        super().__init__(anchor_generator, head, **kwargs)
        self.in_features = list(in_features)
        self.box_coder = det_utils.BoxCoder(weights=tuple(float(w) for w in bbox_reg_weights))
        self.edge_rules = edge_rules
        # torchvision's floor of 1e-3 px applies under its rules only
        self.min_size = max(float(min_size), 1e-3) if edge_rules == "torchvision" else float(min_size)
        self.loss_normalizer = loss_normalizer
        self.box_loss_type = box_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.loss_weight = float(loss_weight)
        self.bbox_reg_loss_weight = float(bbox_reg_loss_weight)
        self.boundary_thresh = float(boundary_thresh)

    def forward(self, images, features: dict[str, torch.Tensor], targets=None):
        feats = [features[f] for f in self.in_features]
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        num_anchors_per_level = [int(o[0].numel()) for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        objectness, deltas = objectness.float(), deltas.float()
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            if self.boundary_thresh >= 0:  # detectron2's legacy option: ignore anchors reaching far outside
                labels = [self._ignore_outside(lab, anc, size) for lab, anc, size in
                          zip(labels, anchors, images.image_sizes)]
            losses = self.losses(objectness, deltas, labels, matched_gt_boxes, anchors)
        return boxes, losses

    def _ignore_outside(self, labels, anchors, image_size):
        h, w = image_size
        t = self.boundary_thresh
        inside = (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] < w + t) & (anchors[:, 3] < h + t)
        return torch.where(inside, labels, torch.full_like(labels, -1.0))

    def losses(self, objectness, deltas, labels, matched_gt_boxes, anchors) -> dict[str, torch.Tensor]:
        pos_masks, neg_masks = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos_masks))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg_masks))[0]])
        box_loss = box_regression_loss(self.box_loss_type, self.smooth_l1_beta, self.box_coder, deltas[pos],
                                       torch.cat(anchors)[pos], torch.cat(matched_gt_boxes)[pos])
        cls_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels)[sampled],
                                                      reduction="sum")
        if self.loss_normalizer == "sampled":
            normalizer = max(int(sampled.numel()), 1)
        else:
            normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        return {"loss_objectness": cls_loss / normalizer * self.loss_weight,
                "loss_rpn_box_reg": box_loss / normalizer * (self.loss_weight * self.bbox_reg_loss_weight)}

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)])
        top = self._get_top_n_idx(objectness, num_anchors_per_level)  # per level, on the logits
        batch = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, proposals, levels = objectness[batch, top], proposals[batch, top], levels[top]
        torchvision_rules = self.edge_rules == "torchvision"
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, shape in zip(proposals, objectness, levels, image_shapes):
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            if torchvision_rules:
                scores = torch.sigmoid(scores)
                keep = (w >= self.min_size) & (h >= self.min_size)
            else:
                keep = (w > self.min_size) & (h > self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = box_ops.batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores
