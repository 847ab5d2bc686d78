"""RPN and RoI heads from the config: detectron2's keys with detectron2's meaning, plus ours (defaults.py).

Every key of MODEL.PROPOSAL_GENERATOR / ANCHOR_GENERATOR / RPN / ROI_HEADS / ROI_BOX_HEAD (and ROI_MASK_HEAD with
MODEL.MASK_ON) is read here or refused when set to a value we do not implement, with the key named
(docs/FASTER_RCNN.md lists them all).
"""
from __future__ import annotations

from ...layers import ShapeSpec
from ...layers.batch_norm import NORM_CHOICES
from .anchors import AnchorGenerator
from .losses import BOX_LOSS_TYPES
from .mask_head import MASK_HEAD_NAMES, build_mask_head, build_mask_predictor, init_mask_branch
from .roi_heads import (
    RoIHeads,
    build_box_head,
    build_box_pooler,
    build_box_predictor,
    init_box_head,
    init_box_predictor,
)
from .rpn import RPN, RPNHead

__all__ = ["build_rpn", "build_roi_heads", "EDGE_RULES", "check_config", "check_rcnn_config"]

EDGE_RULES = ("detectron2", "torchvision")
_LOSS_NORMALIZERS = ("batch_size", "sampled")
_POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}  # -> aligned


def _require(ok: bool, key: str, value, why: str, out: list[str]) -> None:
    if not ok:
        out.append(f"{key} = {value!r} is not supported by FasterRCNN: {why}")


def _per_level(values, num_levels: int, key: str) -> list[list]:
    """detectron2's broadcast rule: one list for all levels, or one list per level."""
    values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(f"{key}: {len(values)} entries for {num_levels} feature levels (give 1 or {num_levels})")
    return values


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


def _check_box_loss(key_prefix: str, node, out: list[str]) -> None:
    _require(node.BBOX_REG_LOSS_TYPE in BOX_LOSS_TYPES, f"{key_prefix}.BBOX_REG_LOSS_TYPE", node.BBOX_REG_LOSS_TYPE,
             f"choose from {', '.join(BOX_LOSS_TYPES)}", out)
    _require(float(node.SMOOTH_L1_BETA) >= 0, f"{key_prefix}.SMOOTH_L1_BETA", node.SMOOTH_L1_BETA, "must be >= 0", out)
    _require(len(node.BBOX_REG_WEIGHTS) == 4, f"{key_prefix}.BBOX_REG_WEIGHTS", node.BBOX_REG_WEIGHTS,
             "four weights (x, y, w, h)", out)


def check_config(cfg) -> list[str]:
    """Every value FasterRCNN's builders refuse, as "KEY = value is not supported by FasterRCNN: why" lines
    (empty when none); the checks that need no backbone. validate_cfg runs them (for MODEL.META_ARCHITECTURE
    FasterRCNN) before anything is written; the builders run them again through check_rcnn_config."""
    out: list[str] = []
    m = cfg.MODEL
    rpn, ag, rh, bh = m.RPN, m.ANCHOR_GENERATOR, m.ROI_HEADS, m.ROI_BOX_HEAD
    _require(not m.KEYPOINT_ON, "MODEL.KEYPOINT_ON", m.KEYPOINT_ON, "no keypoint head", out)
    _require(not m.LOAD_PROPOSALS, "MODEL.LOAD_PROPOSALS", m.LOAD_PROPOSALS, "proposals come from the RPN", out)
    _require(m.RCNN_EDGE_RULES in EDGE_RULES, "MODEL.RCNN_EDGE_RULES", m.RCNN_EDGE_RULES,
             f"choose from {', '.join(EDGE_RULES)}", out)
    _require(m.PROPOSAL_GENERATOR.NAME == "RPN", "MODEL.PROPOSAL_GENERATOR.NAME", m.PROPOSAL_GENERATOR.NAME,
             "only 'RPN'", out)
    _require(float(m.PROPOSAL_GENERATOR.MIN_SIZE) >= 0, "MODEL.PROPOSAL_GENERATOR.MIN_SIZE",
             m.PROPOSAL_GENERATOR.MIN_SIZE, "must be >= 0", out)
    _require(ag.NAME == "DefaultAnchorGenerator", "MODEL.ANCHOR_GENERATOR.NAME", ag.NAME,
             "only 'DefaultAnchorGenerator' (axis-aligned anchors)", out)
    _require([list(a) if isinstance(a, (list, tuple)) else a for a in ag.ANGLES] == [[-90, 0, 90]],
             "MODEL.ANCHOR_GENERATOR.ANGLES", ag.ANGLES, "angles are for rotated anchors (RRPN), not implemented", out)
    _require(0.0 <= float(ag.OFFSET) < 1.0, "MODEL.ANCHOR_GENERATOR.OFFSET", ag.OFFSET, "must be in [0, 1)", out)
    _require(rpn.HEAD_NAME == "StandardRPNHead", "MODEL.RPN.HEAD_NAME", rpn.HEAD_NAME, "only 'StandardRPNHead'", out)
    _require(len(rpn.IOU_THRESHOLDS) == 2, "MODEL.RPN.IOU_THRESHOLDS", rpn.IOU_THRESHOLDS,
             "give [background_below, foreground_at_or_above]", out)
    _require(list(rpn.IOU_LABELS) == [0, -1, 1], "MODEL.RPN.IOU_LABELS", rpn.IOU_LABELS, "only [0, -1, 1]", out)
    _require(rpn.LOSS_NORMALIZER in _LOSS_NORMALIZERS, "MODEL.RPN.LOSS_NORMALIZER", rpn.LOSS_NORMALIZER,
             f"choose from {', '.join(_LOSS_NORMALIZERS)}", out)
    _require(len(rpn.CONV_DIMS) >= 1 and all(int(d) == -1 or int(d) > 0 for d in rpn.CONV_DIMS),
             "MODEL.RPN.CONV_DIMS", rpn.CONV_DIMS, "one width per conv (-1: the previous width), at least one conv",
             out)
    _check_box_loss("MODEL.RPN", rpn, out)
    _require(rh.NAME == "StandardROIHeads", "MODEL.ROI_HEADS.NAME", rh.NAME,
             "only 'StandardROIHeads' (FPN); start from configs/Base-RCNN-FPN.yaml", out)
    _require(len(rh.IOU_THRESHOLDS) in (1, 2), "MODEL.ROI_HEADS.IOU_THRESHOLDS", rh.IOU_THRESHOLDS,
             "give [t] or [background_below, foreground_at_or_above]", out)
    _require(list(rh.IOU_LABELS) == ([0, 1] if len(rh.IOU_THRESHOLDS) == 1 else [0, -1, 1]),
             "MODEL.ROI_HEADS.IOU_LABELS", rh.IOU_LABELS, "background 0, (ignore -1,) foreground 1", out)
    _require(rh.NUM_CLASSES >= 1, "MODEL.ROI_HEADS.NUM_CLASSES", rh.NUM_CLASSES, "must be >= 1", out)
    _require(bh.NAME == "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NAME", bh.NAME, "only 'FastRCNNConvFCHead'", out)
    _require(bh.NUM_CONV >= 0 and bh.NUM_FC >= 0 and bh.NUM_CONV + bh.NUM_FC > 0, "MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC",
             (bh.NUM_CONV, bh.NUM_FC), "at least one conv or fc layer", out)
    _require(bh.NORM in NORM_CHOICES, "MODEL.ROI_BOX_HEAD.NORM", bh.NORM, f"choose from {NORM_CHOICES}", out)
    _require(bh.NUM_CONV > 0 or bh.NORM in ("", "none"), "MODEL.ROI_BOX_HEAD.NORM", bh.NORM,
             "the norm applies to the box head's convs and MODEL.ROI_BOX_HEAD.NUM_CONV is 0", out)
    _require(bh.NUM_CONV > 0 or bh.CONV_DIM == 256, "MODEL.ROI_BOX_HEAD.CONV_DIM", bh.CONV_DIM,
             "the width of the box head's convs, and MODEL.ROI_BOX_HEAD.NUM_CONV is 0", out)
    _require(bh.NUM_FC > 0 or bh.FC_DIM == 1024, "MODEL.ROI_BOX_HEAD.FC_DIM", bh.FC_DIM,
             "the width of the box head's fc layers, and MODEL.ROI_BOX_HEAD.NUM_FC is 0", out)
    _require(bh.POOLER_TYPE in _POOLER_TYPES, "MODEL.ROI_BOX_HEAD.POOLER_TYPE", bh.POOLER_TYPE,
             "ROIAlignV2 (aligned) or ROIAlign", out)
    _require(bh.POOLER_RESOLUTION >= 1, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", bh.POOLER_RESOLUTION, "must be >= 1",
             out)
    _require(bh.POOLER_SAMPLING_RATIO >= 0, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", bh.POOLER_SAMPLING_RATIO,
             "0 (adaptive) or a positive count", out)
    _require(not bh.CLS_AGNOSTIC_BBOX_REG, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", bh.CLS_AGNOSTIC_BBOX_REG,
             "the predictor regresses one box per class", out)
    _require(not bh.TRAIN_ON_PRED_BOXES, "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", bh.TRAIN_ON_PRED_BOXES,
             "not implemented", out)
    _check_box_loss("MODEL.ROI_BOX_HEAD", bh, out)
    if m.MASK_ON:  # the mask head's keys are read only with a mask head, as in detectron2
        _check_mask_head(m.ROI_MASK_HEAD, out)
        _require(not cfg.TEST.AUG.ENABLED, "TEST.AUG.ENABLED", cfg.TEST.AUG.ENABLED,
                 "test-time augmentation merges boxes only, not masks (MODEL.MASK_ON True)", out)
    return out


def _check_mask_head(mh, out: list[str]) -> None:
    _require(mh.NAME in MASK_HEAD_NAMES, "MODEL.ROI_MASK_HEAD.NAME", mh.NAME,
             f"only {', '.join(repr(n) for n in MASK_HEAD_NAMES)}", out)
    _require(mh.POOLER_TYPE in _POOLER_TYPES, "MODEL.ROI_MASK_HEAD.POOLER_TYPE", mh.POOLER_TYPE,
             "ROIAlignV2 (aligned) or ROIAlign", out)
    _require(mh.POOLER_RESOLUTION >= 1, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", mh.POOLER_RESOLUTION,
             "must be >= 1", out)
    _require(mh.POOLER_SAMPLING_RATIO >= 0, "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", mh.POOLER_SAMPLING_RATIO,
             "0 (adaptive) or a positive count", out)
    _require(mh.NUM_CONV >= 0, "MODEL.ROI_MASK_HEAD.NUM_CONV", mh.NUM_CONV, "must be >= 0", out)
    _require(mh.CONV_DIM >= 1, "MODEL.ROI_MASK_HEAD.CONV_DIM", mh.CONV_DIM, "must be >= 1", out)
    _require(mh.NORM in NORM_CHOICES, "MODEL.ROI_MASK_HEAD.NORM", mh.NORM, f"choose from {NORM_CHOICES}", out)
    _require(mh.NUM_CONV > 0 or mh.NORM in ("", "none"), "MODEL.ROI_MASK_HEAD.NORM", mh.NORM,
             "the norm applies to the mask head's convs and MODEL.ROI_MASK_HEAD.NUM_CONV is 0", out)


def check_rcnn_config(cfg) -> None:
    """check_config as the builders use it: ValueError listing every refused value (the first line names the key of
    the first), before anything is built."""
    problems = check_config(cfg)
    if problems:
        raise ValueError("\n".join(problems))


def build_rpn(cfg, input_shape: dict[str, ShapeSpec]) -> RPN:
    """The RPN from MODEL.ANCHOR_GENERATOR / MODEL.RPN / MODEL.PROPOSAL_GENERATOR."""
    check_rcnn_config(cfg)
    rpn_cfg, ag = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
    in_features = list(rpn_cfg.IN_FEATURES)
    channels = _shared_channels(input_shape, in_features, "MODEL.RPN.IN_FEATURES", "the shared RPN head")
    sizes = _per_level(ag.SIZES, len(in_features), "MODEL.ANCHOR_GENERATOR.SIZES")
    ratios = _per_level(ag.ASPECT_RATIOS, len(in_features), "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
    anchor_generator = AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios),
                                       strides=[input_shape[f].stride for f in in_features], offset=float(ag.OFFSET),
                                       round_cell_anchors=ag.ROUND_CELL_ANCHORS)
    num_anchors = set(anchor_generator.num_anchors_per_location())
    if len(num_anchors) != 1:
        raise ValueError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors per location "
                         f"(the RPN head is shared), got {anchor_generator.num_anchors_per_location()}")
    bg_thresh, fg_thresh = rpn_cfg.IOU_THRESHOLDS
    return RPN(
        anchor_generator,
        RPNHead(channels, num_anchors.pop(), conv_dims=[int(d) for d in rpn_cfg.CONV_DIMS]),
        in_features=in_features,
        min_size=float(cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE),
        edge_rules=cfg.MODEL.RCNN_EDGE_RULES,
        loss_normalizer=rpn_cfg.LOSS_NORMALIZER,
        box_loss_type=rpn_cfg.BBOX_REG_LOSS_TYPE,
        smooth_l1_beta=float(rpn_cfg.SMOOTH_L1_BETA),
        loss_weight=float(rpn_cfg.LOSS_WEIGHT),
        bbox_reg_loss_weight=float(rpn_cfg.BBOX_REG_LOSS_WEIGHT),
        bbox_reg_weights=tuple(float(w) for w in rpn_cfg.BBOX_REG_WEIGHTS),
        boundary_thresh=float(rpn_cfg.BOUNDARY_THRESH),
        fg_iou_thresh=fg_thresh,
        bg_iou_thresh=bg_thresh,
        batch_size_per_image=rpn_cfg.BATCH_SIZE_PER_IMAGE,
        positive_fraction=rpn_cfg.POSITIVE_FRACTION,
        pre_nms_top_n={"training": rpn_cfg.PRE_NMS_TOPK_TRAIN, "testing": rpn_cfg.PRE_NMS_TOPK_TEST},
        post_nms_top_n={"training": rpn_cfg.POST_NMS_TOPK_TRAIN, "testing": rpn_cfg.POST_NMS_TOPK_TEST},
        nms_thresh=rpn_cfg.NMS_THRESH,
    )


def build_roi_heads(cfg, input_shape: dict[str, ShapeSpec]) -> RoIHeads:
    """RoI heads from MODEL.ROI_HEADS / MODEL.ROI_BOX_HEAD (and TEST.DETECTIONS_PER_IMAGE), with the mask branch
    from MODEL.ROI_MASK_HEAD when MODEL.MASK_ON."""
    check_rcnn_config(cfg)
    rh, bh = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
    in_features = list(rh.IN_FEATURES)
    channels = _shared_channels(input_shape, in_features, "MODEL.ROI_HEADS.IN_FEATURES", "the RoI pooler")
    strides = [input_shape[f].stride for f in in_features]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES: levels must be finest first with doubling strides, "
                         f"got {dict(zip(in_features, strides))}")
    resolution = bh.POOLER_RESOLUTION
    pooler = build_box_pooler(in_features, strides, resolution, bh.POOLER_SAMPLING_RATIO,
                              aligned=_POOLER_TYPES[bh.POOLER_TYPE], edge_rules=cfg.MODEL.RCNN_EDGE_RULES)
    box_head, out_dim = build_box_head(channels, resolution, bh.NUM_CONV, bh.CONV_DIM, bh.NUM_FC, bh.FC_DIM, bh.NORM)
    predictor = build_box_predictor(out_dim, rh.NUM_CLASSES)
    # both built before either is initialised: the order in which the seeded init draws its random numbers,
    # kept from the first release so that seeded runs (the README's measured demo) reproduce
    init_box_head(box_head)
    init_box_predictor(predictor)
    # the mask branch after the box head's init: without MASK_ON nothing else draws a random number
    mask = _build_mask_branch(cfg, in_features, strides, channels) if cfg.MODEL.MASK_ON else {}
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
        proposal_append_gt=rh.PROPOSAL_APPEND_GT,
        edge_rules=cfg.MODEL.RCNN_EDGE_RULES,
        box_loss_type=bh.BBOX_REG_LOSS_TYPE,
        smooth_l1_beta=float(bh.SMOOTH_L1_BETA),
        bbox_reg_loss_weight=float(bh.BBOX_REG_LOSS_WEIGHT),
        **mask,
    )


def _build_mask_branch(cfg, in_features: list[str], strides: list[int], channels: int) -> dict:
    """mask_roi_pool / mask_head / mask_predictor from MODEL.ROI_MASK_HEAD (mask_head.py), detectron2's init."""
    mh = cfg.MODEL.ROI_MASK_HEAD
    pooler = build_box_pooler(in_features, strides, mh.POOLER_RESOLUTION, mh.POOLER_SAMPLING_RATIO,
                              aligned=_POOLER_TYPES[mh.POOLER_TYPE], edge_rules=cfg.MODEL.RCNN_EDGE_RULES)
    head = build_mask_head(channels, mh.NUM_CONV, mh.CONV_DIM, mh.NORM)
    predictor = build_mask_predictor(mh.CONV_DIM if mh.NUM_CONV else channels, mh.CONV_DIM,
                                     cfg.MODEL.ROI_HEADS.NUM_CLASSES, mh.CLS_AGNOSTIC_MASK)
    init_mask_branch(head, predictor)
    return {"mask_roi_pool": pooler, "mask_head": head, "mask_predictor": predictor}
