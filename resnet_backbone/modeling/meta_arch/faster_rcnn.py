"""Faster R-CNN (Ren et al. 2015) with an FPN: our backbone wired to torchvision's RPN and RoI heads.

    batched_inputs ──> normalize (PIXEL_MEAN/STD) ──> pad to backbone.size_divisibility ──> backbone
        ──> {"p2".."p6"} ──> RPN (AnchorGenerator + RPNHead + RegionProposalNetwork) ──> proposals
        ──> RoIHeads (MultiScaleRoIAlign over p2..p5, TwoMLPHead, FastRCNNPredictor) ──> detections
        ──> boxes rescaled from the resized input to the original "height" x "width"

Class ids: our data uses contiguous ids 0..K-1; torchvision's heads reserve label 0 for background, so gt
classes are shifted by +1 on the way in and predicted labels by -1 on the way out.

Config keys follow detectron2 (MODEL.ANCHOR_GENERATOR / RPN / ROI_HEADS / ROI_BOX_HEAD, TEST.*). Where
torchvision's heads behave differently from detectron2's with the same keys:

- Anchors: torchvision rounds the zero-centred cell anchors to integers (detectron2 does not); anchor
  centres sit at `i * stride` (detectron2's ANCHOR_GENERATOR.OFFSET = 0.0; other offsets are rejected).
  Strides come from the backbone's `output_shape()` (detectron2's behaviour), not from
  padded_size // feature_size as in torchvision's AnchorGenerator, which is wrong for P6 when the input is
  padded to 32 but not 64 (e.g. 800 // 13 = 61 instead of 64).
- RPN: pre-NMS top-k is per feature level, NMS is per level, post-NMS top-k per image, as in detectron2
  >= 0.2 (detectron2's old behaviour, POST_NMS_TOPK_TRAIN per batch, is not reproduced). Proposals
  smaller than max(PROPOSAL_GENERATOR.MIN_SIZE, 1e-3) pixels are dropped (torchvision's floor).
  Anchors crossing the image boundary are kept (detectron2's RPN.BOUNDARY_THRESH = -1; others rejected).
- Losses: torchvision uses smooth-L1 with beta = 1/9 for both box regressions (detectron2's default
  SMOOTH_L1_BETA = 0 is plain L1; the key is not honoured). The RPN objectness loss is the mean over the
  sampled anchors and the RPN box loss is divided by the number of sampled anchors (detectron2 divides both
  by BATCH_SIZE_PER_IMAGE * num_images); the RoI box loss is divided by the number of sampled RoIs, as in
  detectron2.
- RoIAlign: torchvision's MultiScaleRoIAlign uses `aligned=False` (detectron2's "ROIAlign"); detectron2's
  default POOLER_TYPE "ROIAlignV2" (aligned=True, half-pixel shift) is therefore not reproduced exactly.
  Level assignment uses the same canonical 224 / level 4 rule; the pooler's scales are set from the
  backbone's strides (torchvision would infer them once, from the first batch's sizes).
- RoI heads always append the gt boxes to the proposals in training (ROI_HEADS.PROPOSAL_APPEND_GT = True);
  test-time boxes under 1e-2 pixels are dropped before NMS.
- Init follows detectron2 for the box head (fc layers: kaiming-uniform a=1, bias 0; cls_score N(0, 0.01),
  bbox_pred N(0, 0.001)); the RPN head's N(0, 0.01) init is the same in both.

Module names: `backbone` (our FPN), `rpn.head.conv.0.0`, `rpn.head.cls_logits`, `rpn.head.bbox_pred`,
`roi_heads.box_head.fc6/fc7`, `roi_heads.box_predictor.cls_score/bbox_pred` (torchvision's names, so a
torchvision Faster R-CNN checkpoint's heads map by name; background is class 0 in both). A detectron2
checkpoint's heads need renaming (proposal_generator.rpn_head.objectness_logits -> rpn.head.cls_logits, ...)
and its box predictor rows moving: detectron2 puts background LAST (index K) and has K (not K+1) box deltas.

Fast paths: MODEL.CHANNELS_LAST (channels-last memory format for the whole model and the input batch).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops.poolers import LevelMapper

from ...layers import ShapeSpec, ThreadedMultiScaleRoIAlign
from ..backbone import Backbone, build_backbone
from .build import META_ARCH_REGISTRY
from .image_input import ImageInputMixin, describe_input

__all__ = ["FasterRCNN", "StrideAnchorGenerator", "build_rpn", "build_roi_heads"]


class StrideAnchorGenerator(AnchorGenerator):
    """torchvision's AnchorGenerator with each level's stride given (from the backbone's output_shape()).

    torchvision derives strides as padded_size // feature_size, which is not the real stride when a level's
    size was rounded up (P6 of an input padded to 32). Cell anchors and the grid are torchvision's.
    """

    def __init__(self, sizes, aspect_ratios, strides: list[int]):
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(self.cell_anchors):
            raise ValueError(f"{len(strides)} strides for {len(self.cell_anchors)} anchor levels")
        self.strides = [int(s) for s in strides]

    def forward(self, image_list: TVImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"anchor generator got {len(feature_maps)} feature maps, expected {len(self.strides)}")
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors] * len(image_list.image_sizes)


def _per_level(values, num_levels: int, key: str) -> list[list]:
    """detectron2's broadcast rule: one list for all levels, or one list per level."""
    values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(f"{key}: {len(values)} entries for {num_levels} feature levels (give 1 or {num_levels})")
    return values


def _require(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"{key} = {value!r} is not supported by FasterRCNN: {why}")


def _shared_channels(input_shape: dict[str, ShapeSpec], in_features: list[str], key: str, user: str) -> int:
    """The channel count of `in_features`, which must all be backbone outputs of one width (`user` shares weights)."""
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise ValueError(f"{key}: {missing} not produced by the backbone ({list(input_shape)})")
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        widths = {f: input_shape[f].channels for f in in_features}
        raise ValueError(f"{key}: {user} needs equal channels, got {widths}")
    return channels.pop()


def build_rpn(cfg, input_shape: dict[str, ShapeSpec]) -> RegionProposalNetwork:
    """torchvision RPN configured from MODEL.ANCHOR_GENERATOR / MODEL.RPN / MODEL.PROPOSAL_GENERATOR."""
    rpn_cfg, ag = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
    _require(cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN", "MODEL.PROPOSAL_GENERATOR.NAME",
             cfg.MODEL.PROPOSAL_GENERATOR.NAME, "only 'RPN'")
    _require(rpn_cfg.HEAD_NAME == "StandardRPNHead", "MODEL.RPN.HEAD_NAME", rpn_cfg.HEAD_NAME,
             "only 'StandardRPNHead'")
    _require(ag.NAME == "DefaultAnchorGenerator", "MODEL.ANCHOR_GENERATOR.NAME", ag.NAME,
             "only 'DefaultAnchorGenerator'")
    _require(float(ag.OFFSET) == 0.0, "MODEL.ANCHOR_GENERATOR.OFFSET", ag.OFFSET, "torchvision anchors use 0.0")
    _require(list(rpn_cfg.CONV_DIMS) == [-1], "MODEL.RPN.CONV_DIMS", rpn_cfg.CONV_DIMS,
             "one 3x3 conv with the input's channels ([-1])")
    _require(rpn_cfg.BOUNDARY_THRESH == -1, "MODEL.RPN.BOUNDARY_THRESH", rpn_cfg.BOUNDARY_THRESH,
             "anchors crossing the border are always kept (-1)")
    _require(list(rpn_cfg.IOU_LABELS) == [0, -1, 1], "MODEL.RPN.IOU_LABELS", rpn_cfg.IOU_LABELS, "only [0, -1, 1]")
    _require(len(rpn_cfg.IOU_THRESHOLDS) == 2, "MODEL.RPN.IOU_THRESHOLDS", rpn_cfg.IOU_THRESHOLDS,
             "give [background_below, foreground_at_or_above]")
    _require(rpn_cfg.BBOX_REG_LOSS_TYPE == "smooth_l1", "MODEL.RPN.BBOX_REG_LOSS_TYPE",
             rpn_cfg.BBOX_REG_LOSS_TYPE, "torchvision's RPN uses smooth_l1")

    in_features = list(rpn_cfg.IN_FEATURES)
    channels = _shared_channels(input_shape, in_features, "MODEL.RPN.IN_FEATURES", "the shared RPN head")
    sizes = _per_level(ag.SIZES, len(in_features), "MODEL.ANCHOR_GENERATOR.SIZES")
    ratios = _per_level(ag.ASPECT_RATIOS, len(in_features), "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
    anchor_generator = StrideAnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios),
                                             strides=[input_shape[f].stride for f in in_features])
    num_anchors = set(anchor_generator.num_anchors_per_location())
    if len(num_anchors) != 1:
        raise ValueError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors per location "
                         f"(the RPN head is shared), got {anchor_generator.num_anchors_per_location()}")
    head = RPNHead(channels, num_anchors.pop())
    bg_thresh, fg_thresh = rpn_cfg.IOU_THRESHOLDS
    rpn = RegionProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=fg_thresh,
        bg_iou_thresh=bg_thresh,
        batch_size_per_image=rpn_cfg.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rpn_cfg.POSITIVE_FRACTION,
        pre_nms_top_n={"training": rpn_cfg.PRE_NMS_TOPK_TRAIN, "testing": rpn_cfg.PRE_NMS_TOPK_TEST},
        post_nms_top_n={"training": rpn_cfg.POST_NMS_TOPK_TRAIN, "testing": rpn_cfg.POST_NMS_TOPK_TEST},
        nms_thresh=rpn_cfg.NMS_THRESH,
    )
    rpn.box_coder = det_utils.BoxCoder(weights=tuple(float(w) for w in rpn_cfg.BBOX_REG_WEIGHTS))
    rpn.min_size = max(float(cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE), 1e-3)
    rpn.in_features = in_features  # which backbone outputs feed it, in order
    return rpn


def build_roi_heads(cfg, input_shape: dict[str, ShapeSpec]) -> RoIHeads:
    """torchvision RoIHeads with a 2-FC box head, configured from MODEL.ROI_HEADS / MODEL.ROI_BOX_HEAD."""
    rh, bh = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
    _require(rh.NAME == "StandardROIHeads", "MODEL.ROI_HEADS.NAME", rh.NAME,
             "only 'StandardROIHeads' (FPN); start from configs/Base-RCNN-FPN.yaml")
    _require(bh.NAME == "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NAME", bh.NAME, "only 'FastRCNNConvFCHead'")
    _require(bh.NUM_FC == 2, "MODEL.ROI_BOX_HEAD.NUM_FC", bh.NUM_FC, "torchvision's TwoMLPHead has 2 fc layers")
    _require(bh.NUM_CONV == 0, "MODEL.ROI_BOX_HEAD.NUM_CONV", bh.NUM_CONV, "the box head has no convs")
    _require(not bh.CLS_AGNOSTIC_BBOX_REG, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", bh.CLS_AGNOSTIC_BBOX_REG,
             "torchvision regresses one box per class")
    _require(not bh.TRAIN_ON_PRED_BOXES, "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", bh.TRAIN_ON_PRED_BOXES, "")
    _require(bh.BBOX_REG_LOSS_TYPE == "smooth_l1", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", bh.BBOX_REG_LOSS_TYPE,
             "torchvision's RoI heads use smooth_l1")
    _require(bh.POOLER_TYPE in ("ROIAlign", "ROIAlignV2"), "MODEL.ROI_BOX_HEAD.POOLER_TYPE", bh.POOLER_TYPE,
             "RoIAlign only (torchvision's, aligned=False)")
    _require(rh.PROPOSAL_APPEND_GT, "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", rh.PROPOSAL_APPEND_GT,
             "torchvision always appends gt boxes to the proposals")
    _require(len(rh.IOU_THRESHOLDS) in (1, 2), "MODEL.ROI_HEADS.IOU_THRESHOLDS", rh.IOU_THRESHOLDS,
             "give [t] or [background_below, foreground_at_or_above]")
    _require(list(rh.IOU_LABELS) == ([0, 1] if len(rh.IOU_THRESHOLDS) == 1 else [0, -1, 1]),
             "MODEL.ROI_HEADS.IOU_LABELS", rh.IOU_LABELS, "background 0, (ignore -1,) foreground 1")
    if rh.NUM_CLASSES < 1:
        raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES must be >= 1, got {rh.NUM_CLASSES}")

    in_features = list(rh.IN_FEATURES)
    channels = _shared_channels(input_shape, in_features, "MODEL.ROI_HEADS.IN_FEATURES", "the RoI pooler")
    strides = [input_shape[f].stride for f in in_features]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES: levels must be finest first with doubling strides, "
                         f"got {dict(zip(in_features, strides))}")
    resolution = bh.POOLER_RESOLUTION
    # torchvision's pooler; at CPU inference it shares the RoIs out over the intra-op threads (same results)
    pooler = ThreadedMultiScaleRoIAlign(in_features, output_size=resolution,
                                        sampling_ratio=bh.POOLER_SAMPLING_RATIO)
    # The scales are known: set them instead of letting the pooler guess them once, from the first batch, as
    # 2 ** round(log2(feature_size / image_size)), which is wrong for small images padded a lot (40 px -> 64).
    pooler.scales = [1.0 / s for s in strides]
    pooler.map_levels = LevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])),
                                    canonical_scale=224, canonical_level=4)
    box_head = TwoMLPHead(channels * resolution * resolution, bh.FC_DIM)
    predictor = FastRCNNPredictor(bh.FC_DIM, rh.NUM_CLASSES + 1)  # + background at index 0
    for fc in (box_head.fc6, box_head.fc7):
        nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.constant_(fc.bias, 0)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.constant_(layer.bias, 0)
    ious = list(rh.IOU_THRESHOLDS)
    bg_thresh, fg_thresh = (ious[0], ious[0]) if len(ious) == 1 else ious
    return RoIHeads(
        pooler,
        box_head,
        predictor,
        fg_iou_thresh=fg_thresh,
        bg_iou_thresh=bg_thresh,
        batch_size_per_image=rh.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rh.POSITIVE_FRACTION,
        bbox_reg_weights=tuple(float(w) for w in bh.BBOX_REG_WEIGHTS),
        score_thresh=rh.SCORE_THRESH_TEST,
        nms_thresh=rh.NMS_THRESH_TEST,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
    )


@META_ARCH_REGISTRY.register()
class FasterRCNN(ImageInputMixin, nn.Module):
    """Two-stage detector: backbone (+FPN) -> RPN -> RoI heads. See the module docstring for details.

    Args:
        backbone: a Backbone (typically FPN); its outputs feed the RPN (`rpn.in_features`) and the RoI pooler.
        rpn: torchvision RegionProposalNetwork (see `build_rpn`); `rpn.in_features` names its input levels
            (default: every backbone output).
        roi_heads: torchvision RoIHeads whose predictor has NUM_CLASSES + 1 outputs (background = 0).
        pixel_mean, pixel_std: per-channel statistics on the 0-255 scale in `input_format` order.
        input_format: "BGR" or "RGB", the channel order images arrive in (kept for visualizers).
        channels_last: run the backbone and heads in channels-last memory format (a CPU/GPU fast path).
    """

    def __init__(self, *, backbone: Backbone, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
                 pixel_mean, pixel_std, input_format: str = "BGR", channels_last: bool = False):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.channels_last = channels_last
        self.register_pixel_stats(pixel_mean, pixel_std)
        self.num_classes = roi_heads.box_predictor.cls_score.out_features - 1
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg) -> FasterRCNN:
        _require(not cfg.MODEL.MASK_ON, "MODEL.MASK_ON", cfg.MODEL.MASK_ON, "no mask head")
        _require(not cfg.MODEL.KEYPOINT_ON, "MODEL.KEYPOINT_ON", cfg.MODEL.KEYPOINT_ON, "no keypoint head")
        _require(not cfg.MODEL.LOAD_PROPOSALS, "MODEL.LOAD_PROPOSALS", cfg.MODEL.LOAD_PROPOSALS,
                 "proposals come from the RPN")
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
        """torchvision targets from each input's Instances: boxes (N, 4) xyxy float, labels = gt_classes + 1."""
        targets = []
        for i, x in enumerate(batched_inputs):
            inst = x.get("instances")
            if inst is None or not (inst.has("gt_boxes") and inst.has("gt_classes")):
                raise ValueError(f"{describe_input(x, i)}: training needs field 'instances' "
                                 "with gt_boxes and gt_classes")
            boxes = inst.gt_boxes
            boxes = getattr(boxes, "tensor", boxes)  # detectron2's Boxes
            boxes = boxes.to(self.device, torch.float32).reshape(-1, 4)
            classes = inst.gt_classes.to(self.device, torch.int64).reshape(-1)
            if boxes.numel():
                bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
                if bad.numel():
                    j = int(bad[0])
                    raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_boxes'[{j}] = {boxes[j].tolist()} "
                                     "has non-positive width or height (xyxy expected)")
                bad = ((classes < 0) | (classes >= self.num_classes)).nonzero().flatten()
                if bad.numel():
                    j = int(bad[0])
                    raise ValueError(f"{describe_input(x, i)}: field 'instances.gt_classes'[{j}] = {int(classes[j])} "
                                     f"is outside 0..{self.num_classes - 1} (MODEL.ROI_HEADS.NUM_CLASSES)")
            targets.append({"boxes": boxes, "labels": classes + 1})
        return targets

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        """Training: dict of the four losses. Eval: one {"boxes","scores","labels"} dict per image."""
        if not isinstance(batched_inputs, (list, tuple)) or not batched_inputs:
            raise ValueError("FasterRCNN takes a non-empty list of dicts with an 'image' tensor each")
        images = self.preprocess_image(batched_inputs)
        targets = self._targets(batched_inputs) if self.training else None
        x = images.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        tv_images = TVImageList(x, [tuple(s) for s in images.image_sizes])
        rpn_features = {f: features[f] for f in getattr(self.rpn, "in_features", features.keys())}
        proposals, proposal_losses = self.rpn(tv_images, rpn_features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, tv_images.image_sizes, targets)
        if self.training:
            return {**proposal_losses, **detector_losses}
        return self.postprocess(detections, batched_inputs, images.image_sizes)

    @staticmethod
    def postprocess(detections: list[dict], batched_inputs: list[dict], image_sizes) -> list[dict]:
        """Rescale boxes from the resized input to the original image ("height", "width"), clip, shift labels."""
        results = []
        for det, x, (h, w) in zip(detections, batched_inputs, image_sizes):
            out_h, out_w = int(x.get("height", h)), int(x.get("width", w))
            scale = det["boxes"].new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
            boxes = det["boxes"] * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
            results.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"] - 1})
        return results


