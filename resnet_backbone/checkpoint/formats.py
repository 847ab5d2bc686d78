"""The registry of weight-file formats: each format is one entry that detects its files, converts them to our
names and, where a reverse exists, back.

    FORMATS[name] = Format(name, detect, naming, whole, to_ours, from_ours, pixels)
    detect_format(weights, source="auto") -> Format

`weights` is what reader.read_weights returns (the one reader: tensors unwrapped once, file-level values in
`meta`). Detection is by decisive markers (a tag, a recorded field, a key only that format has), never by how many
names overlap a model; when two formats claim a file, a CheckpointError names both. The entries:

    format                claimed by (markers)                                 naming       to_ours gives
    ours                  our `__format__` tag, or a converted file's "source" detectron2   the names as they are
                          field (tools/convert_weights.py; no `__author__`)
    torchvision           `layer1.0.conv1.weight` at any prefix, no detector   torchvision  our ResNet names
                          / DETR heads
    timm                  never by names (timm's ResNets are torchvision's,    torchvision  our ResNet names
                          name for name): source="timm" chooses it
    detectron2            our / detectron2's ResNet names (`stem.conv1.weight`, detectron2   our ResNet names
                          `res2.0.conv1.weight`) at any prefix, no tag or
                          detectron2 detector heads; untagged state dicts of
                          ours are such files (our names are detectron2's)
    caffe2                `conv1_w`, `res_conv1_bn_s`, `res2_0_branch2a_w`     caffe2       our ResNet names
    detectron2_detector   detectron2 detector heads (`proposal_generator.*`,   detectron2   our FasterRCNN (whole)
                          `roi_heads.res5.*`, mask / keypoint / RetinaNet ...)
    torchvision_detector  `backbone.body.*` with `rpn.*` / `roi_heads.*` /     torchvision  our FasterRCNN (whole)
                          `head.*` (fasterrcnn_resnet50_fpn v1 and _v2, ...)
    detectron2_retinanet  detectron2 RetinaNet heads (`head.cls_score.*`)      detectron2   our RetinaNet (whole)
    torchvision_retinanet `backbone.body.*` with `head.classification_head.    torchvision  our RetinaNet (whole)
                          cls_logits.*` (retinanet_resnet50_fpn)
    detr                  `backbone.0.body.*` with `query_embed.weight`        torchvision  our DETR (whole)
                          (facebookresearch/detr)
    state_dict            claimed when no other format is: a module's own      -            the names as they are
                          state dict (loads by name)

detectron2_detector / torchvision_detector convert Faster R-CNN and Mask R-CNN files (FPN) whole into our FasterRCNN
(a Mask R-CNN into one built with MODEL.MASK_ON; detector_converters.CONVERTIBLE); the other architectures they
claim (keypoint, cascade, C4, ...) are refused naming them.

`naming` is how the file's ResNet is named: `converters.convert_checkpoint` / `load_backbone_weights` convert
those names only (any format: a detector's or DETR's backbone too). `to_ours(weights, ...)` converts the whole
file (`whole`: the model it fills; None: backbone / plain names). `from_ours`: detectron2 and detectron2_detector
write our names as detectron2's (detectron2_names.py). `pixels`: the input convention the format's weights imply
(PIXEL_CONVENTIONS); what a file records wins (`convention_of`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from . import CheckpointError
from .checkpointer import is_own_checkpoint
from .converters import _C2_KEY, _D2_STAGE, _D2_STEM, _TV_ANCHOR, SOURCES, convert_checkpoint
from .detector_converters import convert_detector, identify_detector
from .detectron2_names import ours_detector_to_detectron2, ours_to_detectron2
from .detr_converter import convert_detr_weights
from .reader import PIXEL_CONVENTIONS, PIXEL_KEYS, Weights
from .retinanet_converter import convert_retinanet, retinanet_family

__all__ = ["Format", "FORMATS", "detect_format", "claims", "convention_of", "CONVERTED_SOURCES"]

# what a converted file's "source" field may say (converters.save_converted writes it)
CONVERTED_SOURCES = (*SOURCES, "detr")


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[Weights], bool]
    naming: str | None  # how its ResNet is named: "torchvision" | "detectron2" | "caffe2"; None: not a ResNet's
    to_ours: Callable[..., dict]
    whole: str | None = None  # the model to_ours fills whole ("FasterRCNN", "DETR"); None: backbone / plain names
    from_ours: Callable[..., dict] | None = None
    pixels: dict | None = None  # the input convention its weights imply; None: only what the file records


# ------------------------------------------------------------------------------------------------ markers
def _any(weights: Weights, pattern: re.Pattern) -> bool:
    return any(pattern.match(k) for k in weights.tensors)


def _is_ours(w: Weights) -> bool:
    return is_own_checkpoint(w.raw) or (w.meta.get("source") in CONVERTED_SOURCES and "__author__" not in w.meta)


def _detector_family(w: Weights) -> str | None:
    found = identify_detector(w.tensors)
    return None if found is None else found[0]


def _is_detr(w: Weights) -> bool:
    return "query_embed.weight" in w.tensors and any(k.startswith("backbone.0.body.") for k in w.tensors)


def _is_torchvision(w: Weights) -> bool:
    return _any(w, _TV_ANCHOR) and _detector_family(w) != "torchvision" and not _is_detr(w)


def _is_detectron2(w: Weights) -> bool:
    return ((_any(w, _D2_STEM) or _any(w, _D2_STAGE)) and not _is_ours(w)
            and _detector_family(w) != "detectron2")


# ------------------------------------------------------------------------------------------------ conversions
def _backbone(name: str):
    def to_ours(weights: Weights, **pixel_overrides) -> dict:
        return convert_checkpoint(weights, source=name, **pixel_overrides)
    return to_ours


def _as_is(weights: Weights, **_) -> dict:
    return {"model": dict(weights.tensors), **{k: weights.meta.get(k) for k in PIXEL_KEYS}, "source": "ours"}


def _detector(family: str):
    def to_ours(weights: Weights, num_classes: int | None = None, **pixel_overrides) -> dict:
        return convert_detector(weights, source=family, num_classes=num_classes, **pixel_overrides)
    return to_ours


def _retinanet(family: str):
    def to_ours(weights: Weights, num_classes: int | None = None, **pixel_overrides) -> dict:
        return convert_retinanet(weights, source=family, num_classes=num_classes, **pixel_overrides)
    return to_ours


def _rcnn_family(w: Weights) -> str | None:
    """_detector_family for the files the Faster R-CNN converter takes: RetinaNet files have their own formats."""
    return None if retinanet_family(w.tensors) is not None else _detector_family(w)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("ours", _is_ours, "detectron2", _backbone("ours")),
    Format("torchvision", _is_torchvision, "torchvision", _backbone("torchvision"),
           pixels=PIXEL_CONVENTIONS["torchvision"]),
    Format("timm", lambda w: False, "torchvision", _backbone("timm"), pixels=PIXEL_CONVENTIONS["timm"]),
    Format("detectron2", _is_detectron2, "detectron2", _backbone("detectron2"), from_ours=ours_to_detectron2,
           pixels=PIXEL_CONVENTIONS["detectron2"]),
    Format("caffe2", lambda w: _any(w, _C2_KEY), "caffe2", _backbone("caffe2"), pixels=PIXEL_CONVENTIONS["caffe2"]),
    Format("detectron2_detector", lambda w: _rcnn_family(w) == "detectron2", "detectron2",
           _detector("detectron2"), whole="FasterRCNN", from_ours=ours_detector_to_detectron2,
           pixels=PIXEL_CONVENTIONS["detectron2"]),
    Format("torchvision_detector", lambda w: _rcnn_family(w) == "torchvision", "torchvision",
           _detector("torchvision"), whole="FasterRCNN", pixels=PIXEL_CONVENTIONS["torchvision"]),
    Format("detectron2_retinanet", lambda w: retinanet_family(w.tensors) == "detectron2", "detectron2",
           _retinanet("detectron2"), whole="RetinaNet", pixels=PIXEL_CONVENTIONS["detectron2"]),
    Format("torchvision_retinanet", lambda w: retinanet_family(w.tensors) == "torchvision", "torchvision",
           _retinanet("torchvision"), whole="RetinaNet", pixels=PIXEL_CONVENTIONS["torchvision"]),
    Format("detr", _is_detr, "torchvision", convert_detr_weights, whole="DETR", pixels=PIXEL_CONVENTIONS["detr"]),
    Format("state_dict", lambda w: False, None, _as_is),
)}
# source= names that choose a format's backbone conversion (converters.SOURCES) or the whole file
BACKBONE_SOURCES = SOURCES


def claims(weights: Weights) -> list[str]:
    """The names of the formats whose markers the file carries (one for every well-formed file)."""
    return [f.name for f in FORMATS.values() if f.detect(weights)]


def detect_format(weights: Weights, source: str = "auto", backbone: bool = False) -> Format:
    """The one format that claims `weights` ("state_dict" when none does); `source` other than "auto" chooses one
    by name. backbone=True: `source` is one of converters.SOURCES (the backbone namings)."""
    choices = SOURCES if backbone else tuple(FORMATS)
    if source != "auto":
        if source not in choices:
            raise CheckpointError(f"unknown checkpoint source '{source}'; choose from auto, {', '.join(choices)}")
        return FORMATS[source]
    found = claims(weights)
    if len(found) > 1:
        raise CheckpointError(f"'{weights.name}' carries the markers of several formats ({', '.join(found)}): pass "
                              "the source explicitly (tools/convert_weights.py --source)")
    return FORMATS[found[0] if found else "state_dict"]


def convention_of(fmt: Format, weights: Weights) -> tuple[str | None, dict]:
    """(the source the file is reported as, the input convention {"format", "pixel_mean", "pixel_std"} its weights
    expect: what the file records, over what its format implies; None where neither says). The source is None for
    a whole-model format (its to_ours decides; detector_converters reads the detector's own buffers)."""
    recorded: dict[str, Any] = {k: weights.meta[k] for k in PIXEL_KEYS if weights.meta.get(k) is not None}
    if fmt.whole is not None:
        return None, {**(fmt.pixels or dict.fromkeys(PIXEL_KEYS)), **recorded}
    if fmt.name == "ours":
        source = weights.meta.get("source") if not is_own_checkpoint(weights.raw) else "ours"
        if source in (None, "ours") or not recorded:
            return "ours", {**dict.fromkeys(PIXEL_KEYS), **recorded}  # only what it records: nothing is guessed
        return source, {**PIXEL_CONVENTIONS.get(source, dict.fromkeys(PIXEL_KEYS)), **recorded}
    pixels = dict(fmt.pixels or dict.fromkeys(PIXEL_KEYS))
    if fmt.name == "detectron2" and "torchvision" in str(weights.meta.get("__author__", "")).lower():
        pixels = dict(PIXEL_CONVENTIONS["torchvision"])  # detectron2's conversions of torchvision weights
    return fmt.name, {**pixels, **recorded}
