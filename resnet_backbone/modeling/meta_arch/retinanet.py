"""RetinaNet (Lin et al. 2017): our ResNet-FPN (P3-P7) wired to the head, anchors and losses of
`modeling/retinanet/`.

    batched_inputs ──> normalize (PIXEL_MEAN/STD) ──> pad to backbone.size_divisibility ──> backbone
        ──> {"p3".."p7"} ──> RetinaNetHead (class logits A x K, box deltas A x 4 per cell) + anchors
        ──> training: anchor labels (IoU matcher), focal loss + box loss ──> {"loss_cls", "loss_box_reg"}
        ──> eval: per-level top-k, per-class NMS ──> boxes rescaled to the original "height" x "width"

Semantics: detectron2's RetinaNet, key for key, under configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml;
torchvision's `retinanet_resnet50_fpn` under configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml. What
differs between them is a key each: MODEL.FPN.TOP_BLOCK_IN_FEATURE (P6 from res5 / p5), the anchor sizes and
MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS, MODEL.RETINANET.LOSS_NORMALIZER (ema / per_image),
MODEL.RETINANET.SMOOTH_L1_LOSS_BETA (torchvision: 0, L1), TEST.DETECTIONS_PER_IMAGE (100 / 300) and
MODEL.RCNN_EDGE_RULES (where boxes are clipped; retinanet/postprocess.py).

Class ids: contiguous 0..K-1 in and out; the head has K sigmoid outputs per anchor, no background (both libraries'
layout; torchvision's COCO files have 91, reduced to 80 by checkpoint/retinanet_converter.py).

Module names: `backbone` (our FPN, `top_block.p6` / `p7`), `head.classification_head.conv.{i}.0`, `.cls_logits`,
`head.regression_head.conv.{i}.0`, `.bbox_reg`: torchvision's.

Losses: detectron2's names, `loss_cls` and `loss_box_reg` (torchvision's `classification` / `bbox_regression`):
the Trainer logs the terms whose names start with "loss", as detectron2's tools do.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList as TVImageList

from ..backbone import Backbone, build_backbone
from ..rcnn.anchors import AnchorGenerator
from ..retinanet import (
    RetinaNetHead,
    RetinaNetLosses,
    build_anchor_generator,
    build_head,
    build_losses,
    decode_detections,
    rescale_detections,
)
from ..retinanet.build import check_config, check_retinanet_config
from .build import META_ARCH_REGISTRY
from .image_input import ImageInputMixin, box_targets

__all__ = ["RetinaNet"]


@META_ARCH_REGISTRY.register()
class RetinaNet(ImageInputMixin, nn.Module):
    """One-stage detector: backbone (FPN P3-P7) -> RetinaNetHead over `in_features`. See the module docstring.

    Args:
        backbone: a Backbone producing `in_features` (all of one width).
        head: the RetinaNetHead (`build_head`).
        anchor_generator: modeling/rcnn's AnchorGenerator, one level per entry of `in_features`.
        losses: RetinaNetLosses (matcher, focal and box losses, normaliser).
        in_features: the backbone outputs the head reads, finest first.
        score_thresh, topk_candidates, nms_thresh, detections_per_image: inference (retinanet/postprocess.py).
        edge_rules: "detectron2" | "torchvision" (MODEL.RCNN_EDGE_RULES: where boxes are clipped).
        pixel_mean, pixel_std, input_format, channels_last: as FasterRCNN's.
    """

    def __init__(self, *, backbone: Backbone, head: RetinaNetHead, anchor_generator: AnchorGenerator,
                 losses: RetinaNetLosses, in_features: list[str], score_thresh: float = 0.05,
                 topk_candidates: int = 1000, nms_thresh: float = 0.5, detections_per_image: int = 100,
                 edge_rules: str = "detectron2", pixel_mean, pixel_std, input_format: str = "BGR",
                 channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.losses = losses
        self.in_features = list(in_features)
        self.score_thresh, self.topk_candidates = float(score_thresh), int(topk_candidates)
        self.nms_thresh, self.detections_per_image = float(nms_thresh), int(detections_per_image)
        self.edge_rules = edge_rules
        self.input_format = input_format
        self.register_pixel_stats(pixel_mean, pixel_std)
        self.num_classes = head.classification_head.num_classes
        self.num_anchors = head.classification_head.num_anchors
        self.set_channels_last(channels_last)

    @classmethod
    def check_config(cls, cfg) -> list[str]:
        """What the builders refuse (modeling/retinanet/build.py), for validate_cfg."""
        return check_config(cfg)

    @classmethod
    def from_config(cls, cfg) -> RetinaNet:
        check_retinanet_config(cfg)  # every refused value, named, before the backbone is built
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        r = cfg.MODEL.RETINANET
        missing = [f for f in r.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.RETINANET.IN_FEATURES: {missing} not produced by the backbone "
                             f"({cfg.MODEL.BACKBONE.NAME}: {list(shapes)})")
        anchor_generator = build_anchor_generator(cfg, shapes)
        num_anchors = set(anchor_generator.num_anchors_per_location())
        if len(num_anchors) != 1:
            raise ValueError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors per location "
                             f"(the head is shared), got {anchor_generator.num_anchors_per_location()}")
        return cls(
            backbone=backbone,
            head=build_head(cfg, shapes, num_anchors.pop()),
            anchor_generator=anchor_generator,
            losses=build_losses(cfg),
            in_features=list(r.IN_FEATURES),
            score_thresh=r.SCORE_THRESH_TEST,
            topk_candidates=r.TOPK_CANDIDATES_TEST,
            nms_thresh=r.NMS_THRESH_TEST,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            edge_rules=cfg.MODEL.RCNN_EDGE_RULES,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            channels_last=cfg.MODEL.CHANNELS_LAST,
        )

    def _targets(self, batched_inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Each input's Instances as {"boxes": (M, 4) xyxy float, "labels": gt_classes in 0..K-1}."""
        return [{"boxes": boxes, "labels": classes} for boxes, classes, _ in
                box_targets(batched_inputs, self.device, self.num_classes, "MODEL.RETINANET.NUM_CLASSES")]

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_cls", "loss_box_reg"}. Eval: one {"boxes", "scores", "labels"} dict per image."""
        images, x, features, targets = self.features_of(batched_inputs)
        feats = [features[f] for f in self.in_features]
        out = self.head(feats)
        anchors = self.anchor_generator(TVImageList(x, [tuple(s) for s in images.image_sizes]), feats)
        if self.training:
            return self.losses(out["cls_logits"], out["bbox_regression"], anchors, targets)
        per_level = [int(f.shape[-2] * f.shape[-1]) * self.num_anchors for f in feats]
        detections = decode_detections(
            out["cls_logits"], out["bbox_regression"], anchors, per_level, images.image_sizes,
            self.losses.box_coder, score_thresh=self.score_thresh, topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh, detections_per_image=self.detections_per_image,
            clip_before_nms=self.edge_rules == "torchvision")
        return rescale_detections(detections, batched_inputs, images.image_sizes,
                                  drop_empty=self.edge_rules == "detectron2")
