"""RetinaNet's parts from the config: detectron2's MODEL.RETINANET.* and MODEL.ANCHOR_GENERATOR.* keys with
detectron2's meaning, plus ours (MODEL.RETINANET.LOSS_NORMALIZER, MODEL.RCNN_EDGE_RULES,
MODEL.ANCHOR_GENERATOR.ROUND_CELL_ANCHORS).

Every key RetinaNet reads is read here or refused when set to a value we do not implement, with the key named
(`check_config`, which validate_cfg runs through `RetinaNet.check_config` before anything is written).
"""
from __future__ import annotations

import math

from torchvision.models.detection import _utils as det_utils

from ...layers import ShapeSpec
from ..rcnn.anchors import AnchorGenerator
from ..rcnn.build import EDGE_RULES, _per_level, _shared_channels
from ..rcnn.losses import BOX_LOSS_TYPES
from .head import HEAD_NORMS, RetinaNetHead
from .losses import LOSS_NORMALIZERS, RetinaNetLosses

__all__ = ["check_config", "check_retinanet_config", "build_anchor_generator", "build_head", "build_losses"]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_config(cfg) -> list[str]:
    """Every value RetinaNet's builders refuse, as "KEY = value is not supported by RetinaNet: why" lines (empty
    when none); the checks that need no backbone."""
    out: list[str] = []
    m = cfg.MODEL
    r, ag = m.RETINANET, m.ANCHOR_GENERATOR

    def require(ok: bool, key: str, value, why: str) -> None:
        if not ok:
            out.append(f"{key} = {value!r} is not supported by RetinaNet: {why}")

    require(not m.MASK_ON, "MODEL.MASK_ON", m.MASK_ON, "RetinaNet has no mask head")
    require(not m.KEYPOINT_ON, "MODEL.KEYPOINT_ON", m.KEYPOINT_ON, "RetinaNet has no keypoint head")
    require(not m.LOAD_PROPOSALS, "MODEL.LOAD_PROPOSALS", m.LOAD_PROPOSALS, "a one-stage detector has no proposals")
    require(m.RCNN_EDGE_RULES in EDGE_RULES, "MODEL.RCNN_EDGE_RULES", m.RCNN_EDGE_RULES,
            f"choose from {', '.join(EDGE_RULES)}")
    require(ag.NAME == "DefaultAnchorGenerator", "MODEL.ANCHOR_GENERATOR.NAME", ag.NAME,
            "only 'DefaultAnchorGenerator' (axis-aligned anchors)")
    require([list(a) if isinstance(a, (list, tuple)) else a for a in ag.ANGLES] == [[-90, 0, 90]],
            "MODEL.ANCHOR_GENERATOR.ANGLES", ag.ANGLES, "angles are for rotated anchors, not implemented")
    require(_num(ag.OFFSET) and 0.0 <= ag.OFFSET < 1.0, "MODEL.ANCHOR_GENERATOR.OFFSET", ag.OFFSET, "must be in [0, 1)")
    n_levels = len(r.IN_FEATURES)
    require(n_levels >= 1, "MODEL.RETINANET.IN_FEATURES", r.IN_FEATURES, "name at least one backbone output")
    for key, values in (("MODEL.ANCHOR_GENERATOR.SIZES", ag.SIZES), ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
                                                                     ag.ASPECT_RATIOS)):
        levels = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
        require(len(levels) in (1, n_levels), key, values,
                f"give one list (every level) or one per MODEL.RETINANET.IN_FEATURES level ({n_levels})")
        require(all(lv and all(_num(x) and x > 0 for x in lv) for lv in levels), key, values,
                "every level needs values that are finite numbers > 0")
    sizes = [len(v) if isinstance(v, (list, tuple)) else 1 for v in ag.SIZES]
    ratios = [len(v) if isinstance(v, (list, tuple)) else 1 for v in ag.ASPECT_RATIOS]
    if len(sizes) in (1, n_levels) and len(ratios) in (1, n_levels) and n_levels:
        per_level = {(sizes[i if len(sizes) > 1 else 0] * ratios[i if len(ratios) > 1 else 0]) for i in range(n_levels)}
        require(len(per_level) == 1, "MODEL.ANCHOR_GENERATOR.SIZES", ag.SIZES,
                "every level needs the same number of anchors per location (the head is shared)")
    require(isinstance(r.NUM_CLASSES, int) and r.NUM_CLASSES >= 1, "MODEL.RETINANET.NUM_CLASSES", r.NUM_CLASSES,
            "must be an integer >= 1")
    require(isinstance(r.NUM_CONVS, int) and r.NUM_CONVS >= 0, "MODEL.RETINANET.NUM_CONVS", r.NUM_CONVS,
            "must be an integer >= 0")
    ious = list(r.IOU_THRESHOLDS)
    require(len(ious) == 2 and all(_num(t) and 0 <= t <= 1 for t in ious) and ious[0] <= ious[1],
            "MODEL.RETINANET.IOU_THRESHOLDS", r.IOU_THRESHOLDS, "give [background_below, foreground_at_or_above] "
            "in [0, 1], increasing")
    require(list(r.IOU_LABELS) == [0, -1, 1], "MODEL.RETINANET.IOU_LABELS", r.IOU_LABELS,
            "only [0, -1, 1] (background, ignored, foreground)")
    require(_num(r.PRIOR_PROB) and 0 < r.PRIOR_PROB < 1, "MODEL.RETINANET.PRIOR_PROB", r.PRIOR_PROB,
            "must be in (0, 1)")
    require(_num(r.SCORE_THRESH_TEST) and 0 <= r.SCORE_THRESH_TEST < 1, "MODEL.RETINANET.SCORE_THRESH_TEST",
            r.SCORE_THRESH_TEST, "must be in [0, 1)")
    require(isinstance(r.TOPK_CANDIDATES_TEST, int) and r.TOPK_CANDIDATES_TEST >= 1,
            "MODEL.RETINANET.TOPK_CANDIDATES_TEST", r.TOPK_CANDIDATES_TEST, "must be an integer >= 1 (per level)")
    require(_num(r.NMS_THRESH_TEST) and 0 <= r.NMS_THRESH_TEST <= 1, "MODEL.RETINANET.NMS_THRESH_TEST",
            r.NMS_THRESH_TEST, "must be in [0, 1]")
    require(len(r.BBOX_REG_WEIGHTS) == 4 and all(_num(w) and w > 0 for w in r.BBOX_REG_WEIGHTS),
            "MODEL.RETINANET.BBOX_REG_WEIGHTS", r.BBOX_REG_WEIGHTS, "four finite weights > 0 (x, y, w, h)")
    require(_num(r.FOCAL_LOSS_GAMMA) and r.FOCAL_LOSS_GAMMA >= 0, "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
            r.FOCAL_LOSS_GAMMA, "must be >= 0")
    require(_num(r.FOCAL_LOSS_ALPHA) and (r.FOCAL_LOSS_ALPHA <= 1), "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
            r.FOCAL_LOSS_ALPHA, "must be in [0, 1] (or negative: no class weighting)")
    require(_num(r.SMOOTH_L1_LOSS_BETA) and r.SMOOTH_L1_LOSS_BETA >= 0, "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA",
            r.SMOOTH_L1_LOSS_BETA, "must be >= 0 (0: L1)")
    require(r.BBOX_REG_LOSS_TYPE in BOX_LOSS_TYPES, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", r.BBOX_REG_LOSS_TYPE,
            f"choose from {', '.join(BOX_LOSS_TYPES)}")
    require(r.NORM in HEAD_NORMS, "MODEL.RETINANET.NORM", r.NORM,
            f"choose from {HEAD_NORMS} (detectron2's 'BN' / 'SyncBN' are one BatchNorm per level, not implemented)")
    require(r.LOSS_NORMALIZER in LOSS_NORMALIZERS, "MODEL.RETINANET.LOSS_NORMALIZER", r.LOSS_NORMALIZER,
            f"choose from {', '.join(LOSS_NORMALIZERS)}")
    return out


def check_retinanet_config(cfg) -> None:
    """check_config as the builders use it: ValueError listing every refused value, before anything is built."""
    problems = check_config(cfg)
    if problems:
        raise ValueError("\n".join(problems))


def build_anchor_generator(cfg, input_shape: dict[str, ShapeSpec]) -> AnchorGenerator:
    """modeling/rcnn's AnchorGenerator over MODEL.RETINANET.IN_FEATURES (sizes and ratios broadcast as
    detectron2 does; strides from the backbone)."""
    ag, in_features = cfg.MODEL.ANCHOR_GENERATOR, list(cfg.MODEL.RETINANET.IN_FEATURES)
    sizes = _per_level(ag.SIZES, len(in_features), "MODEL.ANCHOR_GENERATOR.SIZES")
    ratios = _per_level(ag.ASPECT_RATIOS, len(in_features), "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS")
    return AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios),
                           strides=[input_shape[f].stride for f in in_features], offset=float(ag.OFFSET),
                           round_cell_anchors=ag.ROUND_CELL_ANCHORS)


def build_head(cfg, input_shape: dict[str, ShapeSpec], num_anchors: int) -> RetinaNetHead:
    r = cfg.MODEL.RETINANET
    channels = _shared_channels(input_shape, list(r.IN_FEATURES), "MODEL.RETINANET.IN_FEATURES",
                                "the shared RetinaNet head")
    return RetinaNetHead(channels, num_anchors, r.NUM_CLASSES, num_convs=r.NUM_CONVS, norm=r.NORM,
                         prior_probability=float(r.PRIOR_PROB))


def build_losses(cfg) -> RetinaNetLosses:
    r = cfg.MODEL.RETINANET
    return RetinaNetLosses(r.IOU_THRESHOLDS, det_utils.BoxCoder(weights=tuple(float(w) for w in r.BBOX_REG_WEIGHTS)),
                           focal_alpha=float(r.FOCAL_LOSS_ALPHA), focal_gamma=float(r.FOCAL_LOSS_GAMMA),
                           box_loss_type=r.BBOX_REG_LOSS_TYPE, smooth_l1_beta=float(r.SMOOTH_L1_LOSS_BETA),
                           normalizer=r.LOSS_NORMALIZER)
