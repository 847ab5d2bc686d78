"""Mask R-CNN's mask branch: torchvision's MaskRCNNHeads + MaskRCNNPredictor, with detectron2's keys, targets and
paste where detectron2 differs.

    RoIs ──> RoIAlign (MODEL.ROI_MASK_HEAD.POOLER_*: 14x14 over p2..p5, the box pooler's level rule)
        ──> NUM_CONV 3x3 convs (CONV_DIM, NORM, ReLU)          roi_heads.mask_head.{i}.0 (.1: the norm)
        ──> 2x2 stride-2 deconv (CONV_DIM) + ReLU              roi_heads.mask_predictor.conv5_mask
        ──> 1x1 conv: K + 1 channels (background 0, unused), or 1 with CLS_AGNOSTIC_MASK
                                                               roi_heads.mask_predictor.mask_fcn_logits

The modules and their names are torchvision's (its checkpoints map by name, its 91 COCO channels aside);
detectron2's MaskRCNNConvUpsampleHead computes the same layers (mask_fcn{i}, deconv, predictor with K channels:
checkpoint/detector_converters.py moves them). Init is detectron2's (convs and deconv kaiming-normal fan_out,
biases 0; predictor N(0, 0.001)).

What MODEL.RCNN_EDGE_RULES changes:

    part            "torchvision" (maskrcnn_resnet50_fpn)             "detectron2" (GeneralizedRCNN, MASK_ON)
    mask targets    gt mask RoIAligned to the RoI, aligned=False,     RoIAligned with aligned=True, sampling 0,
                    adaptive sampling, soft (0..1) targets            then binarised (>= 0.5): BitMasks.crop_and_resize
    paste           torchvision's paste_masks_in_image: the M x M     detectron2's paste: grid_sample of every pixel
                    mask padded by 1, box scaled by (M + 2) / M and    centre in the box, over the box's pixels + 1
                    cut to whole pixels, bilinear resize into it      (its CPU path; its GPU path samples the whole
                                                                      image, which reaches half a mask cell further)

Both: BCE-with-logits on the gt class's channel over the foreground RoIs (mean over RoIs x M x M; an empty set
gives a zero that keeps the graph), named `loss_mask`; at inference the mask head runs on the final detections and
the predicted class's channel goes through a sigmoid. The output keeps only `masks`, the pasted probability >= 0.5
(detectron2's threshold), as a bool (N, H, W) tensor in the original image.

Not replicated: detectron2 rasterises polygon annotations per box (PolygonMasks.crop_and_resize) where the gt
masks come as polygons; here the mapper gives bit masks (instances.gt_masks), so the targets are BitMasks'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image as _tv_paste_masks_in_image
from torchvision.ops import roi_align

from ...layers import get_norm

__all__ = ["MASK_HEAD_NAMES", "MASK_THRESHOLD", "build_mask_head", "build_mask_predictor", "init_mask_branch",
           "mask_targets", "mask_loss", "paste_masks"]

MASK_HEAD_NAMES = ("MaskRCNNConvUpsampleHead",)
MASK_THRESHOLD = 0.5  # detectron2's paste threshold: probability >= 0.5 is the mask
_PASTE_CHUNK = 32  # masks pasted at a time under torchvision's rules (its function returns float (N, 1, H, W))


def build_mask_head(in_channels: int, num_conv: int, conv_dim: int, norm: str) -> MaskRCNNHeads:
    """torchvision's MaskRCNNHeads: `num_conv` 3x3 convs of `conv_dim` (with `norm`: no conv bias), ReLU each."""
    norm_layer = None if norm in ("", "none") else (lambda c: get_norm(norm, c))
    return MaskRCNNHeads(in_channels, [conv_dim] * num_conv, 1, norm_layer=norm_layer)


def build_mask_predictor(in_channels: int, conv_dim: int, num_classes: int, cls_agnostic: bool) -> MaskRCNNPredictor:
    """torchvision's MaskRCNNPredictor: the 2x deconv (`conv_dim`) and the 1x1 logits, K + 1 channels (background
    0, as the box predictor's rows) or 1 (class-agnostic)."""
    return MaskRCNNPredictor(in_channels, conv_dim, 1 if cls_agnostic else num_classes + 1)


def init_mask_branch(head: nn.Module, predictor: MaskRCNNPredictor) -> None:
    """detectron2's init: convs and the deconv kaiming-normal fan_out (c2_msra_fill), biases 0; logits N(0, 0.001)."""
    for layer in [*head.modules(), predictor.conv5_mask]:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.constant_(predictor.mask_fcn_logits.bias, 0)


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, matched_idxs: torch.Tensor, size: int,
                 edge_rules: str) -> torch.Tensor:
    """(R, size, size) float targets: gt mask `matched_idxs[r]` of `gt_masks` (G, H, W) cropped to `boxes[r]` and
    resized (see the module docstring for the two rules)."""
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    masks = gt_masks[:, None].to(boxes.dtype)
    if edge_rules == "torchvision":
        return roi_align(masks, rois, (size, size), 1.0)[:, 0]
    return (roi_align(masks, rois, (size, size), 1.0, sampling_ratio=0, aligned=True)[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor], gt_masks: list[torch.Tensor],
              labels: list[torch.Tensor], matched_idxs: list[torch.Tensor], edge_rules: str) -> torch.Tensor:
    """BCE-with-logits of the foreground RoIs' masks (channel = their gt label, or 0 when class-agnostic) against
    `mask_targets`; the mean over every pixel of every RoI (both libraries)."""
    size = mask_logits.shape[-1]
    targets = [mask_targets(m, p, i, size, edge_rules) for m, p, i in zip(gt_masks, proposals, matched_idxs)
               if p.numel()]
    if not targets:
        return mask_logits.sum() * 0
    labels = torch.cat(labels)
    channels = labels if mask_logits.shape[1] > 1 else torch.zeros_like(labels)
    picked = mask_logits[torch.arange(labels.numel(), device=labels.device), channels]
    return F.binary_cross_entropy_with_logits(picked, torch.cat(targets))


def _detectron2_paste(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                      threshold: float | None) -> torch.Tensor:
    """detectron2's paste (its CPU path): for each box, the image pixels from floor(x0) - 1 to ceil(x1) + 1 (and y)
    sample the mask with grid_sample at their centres mapped into the box ((p + 0.5 - x0) / (x1 - x0) * 2 - 1)."""
    out = torch.zeros((len(probs), height, width), dtype=torch.bool if threshold is not None else torch.float32,
                      device=probs.device)
    for i, (prob, box) in enumerate(zip(probs, boxes)):
        x0, y0, x1, y1 = (box[k:k + 1] for k in range(4))
        left, top = (int(v) for v in torch.clamp(box[:2].floor() - 1, min=0).tolist())
        right, bottom = int(torch.clamp(box[2].ceil() + 1, max=width)), int(torch.clamp(box[3].ceil() + 1, max=height))
        if right <= left or bottom <= top:
            continue
        xs = (torch.arange(left, right, device=probs.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, device=probs.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([xs[None, :].expand(len(ys), len(xs)), ys[:, None].expand(len(ys), len(xs))], dim=2)
        region = F.grid_sample(prob[None, None].float(), grid[None], align_corners=False)[0, 0]
        out[i, top:bottom, left:right] = region >= threshold if threshold is not None else region
    return out


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], edge_rules: str,
                threshold: float | None = MASK_THRESHOLD) -> torch.Tensor:
    """(N, H, W) masks in the image of `image_size` (H, W) from (N, M, M) probabilities and their (N, 4) boxes in
    that image: bool (probability >= threshold), or the float probabilities with threshold None."""
    height, width = int(image_size[0]), int(image_size[1])
    if edge_rules != "torchvision":
        return _detectron2_paste(probs, boxes.float(), height, width, threshold)
    out = torch.zeros((len(probs), height, width), dtype=torch.bool if threshold is not None else torch.float32,
                      device=probs.device)
    for start in range(0, len(probs), _PASTE_CHUNK):
        part = slice(start, start + _PASTE_CHUNK)
        pasted = _tv_paste_masks_in_image(probs[part, None].float(), boxes[part].float(), (height, width))[:, 0]
        out[part] = pasted >= threshold if threshold is not None else pasted
    return out
