"""Whole Faster R-CNN files from detectron2 and torchvision -> our FasterRCNN's names (every tensor, heads included).

Our FasterRCNN's state-dict names (meta_arch/faster_rcnn.py, modeling/rcnn/) and where each comes from
(detectron2: GeneralizedRCNN with an FPN; torchvision: fasterrcnn_resnet50_fpn / _v2):

    ours                                 detectron2                              torchvision
    backbone.bottom_up.*                 backbone.bottom_up.* (same)             backbone.body.* (converters' table)
    backbone.fpn_lateral{n}.*            backbone.fpn_lateral{n}.* (same)        backbone.fpn.inner_blocks.{n-2}.0.*
    backbone.fpn_lateral{n}.norm.*       backbone.fpn_lateral{n}.norm.*          backbone.fpn.inner_blocks.{n-2}.1.*
    backbone.fpn_output{n}.*[.norm.*]    backbone.fpn_output{n}.*[.norm.*]       backbone.fpn.layer_blocks.{n-2}.{0,1}.*
                                                                                 (old files: ...blocks.{n-2}.weight)
    rpn.head.conv.{k}.0.*                proposal_generator.rpn_head.conv.*      rpn.head.conv.{k}.0.*
                                           (one conv) / .conv.conv{k}.*            (old files: rpn.head.conv.*)
    rpn.head.cls_logits.*                ...rpn_head.objectness_logits.*         rpn.head.cls_logits.*
    rpn.head.bbox_pred.*                 ...rpn_head.anchor_deltas.*             rpn.head.bbox_pred.*
    roi_heads.box_head.fc6 / fc7.*       roi_heads.box_head.fc1 / fc2.*          roi_heads.box_head.fc6 / fc7.*
      (0 convs + 2 fc)
    roi_heads.box_head.{i}.0.*, .1.*     roi_heads.box_head.conv{i+1}.*, .norm.* roi_heads.box_head.{i}.0.*, .1.*
    roi_heads.box_head.{C+1+2j}.*        roi_heads.box_head.fc{j+1}.*            roi_heads.box_head.{C+1+2j}.*
      (C = NUM_CONV convs, otherwise)
    roi_heads.box_predictor.cls_score.*  cls_score: K+1 rows, background LAST    cls_score: background row 0
      K+1 rows, background row 0           (moved to row 0)
    roi_heads.box_predictor.bbox_pred.*  bbox_pred: 4K rows, no background       bbox_pred: 4(K+1) rows
      4(K+1) rows, rows 0..3 background    (4 zero rows put in front)
    Mask R-CNN (MODEL.MASK_ON):
    roi_heads.mask_head.{i}.0.*          roi_heads.mask_head.mask_fcn{i+1}.*     roi_heads.mask_head.{i}.0.*
                                                                                 (old files: mask_fcn{i+1}.*)
    roi_heads.mask_head.{i}.1.* (NORM)   roi_heads.mask_head.mask_fcn{i+1}.norm.* roi_heads.mask_head.{i}.1.*
    roi_heads.mask_predictor.conv5_mask  roi_heads.mask_head.deconv.*            roi_heads.mask_predictor.conv5_mask
    roi_heads.mask_predictor.            roi_heads.mask_head.predictor.*: K      ...mask_fcn_logits: K+1 channels,
      mask_fcn_logits.*: K+1 channels,     channels (a zero background channel     background 0 (91 for COCO: as the
      background 0 (unused); 1 with        put in front), 1 class-agnostic         box rows)
      CLS_AGNOSTIC_MASK

torchvision's COCO models predict 91 classes (row 0 background, row i = COCO category id i, 10 ids unused); with
num_classes None or 80 such a head becomes our 80 contiguous classes (COCO_CATEGORY_IDS order, detectron2's) + 0.
A class-agnostic detectron2 box regression (4 rows, CLS_AGNOSTIC_BBOX_REG) is repeated for each class: the same
detections at inference. Keys a Faster R-CNN does not need are dropped and named (`"dropped"`): detectron2's old
`proposal_generator.anchor_generator.cell_anchors.*` and `pixel_mean` / `pixel_std` buffers (their values give the
converted file's pixel statistics). Any other key outside the backbone is refused by name, as are files of other
architectures (Keypoint / Cascade / C4 R-CNN, RetinaNet, FCOS, SSD, Panoptic FPN; `identify_detector`). Mask R-CNN
files (FPN) convert whole into our FasterRCNN built with MODEL.MASK_ON; their "mask_on" field says so.

Pixel conventions recorded: detectron2 model zoo BGR, PIXEL_MEAN 103.53 116.28 123.675, STD 1 1 1 (a file whose
`__author__` mentions torchvision, or whose pixel_* buffers say so, differs; top-level "format" / "pixel_mean" /
"pixel_std" values, as tools/convert_weights.py --to detectron2 writes, win); torchvision RGB, ImageNet mean / std
x 255.

    convert_detector(path_or_obj, source="auto"|"detectron2"|"torchvision", num_classes=None) -> converted dict
        {"model": our FasterRCNN state dict, "format", "pixel_mean", "pixel_std", "source", "architecture":
         "FasterRCNN", "mask_on": bool, "num_classes": K, "dropped": [source keys], "notes": [...],
         "source_keys": {ours: theirs}}
        (converters.save_converted writes all but "source_keys"; the file loads with MODEL.WEIGHTS)
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Mapping

import torch

from . import CheckpointError
from .converters import _torchvision_key
from .detr_converter import COCO_CATEGORY_IDS
from .reader import PIXEL_CONVENTIONS, read_weights, unwrap

__all__ = [
    "DETECTOR_SOURCES",
    "identify_detector",
    "is_faster_rcnn_model",
    "convert_detector_state_dict",
    "convert_detector",
    "check_num_classes",
    "CONVERTIBLE",
]

logger = logging.getLogger(__name__)

DETECTOR_SOURCES = ("detectron2", "torchvision")
ARCHITECTURE = "FasterRCNN"
CLS_SCORE = "roi_heads.box_predictor.cls_score"
BBOX_PRED = "roi_heads.box_predictor.bbox_pred"
MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits"
CONVERTIBLE = ("Faster R-CNN", "Mask R-CNN")  # the architectures identify_detector names that convert whole
NUM_CLASSES_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"
_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------------------------------ identifying
def _has(keys, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


# names only detectron2 models have (ours / torchvision's are rpn.*, roi_heads.box_head.fc6 / {i}.0, ...)
_D2_ONLY = ("proposal_generator.", "sem_seg_head.", "head.cls_subnet.", "head.bbox_subnet.", "head.cls_score.",
            "head.bbox_pred.", "roi_heads.res5.", "roi_heads.mask_head.mask_fcn", "roi_heads.mask_head.predictor.",
            "roi_heads.keypoint_head.")
_D2_CASCADE = re.compile(r"^roi_heads\.(box_predictor\.\d+\.|box_head\.\d+\.(fc|conv)\d)")


def _marks(*prefixes: str):
    return lambda keys: _has(keys, *prefixes)


def _cascade(keys) -> bool:
    return any(_D2_CASCADE.match(k) for k in keys)


# (test on the key names, architecture), the first that holds names the file; none: a Faster R-CNN
_TORCHVISION_ARCHS = (
    (_marks("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor."),
     "torchvision Keypoint R-CNN (keypointrcnn_resnet50_fpn)"),
    (_marks("head.regression_head.bbox_ctrness"), "torchvision FCOS (fcos_resnet50_fpn)"),
    (_marks("head.classification_head.module_list."), "torchvision SSD / SSDlite"),
    (_marks("head."), "torchvision RetinaNet (retinanet_resnet50_fpn)"),
    (lambda keys: not _has(keys, "backbone.body.layer1."),
     "torchvision Faster R-CNN with a non-ResNet backbone (e.g. fasterrcnn_mobilenet_v3_large_fpn)"),
    (_marks("roi_heads.mask_head.", "roi_heads.mask_predictor."), "Mask R-CNN"),
)
_DETECTRON2_ARCHS = (
    (lambda keys: _has(keys, "sem_seg_head.") and _has(keys, "roi_heads."), "detectron2 Panoptic FPN"),
    (_marks("sem_seg_head."), "detectron2 semantic segmentation model (SemanticSegmentor)"),
    (_marks("roi_heads.keypoint_head."), "detectron2 Keypoint R-CNN"),
    (_marks("head."), "detectron2 RetinaNet"),
    (_cascade, "detectron2 Cascade R-CNN"),
    (_marks("roi_heads.res5."), "detectron2 C4 Faster R-CNN (Res5ROIHeads: res5 in the box head)"),
    (lambda keys: not _has(keys, "roi_heads."), "detectron2 RPN-only model (ProposalNetwork)"),
    (_marks("roi_heads.mask_head."), "Mask R-CNN"),  # after Cascade / C4 / Panoptic, which have mask heads too
)


def _architecture(keys: list[str], table) -> str:
    return next((what for test, what in table if test(keys)), "Faster R-CNN")


def identify_detector(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """(family, architecture) of a whole-detector state dict or checkpoint, None for anything else (a backbone,
    DETR, a classifier). family: "detectron2" | "torchvision" | "ours"; architecture: "Faster R-CNN" or "Mask
    R-CNN" for the ones we convert (CONVERTIBLE), else a description such as "detectron2 Keypoint R-CNN"
    (`convert_detector` refuses those)."""
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        return None
    keys = [k for k in state if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module."):] for k in keys]
    if _has(keys, "backbone.bottom_up.") and _has(keys, "head.classification_head."):  # our RetinaNet's names
        return "ours", "RetinaNet"
    if _has(keys, "backbone.body.", "head.classification_head.") and _has(keys, "rpn.", "roi_heads.", "head."):
        return "torchvision", _architecture(keys, _TORCHVISION_ARCHS)
    if _has(keys, *_D2_ONLY) or _cascade(keys):
        return "detectron2", _architecture(keys, _DETECTRON2_ARCHS)
    if _has(keys, "rpn.head.") and _has(keys, "roi_heads.box_predictor.") and _has(keys, "backbone."):
        return "ours", "Mask R-CNN" if _has(keys, "roi_heads.mask_predictor.") else "Faster R-CNN"
    return None


def is_faster_rcnn_model(module: torch.nn.Module) -> bool:
    """True for our FasterRCNN (by its state-dict names: an RPN head and a box predictor)."""
    keys = module.state_dict().keys()
    return f"{CLS_SCORE}.weight" in keys and any(k.startswith("rpn.head.") for k in keys)


# ------------------------------------------------------------------------------------------- converting
class _Out:
    """The converted state dict, where each key came from, and what was dropped."""

    def __init__(self, name: str):
        self.name = name
        self.model: dict[str, torch.Tensor] = OrderedDict()
        self.source_keys: dict[str, str] = {}
        self.dropped: list[str] = []
        self.notes: list[str] = []

    def put(self, ours: str, theirs: str, value: torch.Tensor) -> None:
        if ours in self.model:
            raise CheckpointError(f"'{self.name}': keys '{self.source_keys[ours]}' and '{theirs}' both map to "
                                  f"'{ours}'")
        self.model[ours] = value
        self.source_keys[ours] = theirs


def _refuse_unknown(name: str, unknown: list[str], family: str) -> None:
    if unknown:
        raise CheckpointError(f"'{name}': not a {family} Faster / Mask R-CNN (FPN) file: unknown keys "
                              f"{unknown[:10]}" + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""))


# the head tensors every Faster R-CNN file must hold, in each family's names (plus the RPN's first conv)
_PREDICTOR_KEYS = [f"{p}.{f}" for p in (CLS_SCORE, BBOX_PRED) for f in ("weight", "bias")]
_REQUIRED = {
    "detectron2": [f"proposal_generator.rpn_head.{m}.{f}" for m in ("objectness_logits", "anchor_deltas")
                   for f in ("weight", "bias")] + _PREDICTOR_KEYS,
    "torchvision": [f"rpn.head.{m}.{f}" for m in ("cls_logits", "bbox_pred") for f in ("weight", "bias")]
    + _PREDICTOR_KEYS,
}
_FIRST_RPN_CONV = {"detectron2": ("proposal_generator.rpn_head.conv.weight",
                                  "proposal_generator.rpn_head.conv.conv0.weight"),
                   "torchvision": ("rpn.head.conv.0.0.weight", "rpn.head.conv.weight")}


def _check_required(state: Mapping[str, Any], name: str, family: str) -> None:
    missing = [k for k in _REQUIRED[family] if k not in state]
    if not any(k in state for k in _FIRST_RPN_CONV[family]):
        missing.append(_FIRST_RPN_CONV[family][0])
    if missing:
        raise CheckpointError(f"'{name}': this {family} Faster R-CNN file lacks head key(s) {missing}: the "
                              "detector cannot be filled from it")


def _box_head_names(convs: int, fcs: int) -> tuple[dict[int, str], dict[int, str]]:
    """Our module names of the box head's i-th conv and j-th fc (torchvision's TwoMLPHead / FastRCNNConvFCHead)."""
    if convs == 0 and fcs == 2:
        return {}, {0: "roi_heads.box_head.fc6", 1: "roi_heads.box_head.fc7"}
    return ({i: f"roi_heads.box_head.{i}" for i in range(convs)},
            {j: f"roi_heads.box_head.{convs + 1 + 2 * j}" for j in range(fcs)})


_D2_RPN = re.compile(r"^proposal_generator\.rpn_head\.(conv(?:\.conv(\d+))?|objectness_logits|anchor_deltas)"
                     r"\.(weight|bias)$")
_D2_BOX_HEAD = re.compile(r"^roi_heads\.box_head\.(conv|fc)(\d+)\.(weight|bias|norm\.(\w+))$")
_D2_DROPPED = re.compile(r"^(proposal_generator\.anchor_generator\.cell_anchors\.\d+|pixel_mean|pixel_std)$")


def _detectron2_to_ours(state: dict[str, torch.Tensor], name: str) -> _Out:
    _check_required(state, name, "detectron2")
    out = _Out(name)
    heads, masks = {}, {}
    unknown = []
    for k, v in state.items():
        if k.startswith("backbone."):
            out.put(k, k, v)  # our backbone names are detectron2's
        elif _D2_DROPPED.match(k):
            out.dropped.append(k)
        elif k.startswith("roi_heads.mask_head."):
            masks[k] = v
        elif k.startswith(("proposal_generator.", "roi_heads.box_head.")) or k.startswith(
                (f"{CLS_SCORE}.", f"{BBOX_PRED}.")):
            heads[k] = v
        else:
            unknown.append(k)
    _refuse_unknown(name, unknown, "detectron2")
    # RPN head
    for k, v in heads.items():
        if not k.startswith("proposal_generator."):
            continue
        m = _D2_RPN.match(k)
        if not m:
            unknown.append(k)
            continue
        part, conv_index, field = m.groups()
        if part == "conv":
            out.put(f"rpn.head.conv.0.0.{field}", k, v)
        elif conv_index is not None:
            out.put(f"rpn.head.conv.{int(conv_index)}.0.{field}", k, v)
        else:
            out.put(f"rpn.head.{'cls_logits' if part == 'objectness_logits' else 'bbox_pred'}.{field}", k, v)
    # box head: conv{i+1} (+ .norm), fc{j+1}
    parsed = []
    for k, v in heads.items():
        if k.startswith("roi_heads.box_head."):
            m = _D2_BOX_HEAD.match(k)
            if not m or int(m.group(2)) < 1 or (m.group(4) is not None and m.group(1) != "conv") or (
                    m.group(4) is not None and m.group(4) not in _NORM_FIELDS):
                unknown.append(k)
                continue
            parsed.append((k, v, m.group(1), int(m.group(2)) - 1, m.group(3), m.group(4)))
    _refuse_unknown(name, unknown, "detectron2")
    convs = len({i for _, _, kind, i, _, _ in parsed if kind == "conv"})
    fcs = len({j for _, _, kind, j, _, _ in parsed if kind == "fc"})
    conv_names, fc_names = _box_head_names(convs, fcs)
    for k, v, kind, i, field, norm_field in parsed:
        names = conv_names if kind == "conv" else fc_names
        if i not in names:
            raise CheckpointError(f"'{name}': key '{k}' does not fit a box head of {convs} convs and {fcs} fcs "
                                  "numbered from 1")
        if norm_field is not None:
            out.put(f"{names[i]}.1.{norm_field}", k, v)
        else:
            out.put(f"{names[i]}.0.{field}" if kind == "conv" else f"{names[i]}.{field}", k, v)
    # box predictor: background last -> first; 4K class deltas -> 4 background rows + 4K
    if not parsed:
        raise CheckpointError(f"'{name}': this detectron2 Faster R-CNN file has no box head keys "
                              "('roi_heads.box_head.fc1.weight' / 'conv1.weight'): the detector cannot be filled")
    cls_w, cls_b = heads[f"{CLS_SCORE}.weight"], heads[f"{CLS_SCORE}.bias"]
    num_classes = cls_w.shape[0] - 1
    out.put(f"{CLS_SCORE}.weight", f"{CLS_SCORE}.weight", torch.cat([cls_w[-1:], cls_w[:-1]]))
    out.put(f"{CLS_SCORE}.bias", f"{CLS_SCORE}.bias", torch.cat([cls_b[-1:], cls_b[:-1]]))
    box_w, box_b = heads[f"{BBOX_PRED}.weight"], heads[f"{BBOX_PRED}.bias"]
    rows = box_w.shape[0]
    if rows == 4 and num_classes > 1:  # class-agnostic regression: the same deltas for every class
        box_w, box_b = box_w.repeat(num_classes, 1), box_b.repeat(num_classes)
        out.notes.append(f"class-agnostic box regression ('{BBOX_PRED}.weight' 4 rows) repeated for the "
                         f"{num_classes} classes")
    elif rows != 4 * num_classes or box_b.shape[0] != rows:
        raise CheckpointError(f"'{name}': '{BBOX_PRED}.weight' has {rows} rows and its bias {box_b.shape[0]}; "
                              f"with {num_classes} classes ('{CLS_SCORE}.weight' {tuple(cls_w.shape)}) detectron2's "
                              f"box regression has 4 x {num_classes} = {4 * num_classes} (or 4, class-agnostic)")
    out.put(f"{BBOX_PRED}.weight", f"{BBOX_PRED}.weight", torch.cat([box_w.new_zeros(4, box_w.shape[1]), box_w]))
    out.put(f"{BBOX_PRED}.bias", f"{BBOX_PRED}.bias", torch.cat([box_b.new_zeros(4), box_b]))
    out.notes.append(f"{num_classes} classes; background moved from the last row of '{CLS_SCORE}' to row 0, "
                     f"4 zero background rows put in front of '{BBOX_PRED}'")
    if masks:
        _detectron2_mask_head(masks, out, name, num_classes)
    return out


_D2_MASK = re.compile(r"^roi_heads\.mask_head\.(?:mask_fcn(\d+)\.(weight|bias|norm\.(\w+))|(deconv|predictor)\."
                      r"(weight|bias))$")


def _detectron2_mask_head(masks: dict[str, torch.Tensor], out: _Out, name: str, num_classes: int) -> None:
    """detectron2's MaskRCNNConvUpsampleHead -> torchvision's MaskRCNNHeads / MaskRCNNPredictor names; the K-channel
    predictor gets a zero background channel 0 (ours has torchvision's K + 1; a 1-channel class-agnostic one stays)."""
    unknown = []
    for k, v in masks.items():
        m = _D2_MASK.match(k)
        if not m or (m.group(1) is not None and int(m.group(1)) < 1) or (
                m.group(3) is not None and m.group(3) not in _NORM_FIELDS):
            unknown.append(k)
            continue
        index, field, norm_field, module, pfield = m.groups()
        if module == "deconv":
            out.put(f"roi_heads.mask_predictor.conv5_mask.{pfield}", k, v)
        elif module == "predictor":
            if v.shape[0] not in (num_classes, 1):
                raise CheckpointError(f"'{name}': '{k}' has shape {tuple(v.shape)}: detectron2's mask predictor has "
                                      f"{num_classes} channels (one per class of '{CLS_SCORE}') or 1 (class-agnostic)")
            if v.shape[0] == num_classes:  # class-specific (a 1-class file counts as such: 2 channels here)
                v = torch.cat([v.new_zeros((1, *v.shape[1:])), v])
            out.put(f"{MASK_LOGITS}.{pfield}", k, v)
        elif norm_field is not None:
            out.put(f"roi_heads.mask_head.{int(index) - 1}.1.{norm_field}", k, v)
        else:
            out.put(f"roi_heads.mask_head.{int(index) - 1}.0.{field}", k, v)
    _refuse_unknown(name, unknown, "detectron2")
    for theirs, ours in (("roi_heads.mask_head.deconv.weight", "roi_heads.mask_predictor.conv5_mask.weight"),
                         ("roi_heads.mask_head.predictor.weight", f"{MASK_LOGITS}.weight")):
        if ours not in out.model:
            raise CheckpointError(f"'{name}': this detectron2 Mask R-CNN file lacks '{theirs}': the mask head "
                                  "cannot be filled")
    out.notes.append(f"mask head: mask_fcn / deconv / predictor -> torchvision's mask_head / mask_predictor names, "
                     f"'{MASK_LOGITS}' with a zero background channel 0 in front")


_TV_FPN = re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:(0|1)\.)?(\w+)$")
_TV_HEAD = re.compile(r"^(rpn\.head\.(conv\.\d+\.0|cls_logits|bbox_pred)|"
                      r"roi_heads\.box_head\.(fc6|fc7|\d+|\d+\.[01])|roi_heads\.box_predictor\.(cls_score|bbox_pred))"
                      r"\.(\w+)$")
_TV_MASK = re.compile(r"^roi_heads\.(?:mask_head\.(?:mask_fcn(\d+)|\d+\.[01])|mask_predictor\.(?:conv5_mask|"
                      r"mask_fcn_logits))\.(\w+)$")


def torchvision_fpn_offset(state: Mapping[str, torch.Tensor]) -> int:
    """The FPN level of torchvision's block 0: its last block is res5's (fpn_lateral5), so returned_layers
    [1, 2, 3, 4] (Faster / Mask R-CNN) gives 2 and [2, 3, 4] (RetinaNet) gives 3."""
    return 6 - len({int(m.group(2)) for k in state if (m := _TV_FPN.match(k))})


def put_torchvision_backbone(out: _Out, k: str, v: torch.Tensor, offset: int, unknown: list[str]) -> bool:
    """A torchvision detector's `backbone.body.*` (ResNet) or `backbone.fpn.*` key into our names (unknown ones
    appended to `unknown`); False for every other key."""
    if k.startswith("backbone.body."):
        new = _torchvision_key(k[len("backbone.body."):])
        if new is None or new.startswith("linear."):
            unknown.append(k)
        else:
            out.put("backbone.bottom_up." + new, k, v)
        return True
    m = _TV_FPN.match(k)
    if m is None:
        return False
    block, index, part, field = m.groups()
    if part == "1" and field not in _NORM_FIELDS:
        unknown.append(k)
        return True
    conv = f"backbone.fpn_{'lateral' if block == 'inner_blocks' else 'output'}{int(index) + offset}"
    out.put(f"{conv}.norm.{field}" if part == "1" else f"{conv}.{field}", k, v)  # part None: old layout
    return True


def _torchvision_to_ours(state: dict[str, torch.Tensor], name: str, num_classes: int | None) -> _Out:
    _check_required(state, name, "torchvision")
    out = _Out(name)
    unknown = []
    offset = torchvision_fpn_offset(state)
    for k, v in state.items():
        if put_torchvision_backbone(out, k, v, offset, unknown):
            continue
        if k in ("rpn.head.conv.weight", "rpn.head.conv.bias"):  # torchvision's RPNHead before version 2
            out.put(f"rpn.head.conv.0.0.{k.rsplit('.', 1)[1]}", k, v)
        elif _TV_HEAD.match(k) and not k.startswith((f"{CLS_SCORE}.", f"{BBOX_PRED}.")):
            out.put(k, k, v)
        elif m := _TV_MASK.match(k):
            old_index, field = m.group(1), m.group(2)
            if old_index is not None:  # MaskRCNNHeads before its version 2: mask_fcn{i+1}.weight
                out.put(f"roi_heads.mask_head.{int(old_index) - 1}.0.{field}", k, v)
            elif not k.startswith(f"{MASK_LOGITS}."):
                out.put(k, k, v)
        elif k not in (f"{CLS_SCORE}.weight", f"{CLS_SCORE}.bias", f"{BBOX_PRED}.weight", f"{BBOX_PRED}.bias"):
            unknown.append(k)
    _refuse_unknown(name, unknown, "torchvision")
    if not any(k.startswith("roi_heads.box_head.") for k in out.model):
        raise CheckpointError(f"'{name}': this torchvision Faster R-CNN file has no box head keys "
                              "('roi_heads.box_head.fc6.weight' / '0.0.weight'): the detector cannot be filled")
    cls_w, cls_b = state[f"{CLS_SCORE}.weight"], state[f"{CLS_SCORE}.bias"]
    box_w, box_b = state[f"{BBOX_PRED}.weight"], state[f"{BBOX_PRED}.bias"]
    rows = cls_w.shape[0]
    if box_w.shape[0] != 4 * rows or box_b.shape[0] != 4 * rows or cls_b.shape[0] != rows:
        raise CheckpointError(f"'{name}': '{BBOX_PRED}.weight' {tuple(box_w.shape)} does not hold 4 deltas for "
                              f"each of the {rows} classes of '{CLS_SCORE}.weight' {tuple(cls_w.shape)}")
    mask_w, mask_b = state.get(f"{MASK_LOGITS}.weight"), state.get(f"{MASK_LOGITS}.bias")
    if any(k.startswith("roi_heads.mask_") for k in state):
        if mask_w is None or mask_b is None:
            raise CheckpointError(f"'{name}': this torchvision Mask R-CNN file lacks '{MASK_LOGITS}.weight' / "
                                  "'.bias': the mask head cannot be filled")
        if mask_w.shape[0] not in (rows, 1) or mask_b.shape[0] != mask_w.shape[0]:
            raise CheckpointError(f"'{name}': '{MASK_LOGITS}.weight' {tuple(mask_w.shape)} (bias "
                                  f"{tuple(mask_b.shape)}) does not hold one mask channel for each of the {rows} "
                                  f"classes of '{CLS_SCORE}.weight' {tuple(cls_w.shape)} (or 1, class-agnostic)")
    if rows == 91 and num_classes in (None, 80):  # COCO category ids 0..90 -> background + 80 contiguous
        keep = torch.tensor([0] + COCO_CATEGORY_IDS)
        box_rows = (4 * keep[:, None] + torch.arange(4)[None, :]).flatten()
        cls_w, cls_b, box_w, box_b = cls_w[keep], cls_b[keep], box_w[box_rows], box_b[box_rows]
        if mask_w is not None and mask_w.shape[0] == rows:  # the mask channels as the class rows
            mask_w, mask_b = mask_w[keep], mask_b[keep]
        out.notes.append("torchvision's 91-way COCO head (row = COCO category id) reduced to background + the 80 "
                         "COCO classes in contiguous order (COCO_CATEGORY_IDS); the 10 unused ids' rows dropped")
    out.put(f"{CLS_SCORE}.weight", f"{CLS_SCORE}.weight", cls_w)
    out.put(f"{CLS_SCORE}.bias", f"{CLS_SCORE}.bias", cls_b)
    out.put(f"{BBOX_PRED}.weight", f"{BBOX_PRED}.weight", box_w)
    out.put(f"{BBOX_PRED}.bias", f"{BBOX_PRED}.bias", box_b)
    if mask_w is not None:
        out.put(f"{MASK_LOGITS}.weight", f"{MASK_LOGITS}.weight", mask_w)
        out.put(f"{MASK_LOGITS}.bias", f"{MASK_LOGITS}.bias", mask_b)
    return out


def convert_detector_state_dict(state: Mapping[str, Any], source: str = "auto", name: str = "<state dict>",
                                num_classes: int | None = None) -> tuple[dict, str, list[str], list[str], dict]:
    """(our FasterRCNN state dict, source family, dropped source keys, notes, {our key: source key}).

    source: "auto" (from the names), "detectron2" or "torchvision". num_classes: the class count the result must
    have (None: whatever the file has, torchvision's 91-way COCO head reduced to 80); a file that cannot give it
    is a CheckpointError naming the key, both shapes and MODEL.ROI_HEADS.NUM_CLASSES.
    """
    return _convert_tensors(unwrap(state, name).tensors, source, name, num_classes)


def _convert_tensors(tensors: dict[str, torch.Tensor], source: str, name: str, num_classes: int | None):
    if source not in ("auto", *DETECTOR_SOURCES):
        raise CheckpointError(f"unknown detector source '{source}'; choose from auto, {', '.join(DETECTOR_SOURCES)}")
    found = identify_detector(tensors)
    if found is None:
        raise CheckpointError(f"'{name}': not a whole detector (no detectron2 'proposal_generator.*' / "
                              f"'roi_heads.*' or torchvision 'rpn.*' / 'roi_heads.*' keys beside its backbone); "
                              f"first keys: {list(tensors)[:6]}")
    family, arch = found
    if arch not in CONVERTIBLE:
        raise CheckpointError(f"'{name}' is a {arch} file, not a Faster R-CNN: only Faster R-CNN and Mask R-CNN (FPN) "
                              "convert to our FasterRCNN")
    if source != "auto" and family != source:
        raise CheckpointError(f"'{name}': --source {source} given, but its names are {family}'s")
    if family == "ours":
        raise CheckpointError(f"'{name}' already has our FasterRCNN names: nothing to convert")
    out = (_detectron2_to_ours(tensors, name) if family == "detectron2"
           else _torchvision_to_ours(tensors, name, num_classes))
    if num_classes is not None:
        check_num_classes(out.model, num_classes, name, out.source_keys, family)
    return out.model, family, out.dropped, out.notes, out.source_keys


def check_num_classes(state: Mapping[str, torch.Tensor], num_classes: int, name: str,
                      source_keys: Mapping[str, str] | None = None, family: str | None = None) -> None:
    """A CheckpointError naming the file, the key, both shapes and MODEL.ROI_HEADS.NUM_CLASSES when the box
    predictor in `state` (our names) is not for `num_classes` classes, or its mask predictor not for them (K + 1
    channels, or 1 class-agnostic)."""
    for suffix in ("weight", "bias"):
        key = f"{CLS_SCORE}.{suffix}"
        if key not in state:
            continue
        have = tuple(state[key].shape)
        if have[0] == num_classes + 1:
            continue
        theirs = (source_keys or {}).get(key, key)
        where = f"key '{theirs}'" + (f" (ours '{key}')" if theirs != key else "")
        want = (num_classes + 1, *have[1:])
        fits = f"{have[0] - 1}" + (" (or 80: torchvision's 91-row COCO head, indexed by COCO category id, then "
                                   "becomes the 80 contiguous COCO classes)" if family == "torchvision"
                                   and have[0] == 91 else "")
        raise CheckpointError(
            f"'{name}': {where} is for {have[0] - 1} classes + background, shape {have}, but the model's is {want} "
            f"({NUM_CLASSES_KEY} = {num_classes}): set {NUM_CLASSES_KEY} to {fits}; to train a new box predictor "
            "from these weights, convert them (tools/convert_weights.py) and drop its "
            "roi_heads.box_predictor.* keys")
    mask = state.get(f"{MASK_LOGITS}.weight")
    if mask is not None and mask.shape[0] not in (num_classes + 1, 1):
        theirs = (source_keys or {}).get(f"{MASK_LOGITS}.weight", f"{MASK_LOGITS}.weight")
        raise CheckpointError(
            f"'{name}': key '{theirs}' has {mask.shape[0]} mask channels, shape {tuple(mask.shape)}, but the model's "
            f"mask predictor has {num_classes + 1} ({NUM_CLASSES_KEY} = {num_classes} + background) or 1 "
            "(MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK)")


def _pixels(family: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], dropped: list[str]) -> dict:
    pixels = dict(PIXEL_CONVENTIONS[family])
    if family == "detectron2":
        if "torchvision" in str(meta.get("__author__", "")).lower():
            pixels = dict(PIXEL_CONVENTIONS["torchvision"])
        if "pixel_mean" in dropped and "pixel_std" in dropped:  # old detectron2 files keep the buffers
            mean = [float(x) for x in tensors["pixel_mean"].flatten().tolist()]
            std = [float(x) for x in tensors["pixel_std"].flatten().tolist()]
            if len(mean) == 3 and len(std) == 3:
                rgb = PIXEL_CONVENTIONS["torchvision"]["pixel_mean"]
                close_to_rgb = max(abs(a - b) for a, b in zip(mean, rgb)) < 0.5
                if close_to_rgb and mean != pixels["pixel_mean"]:
                    pixels["format"] = "RGB"
                pixels["pixel_mean"], pixels["pixel_std"] = mean, std
    # what the file records at its top level (tools/convert_weights.py --to detectron2 writes it) comes first
    pixels.update({k: meta[k] for k in ("format", "pixel_mean", "pixel_std") if meta.get(k) is not None})
    return pixels


def convert_detector(path_or_obj, source: str = "auto", trust: bool = False, num_classes: int | None = None,
                     name: str | None = None, **pixel_overrides) -> dict:
    """Read (if a path) and convert a whole detectron2 / torchvision Faster R-CNN file; the converted dict of the
    module docstring. `name`: what errors call an already loaded object (default: the path, or
    "<in-memory checkpoint>"). `pixel_overrides` (format=, pixel_mean=, pixel_std=) replace the recorded
    convention."""
    weights = read_weights(path_or_obj, trust=trust, name=name)
    name, tensors, meta = weights.name, weights.tensors, weights.meta
    model, family, dropped, notes, source_keys = _convert_tensors(tensors, source, name, num_classes)
    pixels = _pixels(family, tensors, meta, dropped)
    pixels.update({k: v for k, v in pixel_overrides.items() if v is not None})
    if pixels["format"] not in ("RGB", "BGR"):
        raise CheckpointError(f"'{name}': pixel format must be 'RGB' or 'BGR', got {pixels['format']!r}")
    k = model[f"{CLS_SCORE}.weight"].shape[0] - 1
    for note in notes:
        logger.info("'%s': %s", name, note)
    if dropped:
        logger.info("'%s': dropped %d keys a Faster R-CNN does not use: %s", name, len(dropped), ", ".join(dropped))
    return {"model": model, "format": pixels["format"], "pixel_mean": [float(x) for x in pixels["pixel_mean"]],
            "pixel_std": [float(x) for x in pixels["pixel_std"]], "source": family, "architecture": ARCHITECTURE,
            "mask_on": f"{MASK_LOGITS}.weight" in model, "num_classes": int(k), "dropped": list(dropped),
            "notes": list(notes), "source_keys": source_keys}
