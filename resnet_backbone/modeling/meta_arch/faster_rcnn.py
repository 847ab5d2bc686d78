"""Faster R-CNN (Ren et al. 2015) with an FPN: our backbone wired to the RPN and RoI heads of `modeling/rcnn/`.

    batched_inputs ──> normalize (PIXEL_MEAN/STD) ──> pad to backbone.size_divisibility ──> backbone
        ──> {"p2".."p6"} ──> RPN (anchors + RPNHead + proposal filter) ──> proposals
        ──> RoIHeads (RoIAlign over p2..p5, box head, FastRCNNPredictor) ──> detections
        ──> boxes rescaled from the resized input to the original "height" x "width"

Semantics: detectron2's, key for key, under detectron2's config (configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml);
torchvision's `fasterrcnn_resnet50_fpn` / `_v2` under configs/COCO-Detection/faster_rcnn_R_50_FPN_torchvision{,_v2}
.yaml. The parts are torchvision's modules, subclassed where detectron2 computes something else (modeling/rcnn/*.py
say what and why); docs/FASTER_RCNN.md lists every key and which library each value reproduces.

Class ids: our data uses contiguous ids 0..K-1; the heads reserve label 0 for background (torchvision's layout),
so gt classes are shifted by +1 on the way in and predicted labels by -1 on the way out.

Module names: `backbone` (our FPN), `rpn.head.conv.{k}.0`, `rpn.head.cls_logits`, `rpn.head.bbox_pred`,
`roi_heads.box_head.fc6/fc7` (0 convs + 2 fc) or `roi_heads.box_head.{i}` (torchvision's FastRCNNConvFCHead),
`roi_heads.box_predictor.cls_score/bbox_pred`: torchvision's names, so its checkpoints map by name (its 91-way COCO
head aside). detectron2 checkpoints are renamed and their predictor rows moved (background last, K deltas):
checkpoint/detector_converters.py.

Losses: torchvision's names (loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg) for detectron2's
loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg.

Mask R-CNN: MODEL.MASK_ON adds the mask branch to the RoI heads (rcnn/mask_head.py; detectron2's GeneralizedRCNN
with a mask head, torchvision's maskrcnn_resnet50_fpn): training reads instances.gt_masks ((N, H, W) 0/1 in the
transformed image) and adds loss_mask; eval adds "masks", bool (N, H, W) in the original image.

Fast paths: MODEL.CHANNELS_LAST (channels-last memory format for the whole model and the input batch, in training
too, through ImageInputMixin.set_channels_last, as every detector); the inference-only ones are applied by
fast_paths.optimize_for_inference.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList as TVImageList

from ...structures import rescale_boxes
from ..backbone import Backbone, build_backbone
from ..rcnn import RPN, AnchorGenerator, RoIHeads, build_roi_heads, build_rpn
from ..rcnn.build import check_rcnn_config
from ..rcnn.mask_head import MASK_THRESHOLD, paste_masks
from .build import META_ARCH_REGISTRY
from .image_input import ImageInputMixin, box_targets, describe_input

__all__ = ["FasterRCNN", "AnchorGenerator", "build_rpn", "build_roi_heads"]


@META_ARCH_REGISTRY.register()
class FasterRCNN(ImageInputMixin, nn.Module):
    """Two-stage detector: backbone (+FPN) -> RPN -> RoI heads. See the module docstring for details.

    Args:
        backbone: a Backbone (typically FPN); its outputs feed the RPN (`rpn.in_features`) and the RoI pooler.
        rpn: the RPN (`build_rpn`); `rpn.in_features` names the backbone outputs it reads.
        roi_heads: the RoIHeads (`build_roi_heads`), whose predictor has NUM_CLASSES + 1 outputs (background = 0).
        pixel_mean, pixel_std: per-channel statistics on the 0-255 scale in `input_format` order.
        input_format: "BGR" or "RGB", the channel order images arrive in (kept for visualizers).
        channels_last: run the backbone and heads in channels-last memory format (a CPU/GPU fast path).
    """

    def __init__(self, *, backbone: Backbone, rpn: RPN, roi_heads: RoIHeads,
                 pixel_mean, pixel_std, input_format: str = "BGR", channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.register_pixel_stats(pixel_mean, pixel_std)
        self.num_classes = roi_heads.box_predictor.cls_score.out_features - 1
        self.mask_on = roi_heads.has_mask()
        self.set_channels_last(channels_last)

    @classmethod
    def from_config(cls, cfg) -> FasterRCNN:
        check_rcnn_config(cfg)  # every refused value, named, before the backbone is built
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return cls(
            backbone=backbone,
            rpn=build_rpn(cfg, shapes),
            roi_heads=build_roi_heads(cfg, shapes),
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            channels_last=cfg.MODEL.CHANNELS_LAST,
        )

    def _targets(self, batched_inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
        """torchvision targets from each input's Instances: boxes (N, 4) xyxy float, labels = gt_classes + 1
        (+ masks with MODEL.MASK_ON)."""
        targets = []
        for i, (x, (boxes, classes, inst)) in enumerate(zip(batched_inputs, box_targets(
                batched_inputs, self.device, self.num_classes, "MODEL.ROI_HEADS.NUM_CLASSES"))):
            target = {"boxes": boxes, "labels": classes + 1}
            if self.mask_on:
                target["masks"] = self._gt_masks(x, i, inst, len(boxes))
            targets.append(target)
        return targets

    def _gt_masks(self, x: dict, i: int, inst, count: int) -> torch.Tensor:
        """instances.gt_masks: (N, H, W) 0/1 in the (transformed) image's coordinates, one per gt box."""
        if not inst.has("gt_masks"):
            raise ValueError(f"{describe_input(x, i)}: MODEL.MASK_ON training needs field 'instances.gt_masks' (the "
                             "mapper gives it with MODEL.MASK_ON)")
        masks = inst.gt_masks
        masks = getattr(masks, "tensor", masks)  # detectron2's BitMasks
        size = tuple(x["image"].shape[-2:])
        if not isinstance(masks, torch.Tensor) or masks.dim() != 3 or masks.shape[0] != count \
                or tuple(masks.shape[1:]) != size:
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_masks' is {shape}; expected a "
                             f"({count}, {size[0]}, {size[1]}) tensor (one mask per gt box, the image's size)")
        return masks.to(self.device)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        """Training: dict of the four losses (+ loss_mask). Eval: one {"boxes","scores","labels"[,"masks"]} dict per
        image ("masks": bool (N, H, W) in the original image, the pasted probability >= 0.5)."""
        return self._run(batched_inputs, MASK_THRESHOLD)

    def _run(self, batched_inputs: list[dict], mask_threshold: float | None):
        """forward, with the paste threshold as an argument (None: "masks" are the pasted float probabilities,
        for comparisons with other libraries)."""
        images, x, features, targets = self.features_of(batched_inputs)
        tv_images = TVImageList(x, [tuple(s) for s in images.image_sizes])
        proposals, proposal_losses = self.rpn(tv_images, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, tv_images.image_sizes, targets)
        if self.training:
            return {**proposal_losses, **detector_losses}
        return self.postprocess(detections, batched_inputs, images.image_sizes, self.roi_heads.edge_rules,
                                mask_threshold)

    @staticmethod
    def postprocess(detections: list[dict], batched_inputs: list[dict], image_sizes, edge_rules: str = "detectron2",
                    mask_threshold: float | None = MASK_THRESHOLD) -> list[dict]:
        """Rescale boxes from the resized input to the original image ("height", "width"), clip, shift labels;
        paste the masks ("mask_probs") into the original image with the rescaled boxes (mask_head.paste_masks)."""
        results = []
        for det, x, size in zip(detections, batched_inputs, image_sizes):
            boxes, (out_h, out_w) = rescale_boxes(det["boxes"], size, x)
            result = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"] - 1}
            if "mask_probs" in det:
                result["masks"] = paste_masks(det["mask_probs"], boxes, (out_h, out_w), edge_rules, mask_threshold)
            results.append(result)
        return results


