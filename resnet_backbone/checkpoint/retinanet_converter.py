"""Whole RetinaNet files from torchvision and detectron2 -> our RetinaNet's names (every tensor, head included).

Our RetinaNet's state-dict names (meta_arch/retinanet.py, modeling/retinanet/head.py) and where each comes from
(torchvision: retinanet_resnet50_fpn; detectron2: its RetinaNet meta architecture):

    ours                                        torchvision                                detectron2
    backbone.bottom_up.*                        backbone.body.* (converters' table)        backbone.bottom_up.*
    backbone.fpn_lateral{n}.*                   backbone.fpn.inner_blocks.{n-3}.0.*        backbone.fpn_lateral{n}.*
    backbone.fpn_output{n}.*                    backbone.fpn.layer_blocks.{n-3}.0.*        backbone.fpn_output{n}.*
    backbone.top_block.p6 / p7.*                backbone.fpn.extra_blocks.p6 / p7.*        backbone.top_block.p6 / p7.*
    head.classification_head.conv.{i}.0.*       the same (old files: ...conv.{2i}.*)      head.cls_subnet.{j}.* (conv i)
    head.classification_head.conv.{i}.1.*       -                                          head.cls_subnet.{j+1}.*: norm
    head.classification_head.cls_logits.*       the same: A x 91 rows (COCO ids)           head.cls_score.*: A x K rows
    head.regression_head.conv.{i}.0 / .1.*      the same (old files: ...conv.{2i}.*)      head.bbox_subnet.{j} / {j+1}.*
    head.regression_head.bbox_reg.*             the same                                   head.bbox_pred.*

Classifier rows are anchor-major (row a x K + k: anchor a, class k) in all three. torchvision's COCO models have
K = 91 (class i = COCO category id i; 0 and 10 other ids unused); with num_classes None or 80 such a classifier
becomes our 80 contiguous classes (COCO_CATEGORY_IDS order, detectron2's): for every anchor, the rows of the 80 ids.
detectron2's classes are contiguous already. Keys a RetinaNet does not need are dropped and named (detectron2's old
`anchor_generator.cell_anchors.*`, `pixel_mean` / `pixel_std`); any other key is refused by name, and a classifier
or regressor whose rows do not fit the model is a CheckpointError naming the file, the key, both shapes and
MODEL.RETINANET.NUM_CLASSES.

    convert_retinanet(path_or_obj, source="auto"|"torchvision"|"detectron2", num_classes=None, ...) -> converted
        {"model": our RetinaNet state dict, "format", "pixel_mean", "pixel_std", "source", "architecture":
         "RetinaNet", "num_classes": K, "dropped", "notes", "source_keys": {ours: theirs}}
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

import torch

from . import CheckpointError
from .detector_converters import (
    _NORM_FIELDS,
    _Out,
    _pixels,
    identify_detector,
    put_torchvision_backbone,
    torchvision_fpn_offset,
)
from .detr_converter import COCO_CATEGORY_IDS
from .reader import read_weights

__all__ = ["ARCHITECTURE", "retinanet_family", "is_retinanet_model", "convert_retinanet",
           "convert_retinanet_tensors", "check_retinanet_classes"]

logger = logging.getLogger(__name__)

ARCHITECTURE = "RetinaNet"
CLS_LOGITS = "head.classification_head.cls_logits"
BBOX_REG = "head.regression_head.bbox_reg"
NUM_CLASSES_KEY = "MODEL.RETINANET.NUM_CLASSES"
_SOURCES = ("torchvision", "detectron2")
_REQUIRED = {"torchvision": [f"{p}.{f}" for p in (CLS_LOGITS, BBOX_REG) for f in ("weight", "bias")],
             "detectron2": [f"head.{p}.{f}" for p in ("cls_score", "bbox_pred") for f in ("weight", "bias")]}


def retinanet_family(tensors: Mapping[str, Any]) -> str | None:
    """"torchvision" / "detectron2" for a whole RetinaNet file of that library (by identify_detector and the head
    names only its RetinaNet has), None for anything else (ours included: our names load as they are)."""
    found = identify_detector(tensors)
    if found is None or found[0] not in _SOURCES or "RetinaNet" not in found[1]:
        return None
    keys = [k[len("module."):] if k.startswith("module.") else k for k in tensors if isinstance(k, str)]
    marker = "head.classification_head.cls_logits." if found[0] == "torchvision" else "head.cls_score."
    return found[0] if any(k.startswith(marker) for k in keys) else None


def is_retinanet_model(module: torch.nn.Module) -> bool:
    """True for our RetinaNet (by its state-dict names)."""
    keys = module.state_dict().keys()
    return f"{CLS_LOGITS}.weight" in keys and f"{BBOX_REG}.weight" in keys


def _subnet_names(keys_and_values: list[tuple[str, torch.Tensor]], prefix: str) -> dict[int, str]:
    """detectron2's Sequential index of each conv / norm of a subnet -> our `conv.{i}.0` / `conv.{i}.1`: convs are
    the entries with a 4-d weight, in order; the entry right after a conv with 1-d parameters is its norm."""
    convs = sorted({int(k.split(".")[0]) for k, v in keys_and_values if k.endswith(".weight") and v.dim() == 4})
    names = {}
    for i, j in enumerate(convs):
        names[j] = f"{prefix}.conv.{i}.0"
        names[j + 1] = f"{prefix}.conv.{i}.1"
    return names


_D2_HEAD = re.compile(r"^head\.(cls_subnet|bbox_subnet)\.(\d+)\.(\w+)$")
_D2_OUT = {"head.cls_score": CLS_LOGITS, "head.bbox_pred": BBOX_REG}
_D2_DROPPED = re.compile(r"^(anchor_generator\.cell_anchors\.\d+|pixel_mean|pixel_std)$")
_TV_HEAD = re.compile(r"^head\.(classification_head|regression_head)\.(conv\.(\d+)\.(?:(\d+)\.)?(\w+)|"
                      r"cls_logits\.(weight|bias)|bbox_reg\.(weight|bias))$")
_TV_TOP = re.compile(r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$")


def _refuse_unknown(name: str, unknown: list[str], family: str) -> None:
    if unknown:
        raise CheckpointError(f"'{name}': not a {family} RetinaNet file: unknown keys {unknown[:10]}"
                              + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""))


def _detectron2_to_ours(state: dict[str, torch.Tensor], name: str) -> _Out:
    out = _Out(name)
    unknown: list[str] = []
    subnets: dict[str, list[tuple[str, torch.Tensor]]] = {"cls_subnet": [], "bbox_subnet": []}
    for k, v in state.items():
        if k.startswith("backbone."):
            out.put(k, k, v)  # our backbone names are detectron2's
        elif _D2_DROPPED.match(k):
            out.dropped.append(k)
        elif m := _D2_HEAD.match(k):
            subnets[m.group(1)].append((f"{m.group(2)}.{m.group(3)}", v))
        elif k.rsplit(".", 1)[0] in _D2_OUT and k.rsplit(".", 1)[1] in ("weight", "bias"):
            head, field = k.rsplit(".", 1)
            out.put(f"{_D2_OUT[head]}.{field}", k, v)
        else:
            unknown.append(k)
    for subnet, ours in (("cls_subnet", "head.classification_head"), ("bbox_subnet", "head.regression_head")):
        names = _subnet_names(subnets[subnet], ours)
        for rel, v in subnets[subnet]:
            index, field = rel.split(".", 1)
            target = names.get(int(index))
            norm = target is not None and target.endswith(".1")
            if target is None or (norm and field not in _NORM_FIELDS) or (not norm and field not in ("weight", "bias")):
                unknown.append(f"head.{subnet}.{rel}")
            else:
                out.put(f"{target}.{field}", f"head.{subnet}.{rel}", v)
    _refuse_unknown(name, unknown, "detectron2")
    return out


def _torchvision_to_ours(state: dict[str, torch.Tensor], name: str, num_classes: int | None) -> _Out:
    out = _Out(name)
    unknown: list[str] = []
    offset = torchvision_fpn_offset(state)
    for k, v in state.items():
        if put_torchvision_backbone(out, k, v, offset, unknown):
            continue
        if m := _TV_TOP.match(k):
            out.put(f"backbone.top_block.{m.group(1)}.{m.group(2)}", k, v)
        elif m := _TV_HEAD.match(k):
            head, conv_part, index, sub, field = m.groups()[:5]
            if conv_part.startswith("conv.") and sub is None:  # torchvision before version 2: conv.{2i} (+ ReLU)
                out.put(f"head.{head}.conv.{int(index) // 2}.0.{field}", k, v)
            elif k not in (f"{CLS_LOGITS}.weight", f"{CLS_LOGITS}.bias"):
                out.put(k, k, v)
        else:
            unknown.append(k)
    _refuse_unknown(name, unknown, "torchvision")
    cls_w, cls_b = state[f"{CLS_LOGITS}.weight"], state[f"{CLS_LOGITS}.bias"]
    anchors = state[f"{BBOX_REG}.weight"].shape[0] // 4
    if anchors and cls_w.shape[0] == 91 * anchors and num_classes in (None, 80):
        rows = (91 * torch.arange(anchors)[:, None] + torch.tensor(COCO_CATEGORY_IDS)[None, :]).flatten()
        cls_w, cls_b = cls_w[rows], cls_b[rows]
        out.notes.append("torchvision's 91-way COCO classifier (class = COCO category id) reduced to the 80 COCO "
                         "classes in contiguous order (COCO_CATEGORY_IDS), for each of the "
                         f"{anchors} anchors; the rows of id 0 and the 10 unused ids dropped")
    out.put(f"{CLS_LOGITS}.weight", f"{CLS_LOGITS}.weight", cls_w)
    out.put(f"{CLS_LOGITS}.bias", f"{CLS_LOGITS}.bias", cls_b)
    return out


def check_retinanet_classes(state: Mapping[str, torch.Tensor], name: str, num_classes: int | None = None,
                            source_keys: Mapping[str, str] | None = None) -> int:
    """The class count of the converted head in `state` (our names); a CheckpointError naming the file, the key,
    the shapes and MODEL.RETINANET.NUM_CLASSES when its rows are not A x K (A anchors from the box regressor) or
    K is not `num_classes`."""
    cls_w, box_w = state[f"{CLS_LOGITS}.weight"], state[f"{BBOX_REG}.weight"]
    theirs = (source_keys or {}).get(f"{CLS_LOGITS}.weight", f"{CLS_LOGITS}.weight")
    anchors = box_w.shape[0] // 4
    if box_w.shape[0] % 4 or not anchors or cls_w.shape[0] % anchors:
        raise CheckpointError(f"'{name}': key '{theirs}' has shape {tuple(cls_w.shape)}, which is not A x K rows for "
                              f"the A = {box_w.shape[0]} / 4 anchors of the box regressor "
                              f"'{(source_keys or {}).get(f'{BBOX_REG}.weight', f'{BBOX_REG}.weight')}' "
                              f"{tuple(box_w.shape)}")
    k = cls_w.shape[0] // anchors
    if num_classes is not None and k != num_classes:
        want = (anchors * num_classes, *cls_w.shape[1:])
        raise CheckpointError(f"'{name}': key '{theirs}' is for {k} classes x {anchors} anchors, shape "
                              f"{tuple(cls_w.shape)}, but the model's is {want} ({NUM_CLASSES_KEY} = {num_classes}): "
                              f"set {NUM_CLASSES_KEY} to {k}" + (" (or 80: torchvision's 91-way COCO classifier then "
                                                                  "becomes the 80 contiguous COCO classes)"
                                                                  if k == 91 else ""))
    return k


def convert_retinanet_tensors(tensors: Mapping[str, torch.Tensor], source: str = "auto", name: str = "<state dict>",
                              num_classes: int | None = None):
    """(our RetinaNet state dict, family, dropped keys, notes, {our key: source key}) from unwrapped tensors."""
    if source not in ("auto", *_SOURCES):
        raise CheckpointError(f"unknown RetinaNet source '{source}'; choose from auto, {', '.join(_SOURCES)}")
    family = retinanet_family(tensors)
    if family is None:
        found = identify_detector(tensors)
        what = f"a {found[1]} file ({found[0]} names)" if found else "no detector head found"
        raise CheckpointError(f"'{name}' is not a whole torchvision or detectron2 RetinaNet ({what}); first keys: "
                              f"{list(tensors)[:6]}")
    if source != "auto" and family != source:
        raise CheckpointError(f"'{name}': source {source} given, but its names are {family}'s")
    missing = [k for k in _REQUIRED[family] if k not in tensors]
    if missing:
        raise CheckpointError(f"'{name}': this {family} RetinaNet file lacks head key(s) {missing}: the detector "
                              "cannot be filled from it")
    out = (_detectron2_to_ours(dict(tensors), name) if family == "detectron2"
           else _torchvision_to_ours(dict(tensors), name, num_classes))
    check_retinanet_classes(out.model, name, num_classes, out.source_keys)
    return out.model, family, out.dropped, out.notes, out.source_keys


def convert_retinanet(path_or_obj, source: str = "auto", trust: bool = False, num_classes: int | None = None,
                      name: str | None = None, **pixel_overrides) -> dict:
    """Read (if a path) and convert a whole torchvision / detectron2 RetinaNet file: the converted dict of the
    module docstring. `pixel_overrides` (format=, pixel_mean=, pixel_std=) replace the recorded convention."""
    weights = read_weights(path_or_obj, trust=trust, name=name)
    name, tensors, meta = weights.name, weights.tensors, weights.meta
    model, family, dropped, notes, source_keys = convert_retinanet_tensors(tensors, source, name, num_classes)
    pixels = _pixels(family, tensors, meta, dropped)
    pixels.update({k: v for k, v in pixel_overrides.items() if v is not None})
    if pixels["format"] not in ("RGB", "BGR"):
        raise CheckpointError(f"'{name}': pixel format must be 'RGB' or 'BGR', got {pixels['format']!r}")
    for note in notes:
        logger.info("'%s': %s", name, note)
    if dropped:
        logger.info("'%s': dropped %d keys a RetinaNet does not use: %s", name, len(dropped), ", ".join(dropped))
    return {"model": model, "format": pixels["format"], "pixel_mean": [float(x) for x in pixels["pixel_mean"]],
            "pixel_std": [float(x) for x in pixels["pixel_std"]], "source": family, "architecture": ARCHITECTURE,
            "num_classes": check_retinanet_classes(model, name), "dropped": list(dropped), "notes": list(notes),
            "source_keys": source_keys}
