"""Whole detectron2 backbone state dicts <-> our ResNet / FPN modules, both ways.

Our module names are detectron2's (see resnet.py and fpn.py), so the mapping is about where the backbone sits,
not about renaming layers:

    detectron2 model (GeneralizedRCNN, RetinaNet)      ours
    backbone.bottom_up.stem.conv1.weight               FPN: bottom_up.stem.conv1.weight   ResNet: stem.conv1.weight
    backbone.bottom_up.res2.0.conv1.norm.weight        FPN: bottom_up.res2.0.conv1.norm.weight
    backbone.fpn_lateral2.weight / fpn_output2.bias    FPN: fpn_lateral2.weight / fpn_output2.bias
    backbone.top_block.p6.weight (RetinaNet P6/P7)     FPN: top_block.p6.weight
    backbone.res4.0.conv1.weight (C4 / DC5 models)     ResNet: res4.0.conv1.weight
    roi_heads.res5.0.conv1.weight (C4 models only)     ResNet: res5.0.conv1.weight (with include_roi_res5)
    proposal_generator.*, roi_heads.* (heads)          not part of the backbone: left out (whole Faster R-CNNs:
                                                       detector_converters.py; back: ours_detector_to_detectron2)

Accepted inputs: a detectron2 model state dict, a detectron2 checkpoint {"model": ..., "iteration": ...}, the
model-zoo .pkl layout {"model": {name: numpy array}, "__author__": ...}, DDP-wrapped names ("module.backbone..."),
or the state dict of a detectron2 backbone by itself ("bottom_up.res2...", "fpn_lateral2..." / "res2...").
Caffe2/MSRA names (res2_0_branch2a_w) and torchvision names are converters.py's job, not this file's.

    ours_fpn.load_state_dict(detectron2_to_ours(torch.load("model_final.pth")["model"], target="fpn"))
    save_detectron2_checkpoint(ours_to_detectron2(ours_fpn.state_dict()), "for_detectron2.pkl")
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np
import torch

from . import CheckpointError
from .reader import read_weights, unwrap

__all__ = [
    "detectron2_to_ours",
    "ours_to_detectron2",
    "load_detectron2_checkpoint",
    "save_detectron2_checkpoint",
    "convert_to_detectron2",
    "is_detectron2_state_dict",
]

logger = logging.getLogger(__name__)

D2_BACKBONE = "backbone."
D2_BOTTOM_UP = "bottom_up."
D2_ROI_RES5 = "roi_heads.res5."
_RESNET_ROOTS = ("stem.", "res2.", "res3.", "res4.", "res5.", "linear.")
_FPN_ROOTS = (D2_BOTTOM_UP, "fpn_lateral", "fpn_output", "top_block.")
_TARGETS = ("fpn", "resnet")
_D2_LAYOUTS = ("fpn", "resnet", "c4")
_FROZEN_BN_EPS = 1e-5


def _tensors(checkpoint: Mapping[str, Any], where: str, roots: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict of `checkpoint` as reader.unwrap gives it (the "model" state, DDP prefix removed, numpy arrays
    as tensors); a value under a name starting with one of `roots` that is no array is a CheckpointError."""
    weights = unwrap(checkpoint, where.strip("'"))
    bad = [k for k in weights.skipped if k.startswith(roots)]
    if bad:
        raise CheckpointError(f"{where}: key '{bad[0]}' holds a {weights.skipped[bad[0]]}, not an array or tensor")
    return dict(weights.tensors)


def _select(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def is_detectron2_state_dict(state: Mapping[str, Any]) -> bool:
    """True when `state` (or state["model"]) has detectron2 backbone names ("backbone.bottom_up.res2..." etc.)."""
    try:
        state = _tensors(state, "state dict")
    except CheckpointError:
        return False
    return any(k.startswith(D2_BACKBONE + D2_BOTTOM_UP) or k.startswith(D2_BACKBONE + "fpn_lateral")
               or k.startswith(D2_BACKBONE + "res") or k.startswith(D2_BACKBONE + "stem.") for k in state)


def _fill_frozen_bn_stats(state: dict[str, torch.Tensor]) -> list[str]:
    """Add running_mean 0 / running_var 1 - eps to norms that only carry weight and bias (old FrozenBN files),
    which makes our FrozenBatchNorm2d apply exactly y = x * weight + bias. Returns the norms it filled."""
    filled = []
    for key in list(state):
        if not key.endswith(".norm.weight"):
            continue
        base = key[: -len("weight")]
        if base + "bias" in state and base + "running_mean" not in state and base + "running_var" not in state:
            w = state[key]
            state[base + "running_mean"] = torch.zeros_like(w)
            state[base + "running_var"] = torch.full_like(w, 1.0 - _FROZEN_BN_EPS)
            filled.append(base[:-1])
    return filled


def detectron2_to_ours(checkpoint: Mapping[str, Any], target: str = "fpn", include_roi_res5: bool = True,
                       source: str = "detectron2 state dict") -> dict[str, torch.Tensor]:
    """The backbone part of a detectron2 state dict / checkpoint, named for our modules.

    Args:
        checkpoint: see the module docstring for the accepted layouts. numpy arrays become tensors.
        target: "fpn" for our FPN (keys "bottom_up.res2...", "fpn_lateral2...", "top_block..."), "resnet" for our
            ResNet (keys "stem...", "res2..."), taken from an FPN model's bottom_up or from a C4/DC5 model's backbone.
        include_roi_res5: for target "resnet" from a detectron2 C4 model, whose res5 lives in the box head
            (roi_heads.res5.*), bring it in as our res5.
        source: how to name the input in error messages (e.g. the file name).

    Raises CheckpointError (naming `source`) when there is no detectron2 backbone in the input or it cannot give the
    requested target (an FPN from a model that has none).
    """
    if target not in _TARGETS:
        raise CheckpointError(f"{source}: target must be one of {_TARGETS}, got {target!r}")
    state = _tensors(checkpoint, source, (D2_BACKBONE, D2_ROI_RES5, *_FPN_ROOTS, *_RESNET_ROOTS))
    state = {k: (k, v) for k, v in state.items()}  # keep each value's original name for error messages
    backbone = _select(state, D2_BACKBONE)
    if not backbone:  # maybe a detectron2 backbone's own state dict
        if any(k.startswith(_FPN_ROOTS) or k.startswith(_RESNET_ROOTS) for k in state):
            backbone = {k: v for k, v in state.items() if k.startswith(_FPN_ROOTS) or k.startswith(_RESNET_ROOTS)}
        else:
            sample = ", ".join(sorted(state)[:5])
            raise CheckpointError(f"{source}: no detectron2 backbone weights (no key starts with 'backbone.', "
                                  f"'bottom_up.', 'fpn_', 'stem.' or 'res2.'); first keys: {sample or '(none)'}")
    has_fpn = any(k.startswith(_FPN_ROOTS) for k in backbone)

    if target == "fpn":
        if not has_fpn:
            raise CheckpointError(f"{source}: this detectron2 model has a plain ResNet backbone (a C4/DC5 model: "
                                  "keys 'backbone.res2...'), no FPN; convert it with target='resnet'")
        out = {k: v for k, v in backbone.items() if k.startswith(_FPN_ROOTS)}
    else:
        out = _select(backbone, D2_BOTTOM_UP) if has_fpn else dict(backbone)
        if not has_fpn and include_roi_res5:
            res5 = _select(state, D2_ROI_RES5)
            if res5 and not any(k.startswith("res5.") for k in out):
                out.update({"res5." + k: v for k, v in res5.items()})
        out = {k: v for k, v in out.items() if k.startswith(_RESNET_ROOTS)}
        if not out:
            raise CheckpointError(f"{source}: no ResNet weights under the detectron2 backbone")

    out = {k: v for k, (_, v) in out.items()}
    if len(state) > len(out):
        logger.info("%s: took %d backbone tensors, left out %d others (heads)", source, len(out),
                    len(state) - len(out))
    filled = _fill_frozen_bn_stats(out)
    if filled:
        logger.info("%s: %d norms had no running statistics (old FrozenBN); set mean 0, var 1-eps, e.g. %s",
                    source, len(filled), filled[0])
    return out


def _refuse_fpn_without_output_convs(state: Mapping[str, Any], prefix: str, source: str) -> None:
    """detectron2's FPN always has its 3x3 output convs: an FPN of ours built without them (MODEL.FPN.OUTPUT_CONVS
    False) has no detectron2 counterpart (detectron2 would keep fpn_output* at their initialisation)."""
    lateral = sorted(k for k in state if k.startswith(prefix + "fpn_lateral"))
    if lateral and not any(k.startswith(prefix + "fpn_output") for k in state):
        raise CheckpointError(f"{source}: an FPN without its 3x3 output convs ({lateral[0]} but no "
                              f"{prefix}fpn_output*: MODEL.FPN.OUTPUT_CONVS False) has no detectron2 counterpart; "
                              "detectron2's FPN would keep its fpn_output convs at their initialisation")


def ours_to_detectron2(state_dict: Mapping[str, torch.Tensor], layout: str | None = None,
                       numpy: bool = False) -> dict[str, Any]:
    """Our FPN or ResNet state dict in detectron2's model names, ready to load into a detectron2 model.

    Args:
        state_dict: our FPN's ("bottom_up.*", "fpn_*", "top_block.*") or our ResNet's ("stem.*", "res2.*", ...).
        layout: where the weights go in detectron2. "fpn": under "backbone." (an FPN) or "backbone.bottom_up."
            (a ResNet, to sit under a detectron2 FPN model). "resnet": a ResNet under "backbone." (DC5 models).
            "c4": a ResNet under "backbone." with res5 under "roi_heads.res5." (detectron2's C4 models).
            Default: "fpn".
        numpy: values as numpy arrays (the model-zoo .pkl convention) instead of tensors.
    """
    layout = layout or "fpn"
    if layout not in _D2_LAYOUTS:
        raise CheckpointError(f"ours_to_detectron2: layout must be one of {_D2_LAYOUTS}, got {layout!r}")
    state = _tensors(state_dict, "ours_to_detectron2")
    unknown = sorted(k for k in state if not (k.startswith(_FPN_ROOTS) or k.startswith(_RESNET_ROOTS)))
    if unknown:
        raise CheckpointError(f"ours_to_detectron2: not an FPN or ResNet state dict of ours; unexpected keys "
                              f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    is_fpn = any(k.startswith(_FPN_ROOTS) for k in state)
    if is_fpn and layout != "fpn":
        raise CheckpointError(f"ours_to_detectron2: an FPN state dict only fits detectron2's FPN models, not "
                              f"layout {layout!r}")
    _refuse_fpn_without_output_convs(state, "", "ours_to_detectron2")
    out = {}
    for k, v in state.items():
        if is_fpn:
            name = D2_BACKBONE + k
        elif layout == "fpn":
            name = D2_BACKBONE + D2_BOTTOM_UP + k
        elif layout == "c4" and k.startswith("res5."):
            name = D2_ROI_RES5 + k[len("res5."):]
        else:
            name = D2_BACKBONE + k
        out[name] = v.detach().cpu().numpy() if numpy else v
    return out


_OURS_RPN = re.compile(r"^rpn\.head\.(?:conv\.(\d+)\.0|(cls_logits|bbox_pred))\.(weight|bias)$")
_OURS_BOX_HEAD = re.compile(r"^roi_heads\.box_head\.(fc6|fc7|\d+)\.(?:([01])\.)?(.+)$")
_OURS_MASK = re.compile(r"^roi_heads\.(?:mask_head\.(\d+)\.([01])|mask_predictor\.(conv5_mask|mask_fcn_logits))\."
                        r"(.+)$")
_CLS_SCORE = "roi_heads.box_predictor.cls_score"
_BBOX_PRED = "roi_heads.box_predictor.bbox_pred"


def ours_detector_to_detectron2(state_dict: Mapping[str, Any], numpy: bool = False,
                                source: str = "ours_detector_to_detectron2") -> dict[str, Any]:
    """Our whole FasterRCNN state dict -> detectron2 GeneralizedRCNN names (FPN, StandardROIHeads, box head only).

    The inverse of detector_converters' detectron2 -> ours: backbone.* unchanged; rpn.head.conv.{k}.0 ->
    proposal_generator.rpn_head.conv (one conv) or .conv.conv{k} (several), cls_logits -> objectness_logits,
    bbox_pred -> anchor_deltas; roi_heads.box_head fc6/fc7 (or the FastRCNNConvFCHead sequence {i}.0 / {i}.1 /
    {C+1+2j}) -> conv{i+1}[.norm] / fc{j+1}; box_predictor.cls_score's background row 0 moved last, bbox_pred's 4
    background rows dropped; the mask branch (MODEL.MASK_ON) roi_heads.mask_head.{i}.0 / .1 -> mask_head.mask_fcn{i+1}
    / .norm, mask_predictor.conv5_mask -> mask_head.deconv, mask_fcn_logits -> mask_head.predictor without our
    background channel 0 (K channels; a 1-channel class-agnostic one as it is). Any other key is a CheckpointError
    naming it.
    """
    state = _tensors(state_dict, source)
    _refuse_fpn_without_output_convs(state, D2_BACKBONE, source)
    rpn_convs = sorted({int(m.group(1)) for k in state if (m := _OURS_RPN.match(k)) and m.group(1) is not None})
    # box head: sequence indices holding convs ({i}.0.weight 4-d) and fcs ({n}.weight 2-d), in order
    conv_idx = sorted({int(m.group(1)) for k in state if (m := _OURS_BOX_HEAD.match(k)) and m.group(2) is not None})
    fc_idx = sorted({int(m.group(1)) for k in state
                     if (m := _OURS_BOX_HEAD.match(k)) and m.group(2) is None and m.group(1).isdigit()})
    out: dict[str, Any] = {}
    unknown = []
    for k, v in state.items():
        if k.startswith(D2_BACKBONE):
            name = k
        elif m := _OURS_RPN.match(k):
            conv, head, field = m.groups()
            if head is not None:
                name = f"proposal_generator.rpn_head.{'objectness_logits' if head == 'cls_logits' else 'anchor_deltas'}"
            elif len(rpn_convs) == 1:
                name = "proposal_generator.rpn_head.conv"
            else:
                name = f"proposal_generator.rpn_head.conv.conv{rpn_convs.index(int(conv))}"
            name += f".{field}"
        elif m := _OURS_BOX_HEAD.match(k):
            module, part, field = m.groups()
            if module in ("fc6", "fc7"):
                name = f"roi_heads.box_head.fc{1 if module == 'fc6' else 2}.{field}"
            elif part is not None:
                name = f"roi_heads.box_head.conv{conv_idx.index(int(module)) + 1}." + (
                    field if part == "0" else f"norm.{field}")
            else:
                name = f"roi_heads.box_head.fc{fc_idx.index(int(module)) + 1}.{field}"
        elif k in (f"{_CLS_SCORE}.weight", f"{_CLS_SCORE}.bias"):
            name, v = k, torch.cat([v[1:], v[:1]])  # background: row 0 -> last
        elif k in (f"{_BBOX_PRED}.weight", f"{_BBOX_PRED}.bias"):
            name, v = k, v[4:]  # the 4 background rows are never used
        elif m := _OURS_MASK.match(k):
            index, part, module, field = m.groups()
            if module == "conv5_mask":
                name = f"roi_heads.mask_head.deconv.{field}"
            elif module == "mask_fcn_logits":
                name, v = f"roi_heads.mask_head.predictor.{field}", (v[1:] if v.shape[0] > 1 else v)
            else:
                name = f"roi_heads.mask_head.mask_fcn{int(index) + 1}." + (field if part == "0" else f"norm.{field}")
        else:
            unknown.append(k)
            continue
        out[name] = v.detach().cpu().numpy() if numpy else v
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of our FasterRCNN (FPN, box and mask heads): "
                              f"{unknown[:10]}" + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""))
    return out


def load_detectron2_checkpoint(path: str, target: str = "fpn", include_roi_res5: bool = True, trust: bool = False
                               ) -> dict[str, torch.Tensor]:
    """Read a detectron2 checkpoint file (.pth from its trainer, or a model-zoo .pkl) and return the backbone
    in our names (see `detectron2_to_ours`). Files are read by `reader.read_weights`: .pkl through the
    restricted unpickler (numpy arrays and plain containers only), others with torch.load(weights_only=True);
    `trust=True` allows a .pth that needs full unpickling."""
    data = read_weights(path, trust=trust)
    return detectron2_to_ours(data, target=target, include_roi_res5=include_roi_res5, source=f"'{path}'")


def save_detectron2_checkpoint(d2_state: Mapping[str, Any], path: str, author: str = "resnet_backbone",
                               extra: Mapping[str, Any] | None = None) -> None:
    """Write detectron2-named weights where detectron2's DetectionCheckpointer reads them by exact name:
    .pkl -> {"model": numpy arrays, "__author__": author, "matching_heuristics": False}; else torch.save
    {"model": tensors, "__author__": author}. `extra`: more top-level plain values (tools/convert_weights.py
    records "format" / "pixel_mean" / "pixel_std" there; detectron2 ignores them, our readers take them)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    if path.endswith(".pkl"):
        model = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                 for k, v in d2_state.items()}
        with open(path, "wb") as f:
            pickle.dump({"model": model, "__author__": author, "matching_heuristics": False, **extra}, f)
    else:
        model = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)))
                 for k, v in d2_state.items()}
        torch.save({"model": model, "__author__": author, **extra}, path)


def convert_to_detectron2(path_or_obj, layout: str | None = None, source: str = "auto", trust: bool = False) -> dict:
    """Any weights we can read -> detectron2 names (what `tools/convert_weights.py --to detectron2` writes).

    A whole Faster / Mask R-CNN (ours: our checkpoint or state dict, or a converted file of one; with source "auto"
    also a detectron2 / torchvision one, "detectron2_detector" / "torchvision_detector" insist on it) is written whole
    in detectron2's GeneralizedRCNN names (`ours_detector_to_detectron2`; layout "fpn" only). Another checkpoint that
    holds an FPN (e.g. ours with partial heads, or a detectron2 RetinaNet) keeps the whole FPN
    ("backbone.bottom_up.*", "backbone.fpn_*", "backbone.top_block.*"); heads are left out. Anything else goes
    through converters.py (torchvision / timm / Caffe2 / detectron2 ResNet names) and its ResNet is written for
    `layout` ("fpn": under backbone.bottom_up., "resnet", "c4"; see `ours_to_detectron2`). Returns {"model":
    detectron2-named tensors, "format", "pixel_mean", "pixel_std", "source"[, "architecture"]}: the input convention
    detectron2's INPUT.FORMAT / MODEL.PIXEL_MEAN / PIXEL_STD must be set to.
    """
    from .converters import convert_checkpoint  # converters imports this package; keep the import lazy
    from .detector_converters import CONVERTIBLE, DETECTOR_SOURCES, convert_detector, identify_detector

    weights = read_weights(path_or_obj, trust=trust)
    name = f"'{weights.name}'" if isinstance(path_or_obj, (str, os.PathLike)) else weights.name
    whole = {"auto": None, "ours": "ours", "detectron2_detector": "detectron2", "torchvision_detector": "torchvision"}
    found = identify_detector(weights.tensors) if source in whole else None
    if source == "ours" and found is not None and found[0] != "ours":
        found = None  # --source ours on a file in torchvision / detectron2 names: not a whole detector of ours
    if source.endswith("_detector") and (found is None or found[0] != whole[source]):
        raise CheckpointError(f"{name}: --source {source} given, but it is not a whole {whole[source]} Faster R-CNN "
                              f"({'a ' + found[1] + ' in ' + found[0] + ' names' if found else 'no detector heads'})")
    if found is not None and found[1] in CONVERTIBLE and layout in (None, "fpn"):
        # a whole Faster R-CNN: ours directly, a torchvision / detectron2 one through our names
        if found[0] == "ours":
            pixels, ours = convert_checkpoint(weights, source="ours"), weights.tensors
            recorded = weights.meta.get("source")
            used = recorded if recorded in DETECTOR_SOURCES else "ours"  # one of our converted files
        else:
            pixels = convert_detector(weights, source=found[0])
            ours, used = pixels["model"], found[0]
        d2 = ours_detector_to_detectron2(ours, source=name)
        return {"model": d2, **{k: pixels[k] for k in ("format", "pixel_mean", "pixel_std")}, "source": used,
                "architecture": "FasterRCNN"}
    if source in ("detectron2_detector", "torchvision_detector"):
        raise CheckpointError(f"{name} is a {found[1]} file: only a Faster / Mask R-CNN converts whole (layout "
                              "'fpn')")
    converted = convert_checkpoint(weights, source=source)
    raw = weights.tensors
    backbone = _select(raw, D2_BACKBONE) or raw
    if source in ("auto", "detectron2", "ours") and any(k.startswith(_FPN_ROOTS[1:]) for k in backbone):
        if layout not in (None, "fpn"):
            raise CheckpointError(f"{name}: holds an FPN, which only fits detectron2's FPN models (layout 'fpn'), "
                                  f"not {layout!r}")
        d2 = ours_to_detectron2(detectron2_to_ours(weights, target="fpn", source=name), layout="fpn")
    else:
        resnet = {k: v for k, v in converted["model"].items() if k.startswith(_RESNET_ROOTS)}
        if not resnet:
            raise CheckpointError(f"{name}: no ResNet weights found to convert")
        d2 = ours_to_detectron2(resnet, layout=layout)
    return {"model": d2, **{k: converted[k] for k in ("format", "pixel_mean", "pixel_std", "source")}}
