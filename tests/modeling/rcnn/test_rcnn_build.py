"""rcnn.build: every value check_rcnn_config refuses names its key (one case per _require call in build.py,
which the first test reads to make sure none is left out), and the builders' RPN heads (CONV_DIMS) and box heads
(NUM_CONV / NUM_FC / NORM) come out with detectron2's widths under torchvision's module names."""
import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d

from resnet_backbone.config import get_cfg
from resnet_backbone.layers import ShapeSpec
from resnet_backbone.modeling.meta_arch.faster_rcnn import FasterRCNN
from resnet_backbone.modeling.rcnn import build, build_roi_heads, build_rpn
from resnet_backbone.modeling.rcnn.build import check_rcnn_config
from resnet_backbone.modeling.rcnn.roi_heads import build_box_pooler

SHAPES = {f"p{i}": ShapeSpec(channels=8, stride=2 ** i) for i in range(2, 7)}

# (key named in the error, overrides that break only that rule); several cases for some keys
REFUSED = [
    ("MODEL.KEYPOINT_ON", {"MODEL.KEYPOINT_ON": True}),
    ("MODEL.LOAD_PROPOSALS", {"MODEL.LOAD_PROPOSALS": True}),
    ("MODEL.RCNN_EDGE_RULES", {"MODEL.RCNN_EDGE_RULES": "mmdet"}),
    ("MODEL.PROPOSAL_GENERATOR.NAME", {"MODEL.PROPOSAL_GENERATOR.NAME": "RRPN"}),
    ("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", {"MODEL.PROPOSAL_GENERATOR.MIN_SIZE": -1.0}),
    ("MODEL.ANCHOR_GENERATOR.NAME", {"MODEL.ANCHOR_GENERATOR.NAME": "RotatedAnchorGenerator"}),
    ("MODEL.ANCHOR_GENERATOR.ANGLES", {"MODEL.ANCHOR_GENERATOR.ANGLES": [[0]]}),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", {"MODEL.ANCHOR_GENERATOR.OFFSET": 1.0}),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", {"MODEL.ANCHOR_GENERATOR.OFFSET": -0.25}),
    ("MODEL.RPN.HEAD_NAME", {"MODEL.RPN.HEAD_NAME": "OtherRPNHead"}),
    ("MODEL.RPN.IOU_THRESHOLDS", {"MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.5, 0.7]}),
    ("MODEL.RPN.IOU_LABELS", {"MODEL.RPN.IOU_LABELS": [-1, 0, 1]}),
    ("MODEL.RPN.LOSS_NORMALIZER", {"MODEL.RPN.LOSS_NORMALIZER": "mean"}),
    ("MODEL.RPN.CONV_DIMS", {"MODEL.RPN.CONV_DIMS": []}),
    ("MODEL.RPN.CONV_DIMS", {"MODEL.RPN.CONV_DIMS": [256, 0]}),
    ("MODEL.RPN.CONV_DIMS", {"MODEL.RPN.CONV_DIMS": [-2]}),
    ("MODEL.RPN.BBOX_REG_LOSS_TYPE", {"MODEL.RPN.BBOX_REG_LOSS_TYPE": "l2"}),
    ("MODEL.RPN.SMOOTH_L1_BETA", {"MODEL.RPN.SMOOTH_L1_BETA": -0.1}),
    ("MODEL.RPN.BBOX_REG_WEIGHTS", {"MODEL.RPN.BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0)}),
    ("MODEL.ROI_HEADS.NAME", {"MODEL.ROI_HEADS.NAME": "Res5ROIHeads"}),
    ("MODEL.ROI_HEADS.IOU_THRESHOLDS", {"MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.3, 0.5, 0.7]}),
    ("MODEL.ROI_HEADS.IOU_LABELS", {"MODEL.ROI_HEADS.IOU_LABELS": [0, -1, 1]}),
    ("MODEL.ROI_HEADS.IOU_LABELS", {"MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.4, 0.6]}),  # two thresholds need 3 labels
    ("MODEL.ROI_HEADS.NUM_CLASSES", {"MODEL.ROI_HEADS.NUM_CLASSES": 0}),
    ("MODEL.ROI_BOX_HEAD.NAME", {"MODEL.ROI_BOX_HEAD.NAME": "FastRCNNFCHead"}),
    ("MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC", {"MODEL.ROI_BOX_HEAD.NUM_FC": 0}),
    ("MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC", {"MODEL.ROI_BOX_HEAD.NUM_CONV": -1}),
    ("MODEL.ROI_BOX_HEAD.NORM", {"MODEL.ROI_BOX_HEAD.NUM_CONV": 2, "MODEL.ROI_BOX_HEAD.NORM": "LN"}),
    ("MODEL.ROI_BOX_HEAD.NORM", {"MODEL.ROI_BOX_HEAD.NORM": "BN"}),  # and NUM_CONV 0: nothing to normalise
    ("MODEL.ROI_BOX_HEAD.CONV_DIM", {"MODEL.ROI_BOX_HEAD.CONV_DIM": 128}),  # NUM_CONV 0: no conv to widen
    ("MODEL.ROI_BOX_HEAD.FC_DIM", {"MODEL.ROI_BOX_HEAD.NUM_CONV": 2, "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
                                   "MODEL.ROI_BOX_HEAD.FC_DIM": 512}),
    ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", {"MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIPool"}),
    ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", {"MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 0}),
    ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", {"MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": -1}),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", {"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True}),
    ("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", {"MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": True}),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", {"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "iou"}),
    ("MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", {"MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": -1.0}),
    ("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", {"MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0, 1.0)}),
    # the mask head's keys, checked with MODEL.MASK_ON (Mask R-CNN)
    ("MODEL.ROI_MASK_HEAD.NAME", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNPointRendHead"}),
    ("MODEL.ROI_MASK_HEAD.POOLER_TYPE", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIPool"}),
    ("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 0}),
    ("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", {"MODEL.MASK_ON": True,
                                                   "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": -1}),
    ("MODEL.ROI_MASK_HEAD.NUM_CONV", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.NUM_CONV": -1}),
    ("MODEL.ROI_MASK_HEAD.CONV_DIM", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.CONV_DIM": 0}),
    ("MODEL.ROI_MASK_HEAD.NORM", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.NORM": "LN"}),
    ("MODEL.ROI_MASK_HEAD.NORM", {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
                                  "MODEL.ROI_MASK_HEAD.NORM": "GN"}),  # no conv to normalise
    ("TEST.AUG.ENABLED", {"MODEL.MASK_ON": True, "TEST.AUG.ENABLED": True}),  # TTA merges boxes only
]


def _cfg(overrides=None):
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_BOX_HEAD.FC_DIM", 16])
    # set directly, not merge_from_list: some refused values have another type than the default (a 3-tuple)
    for key, value in (overrides or {}).items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def _required_keys() -> set[str]:
    """The key argument of every _require call in build.py; `f"{key_prefix}.X"` inside _check_box_loss expands
    to each prefix _check_box_loss is called with."""
    tree = ast.parse(Path(build.__file__).read_text())
    prefixes = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", "") == "_check_box_loss"}
    keys = set()
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_require"):
            continue
        key = call.args[1]
        if isinstance(key, ast.Constant):
            keys.add(key.value)
        else:
            assert isinstance(key, ast.JoinedStr), ast.dump(key)
            suffix = "".join(v.value for v in key.values if isinstance(v, ast.Constant))
            keys |= {p + suffix for p in prefixes}
    return keys


def test_every_require_call_has_a_case():
    keys = _required_keys()
    assert len(keys) >= 30
    assert keys == {k for k, _ in REFUSED}


def test_the_base_config_passes():
    check_rcnn_config(_cfg())
    for name in ("faster_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_FPN_torchvision", "faster_rcnn_R_50_FPN_torchvision_v2"):
        cfg = get_cfg()
        cfg.merge_from_file(f"configs/COCO-Detection/{name}.yaml")
        check_rcnn_config(cfg)


@pytest.mark.parametrize("key,overrides", REFUSED, ids=[f"{k}={list(o.values())[-1]}" for k, o in REFUSED])
def test_refused_value_names_its_key(key, overrides):
    cfg = _cfg(overrides)
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} = .* is not supported by FasterRCNN"):
        check_rcnn_config(cfg)
    # the builders run the same checks before building anything
    builder = build_rpn if key.startswith(("MODEL.RPN", "MODEL.ANCHOR", "MODEL.PROPOSAL")) else build_roi_heads
    with pytest.raises(ValueError, match=re.escape(key)):
        builder(cfg, SHAPES)


@pytest.mark.parametrize("key", ["MODEL.KEYPOINT_ON", "MODEL.LOAD_PROPOSALS"])
def test_meta_arch_refuses_before_building(key):
    """FasterRCNN.from_config runs the same checks (here: the heads it has not)."""
    with pytest.raises(ValueError, match=rf"^{re.escape(key)} = True is not supported"):
        FasterRCNN.from_config(_cfg({key: True}))


def test_builder_level_checks_name_their_key():
    with pytest.raises(ValueError, match=r"MODEL\.ANCHOR_GENERATOR\.ASPECT_RATIOS: 2 entries for 5 feature levels"):
        build_rpn(_cfg({"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[1.0], [0.5, 1.0]]}), SHAPES)
    with pytest.raises(ValueError, match=r"MODEL\.ANCHOR_GENERATOR: every level needs the same number of anchors"):
        build_rpn(_cfg({"MODEL.ANCHOR_GENERATOR.SIZES": [[32, 48], [64], [128], [256], [512]]}), SHAPES)
    with pytest.raises(ValueError, match=r"MODEL\.ROI_HEADS\.IN_FEATURES: levels must be finest first"):
        build_roi_heads(_cfg({"MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p4"]}), SHAPES)


# ------------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("conv_dims,widths", [([-1], [8]), ([-1, -1], [8, 8]), ([16], [16]), ([16, -1], [16, 16]),
                                              ([12, 6, -1], [12, 6, 6])])
def test_rpn_head_widths_follow_conv_dims(conv_dims, widths):
    """detectron2's StandardRPNHead rule: -1 keeps the width the previous conv produced (the input's for the
    first). Names are torchvision's (rpn.head.conv.{k}.0)."""
    rpn = build_rpn(_cfg({"MODEL.RPN.CONV_DIMS": conv_dims}), SHAPES)
    convs = [rpn.head.conv[k][0] for k in range(len(conv_dims))]
    assert [c.out_channels for c in convs] == widths
    assert [c.in_channels for c in convs] == [8, *widths[:-1]]
    assert rpn.head.cls_logits.in_channels == widths[-1] and rpn.head.cls_logits.out_channels == 3
    assert rpn.head.bbox_pred.out_channels == 12
    names = {k for k in rpn.state_dict()}
    assert names == {f"head.conv.{k}.0.{p}" for k in range(len(conv_dims)) for p in ("weight", "bias")} | {
        "head.cls_logits.weight", "head.cls_logits.bias", "head.bbox_pred.weight", "head.bbox_pred.bias"}
    out = rpn.head([torch.zeros(1, 8, 5, 6)])
    assert out[0][0].shape == (1, 3, 5, 6) and out[1][0].shape == (1, 12, 5, 6)


@pytest.mark.parametrize("num_conv,num_fc,norm", [(0, 2, ""), (0, 1, ""), (4, 1, "BN"), (2, 2, "GN"),
                                                  (1, 0, ""), (3, 1, "FrozenBN")])
def test_box_head_names_are_torchvisions(num_conv, num_fc, norm):
    """0 convs + 2 fc: torchvision's TwoMLPHead (fc6 / fc7); otherwise torchvision's FastRCNNConvFCHead:
    box_head.{i}.0 (conv) / .1 (norm), fc j at index NUM_CONV + 1 + 2j (after the Flatten)."""
    overrides = {"MODEL.ROI_BOX_HEAD.NUM_CONV": num_conv, "MODEL.ROI_BOX_HEAD.NUM_FC": num_fc,
                 "MODEL.ROI_BOX_HEAD.NORM": norm}
    if num_conv:  # a width without its layers is refused (see REFUSED)
        overrides["MODEL.ROI_BOX_HEAD.CONV_DIM"] = 32
    if not num_fc:
        overrides["MODEL.ROI_BOX_HEAD.FC_DIM"] = 1024
    heads = build_roi_heads(_cfg(overrides), SHAPES)
    ours = {k[len("box_head."):]: tuple(v.shape) for k, v in heads.state_dict().items() if k.startswith("box_head.")}
    if (num_conv, num_fc) == (0, 2):
        ref = TwoMLPHead(8 * 7 * 7, 16)
    else:
        norm_layer = {"": None, "BN": nn.BatchNorm2d, "GN": lambda c: nn.GroupNorm(32, c),
                      "FrozenBN": FrozenBatchNorm2d}[norm]
        ref = FastRCNNConvFCHead((8, 7, 7), [32] * num_conv, [16] * num_fc, norm_layer=norm_layer)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == expected
    for j in range(num_fc):
        name = f"fc{6 + j}" if (num_conv, num_fc) == (0, 2) else str(num_conv + 1 + 2 * j)
        assert f"{name}.weight" in ours
    width = 16 if num_fc else 32 * 7 * 7
    assert heads.box_predictor.cls_score.in_features == width
    assert heads.box_head(torch.zeros(2, 8, 7, 7)).shape == (2, width)


def test_pooler_from_config_follows_pooler_type_and_edge_rules():
    """POOLER_TYPE picks aligned (ROIAlignV2) or not (ROIAlign), RCNN_EDGE_RULES the level rule: each of the
    four combinations pools as build_box_pooler with those arguments (test_rcnn_pooler.py pins that function to
    torchvision and detectron2), and no two combinations pool alike on these boxes (one of them has sqrt(area)
    223.99995, on a different level under each rule)."""
    g = torch.Generator().manual_seed(0)
    feats = {f"p{i}": torch.randn(1, 8, 512 // 2 ** i, 512 // 2 ** i, generator=g) for i in range(2, 7)}
    xy = torch.rand(40, 2, generator=g) * 200
    boxes = [torch.cat([torch.cat([xy, xy + 4 + torch.rand(40, 2, generator=g) * 300], 1),
                        torch.tensor([[10.0, 10.0, 10.0 + 223.99995, 10.0 + 223.99995]])])]
    outs = {}
    for pooler_type, aligned in (("ROIAlignV2", True), ("ROIAlign", False)):
        for rules in ("detectron2", "torchvision"):
            heads = build_roi_heads(_cfg({"MODEL.ROI_BOX_HEAD.POOLER_TYPE": pooler_type, "MODEL.RCNN_EDGE_RULES": rules,
                                          "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 2}), SHAPES)
            with torch.no_grad():
                out = heads.box_roi_pool(feats, boxes, [(512, 512)])
                ref = build_box_pooler(["p2", "p3", "p4", "p5"], [4, 8, 16, 32], 7, 2, aligned=aligned,
                                       edge_rules=rules)(feats, boxes, [(512, 512)])
            assert torch.equal(out, ref)
            outs[pooler_type, rules] = out
    values = list(outs.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
