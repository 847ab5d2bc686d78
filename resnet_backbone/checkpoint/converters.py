"""Convert ResNet weights from torchvision, timm, detectron2 and Caffe2/MSRA names to ours, and load them.

Stable API (the engine calls this for cfg.MODEL.WEIGHTS):

    load_backbone_weights(module, path_or_state, prefix=None, trust=False, source="auto") -> LoadResult

      module         any nn.Module containing our ResNet (a bare ResNet, a detector with it at
                     `backbone.bottom_up.` or `backbone.`, ...). With prefix=None the ResNet is found by its
                     `stem.conv1.weight`; pass `prefix="backbone.bottom_up."` to choose explicitly.
      path_or_state  a file (.pth/.pt via torch.load(weights_only=True); .pkl via the restricted unpickler)
                     or an already loaded object (state dict, {"model": ...}, {"blobs": ...}).
      trust          allow a .pth that needs full unpickling (arbitrary Python objects). Off by default.
      source         "auto" | "torchvision" | "timm" | "detectron2" | "caffe2" | "ours".
      returns        LoadResult(missing_keys, unexpected_keys, source, prefix, meta, loaded_keys); missing
                     and unexpected keys are also logged by name. meta = {"format", "pixel_mean", "pixel_std"}:
                     the input convention the weights were trained with (None for a value our own checkpoint
                     does not record). loaded_keys: the module's state-dict names the file filled.
      raises         CheckpointError naming the file: unreadable/corrupt/refused file, unknown layout, or a
                     shape mismatch (naming the key and both shapes; nothing is loaded then).

Name maps (ours are detectron2's):

    torchvision / timm          ours                       Caffe2 / MSRA (.pkl)
    conv1.weight                stem.conv1.weight          conv1_w
    bn1.{weight,bias,           stem.conv1.norm.*          res_conv1_bn_{s,b,rm,riv}
        running_mean,running_var}
    layer{k}.{i}.conv{j}.weight res{k+1}.{i}.conv{j}.weight res{k+1}_{i}_branch2{a,b,c}_w
    layer{k}.{i}.bn{j}.*        res{k+1}.{i}.conv{j}.norm.* res{k+1}_{i}_branch2{a,b,c}_bn_{s,b,rm,riv}
    layer{k}.{i}.downsample.0.weight  ...shortcut.weight   res{k+1}_{i}_branch1_w
    layer{k}.{i}.downsample.1.*       ...shortcut.norm.*   res{k+1}_{i}_branch1_bn_*
    fc.{weight,bias}            linear.{weight,bias}       fc1000_{w,b}

detectron2 checkpoints already use our names, often under `backbone.bottom_up.` (model-zoo .pkl files are
{"model": {name: numpy array}, "__author__": ...}). Caffe2 norms that only store a scale `s` and shift `b`
(an affine "FrozenBN") get running_mean 0 and running_var 1 - eps, so (x - 0) / sqrt(1 - eps + eps) * s + b
is exactly s * x + b. Keys outside the ResNet (e.g. detectron2's `backbone.fpn_lateral2.weight`) keep their
names and load where the module has exactly that name; otherwise they are reported as unexpected.

A converted file (`save_converted`, tools/convert_weights.py) is a torch.save'd dict
{"model": state dict in our ResNet names, "format": "RGB"|"BGR", "pixel_mean": [...], "pixel_std": [...],
 "source": "torchvision"|"timm"|"detectron2"|"caffe2"|"ours"}. Whole detectron2 / torchvision Faster R-CNN files
are detector_converters.py's job (the whole detector in our FasterRCNN names, + "architecture": "FasterRCNN",
"num_classes", "dropped", "notes"); this module's functions keep treating them as backbone weights.

Our own checkpoints (what the Checkpointer / Trainer writes) are recognised by their `__format__` tag
("resnet_backbone.checkpoint/<version>") on a dict with a "model" state dict, never by key names (ours are
detectron2's, so names alone cannot tell them apart): source "ours". They keep the input convention they
record ("format" / "pixel_mean" / "pixel_std", written from the model's INPUT.FORMAT / MODEL.PIXEL_MEAN /
PIXEL_STD); a value they do not record is None (and left out of a converted file): nothing is guessed, the
config's value applies. A converted file with source "ours" is read back the same way.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from . import CheckpointError
from .reader import PIXEL_CONVENTIONS, PIXEL_KEYS, read_weights, unwrap

__all__ = [
    "LoadResult",
    "SOURCES",
    "PIXEL_CONVENTIONS",
    "detect_source",
    "convert_state_dict",
    "convert_checkpoint",
    "save_converted",
    "load_backbone_weights",
    "find_resnet_prefix",
]

logger = logging.getLogger(__name__)

SOURCES = ("torchvision", "timm", "detectron2", "caffe2", "ours")

_PIXEL_KEYS = PIXEL_KEYS
_RESNET_ROOTS = ("stem", "res2", "res3", "res4", "res5", "linear")
_BN_EPS = 1e-5


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]
    source: str
    prefix: str
    meta: dict
    loaded_keys: tuple[str, ...] = ()


# -------------------------------------------------------------------------------------------- detection
_TV_ANCHOR = re.compile(r"^(.*?)layer1\.0\.conv1\.weight$")
_D2_STEM = re.compile(r"^(.*?)stem\.conv1\.weight$")
_D2_STAGE = re.compile(r"^(.*?)res[2-5]\.\d+\.conv1\.weight$")
_C2_KEY = re.compile(r"^(conv1_w|res_conv1_(bn|gn)_s|res\d+_\d+_branch\d)")


def detect_source(state: Mapping[str, Any], name: str = "<state dict>") -> str:
    """"torchvision" | "detectron2" | "caffe2": the ResNet naming of a file's backbone, from the format that claims
    it (formats.py; timm ResNets use torchvision's names, ours are detectron2's)."""
    from .formats import detect_format

    return _naming(detect_format(unwrap(state, name)), unwrap(state, name))


def _naming(fmt, weights) -> str:
    if fmt.naming is None:
        keys = list(weights.tensors)
        raise CheckpointError(f"'{weights.name}': cannot tell which ResNet naming this checkpoint uses (not "
                              f"torchvision/timm 'layer1.0.conv1.weight', detectron2 'res2.0.conv1.weight' or "
                              f"Caffe2 'res2_0_branch2a_w'); first keys: {keys[:8]}")
    return fmt.naming


def _common_prefix(keys: list[str], pattern: re.Pattern, name: str, what: str) -> str:
    prefixes = sorted({m.group(1) for k in keys if (m := pattern.match(k))}, key=len)
    if len(prefixes) > 1:
        raise CheckpointError(f"'{name}': several {what} ResNets in one checkpoint (prefixes {prefixes}); "
                              "convert a state dict holding one of them")
    return prefixes[0] if prefixes else ""


# ------------------------------------------------------------------------------------------ conversions
_TV_STAGE = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def _torchvision_key(rel: str) -> str | None:
    if rel == "conv1.weight":
        return "stem.conv1.weight"
    if rel.startswith("bn1."):
        return "stem.conv1.norm." + rel[len("bn1."):]
    if rel.startswith("fc."):
        return "linear." + rel[len("fc."):]
    m = _TV_STAGE.match(rel)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    head = f"res{stage}.{block}."
    if m2 := re.match(r"^conv(\d)\.weight$", rest):
        return f"{head}conv{m2.group(1)}.weight"
    if m2 := re.match(r"^bn(\d)\.(.+)$", rest):
        return f"{head}conv{m2.group(1)}.norm.{m2.group(2)}"
    if rest.startswith("downsample.0."):
        return f"{head}shortcut.{rest[len('downsample.0.'):]}"
    if rest.startswith("downsample.1."):
        return f"{head}shortcut.norm.{rest[len('downsample.1.'):]}"
    return None


def _convert_torchvision(state: dict, name: str) -> dict:
    prefix = _common_prefix(list(state), _TV_ANCHOR, name, "torchvision-named")
    for k in state:
        rel = k[len(prefix):] if k.startswith(prefix) else None
        if rel is not None and (re.match(r"^conv1\.\d+\.", rel) or re.match(r"^layer\d\.\d+\.downsample\.2\.", rel)):
            raise CheckpointError(f"'{name}': key '{k}' belongs to a ResNet-D variant (deep stem or avg-pool "
                                  "shortcut, e.g. timm 'resnet50d'); only the standard ResNet layout is supported")
    out: dict = OrderedDict()
    for k, v in state.items():
        new = _torchvision_key(k[len(prefix):]) if k.startswith(prefix) else None
        out[new if new is not None else k] = v
    return out


def _convert_detectron2(state: dict, name: str) -> dict:
    keys = list(state)
    prefix = _common_prefix(keys, _D2_STEM, name, "detectron2-named")
    if not prefix and not any(_D2_STEM.match(k) for k in keys):
        prefix = _common_prefix(keys, _D2_STAGE, name, "detectron2-named")
    out: dict = OrderedDict()
    for k, v in state.items():
        if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in _RESNET_ROOTS:
            out[k[len(prefix):]] = v
        else:
            out[k] = v
    return out


_C2_NORM_FIELDS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH2 = {"a": "conv1", "b": "conv2", "c": "conv3"}
_C2_BLOCK = re.compile(r"^res(\d+)_(\d+)_branch(1|2[a-c])(_offset)?_(.+)$")


def _caffe2_key(key: str) -> str | None:
    if key == "conv1_w":
        return "stem.conv1.weight"
    if key == "conv1_b":
        return "stem.conv1.bias"
    if m := re.match(r"^res_conv1_(bn|gn)_(s|b|rm|riv)$", key):
        return "stem.conv1.norm." + _C2_NORM_FIELDS[m.group(2)]
    if m := re.match(r"^fc1000_(w|b)$", key):
        return "linear." + ("weight" if m.group(1) == "w" else "bias")
    m = _C2_BLOCK.match(key)
    if not m:
        return None
    stage, block, branch, offset, tail = m.groups()
    conv = "shortcut" if branch == "1" else _C2_BRANCH2[branch[1]]
    head = f"res{stage}.{block}."
    if offset:
        if conv != "conv2" or tail not in ("w", "b"):
            return None
        return f"{head}conv2_offset." + ("weight" if tail == "w" else "bias")
    if tail == "w":
        return f"{head}{conv}.weight"
    if tail == "b":
        return f"{head}{conv}.bias"
    if m2 := re.match(r"^(bn|gn)_(s|b|rm|riv)$", tail):
        return f"{head}{conv}.norm.{_C2_NORM_FIELDS[m2.group(2)]}"
    return None


def _convert_caffe2(state: dict, name: str) -> dict:
    out: dict = OrderedDict()
    bn_scales = []
    for k, v in state.items():
        new = _caffe2_key(k)
        out[new if new is not None else k] = v
        if new is not None and k.endswith("_bn_s"):
            bn_scales.append(new)
    # Affine-only (frozen) BNs store just s and b: add the statistics that make the affine exact.
    for k in bn_scales:
        base = k[: -len("weight")]
        if base + "running_mean" not in out:
            out[base + "running_mean"] = torch.zeros_like(out[k])
        if base + "running_var" not in out:
            out[base + "running_var"] = torch.full_like(out[k], 1.0 - _BN_EPS)
    return out


_CONVERT = {"torchvision": _convert_torchvision, "caffe2": _convert_caffe2, "detectron2": _convert_detectron2}


def convert_state_dict(state: Mapping[str, Any], source: str = "auto", name: str = "<state dict>"
                       ) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in our ResNet names, naming it was converted from: torchvision | timm | detectron2 |
    caffe2). Keys outside the ResNet keep their names. Our own names count as "detectron2"."""
    from .formats import detect_format

    weights = unwrap(state, name)
    fmt = detect_format(weights, source=source, backbone=True)
    naming = _naming(fmt, weights)
    return _CONVERT[naming](weights.tensors, name), ("timm" if fmt.name == "timm" else naming)


def convert_checkpoint(path_or_obj, source: str = "auto", trust: bool = False, name: str | None = None,
                       **pixel_overrides) -> dict:
    """Read (if a path) and convert a checkpoint's ResNet names (whatever format claims the file: a whole detector
    or DETR file too); returns the converted-file dict described above.

    Our own checkpoints and converted files keep the source and pixel convention they record. `pixel_overrides`
    (format=, pixel_mean=, pixel_std=) replace the source's default input convention. `name`: what errors call
    an already loaded object (default: the path, or "<in-memory checkpoint>").
    """
    from .formats import convention_of, detect_format

    weights = read_weights(path_or_obj, trust=trust, name=name)
    fmt = detect_format(weights, source=source, backbone=True)
    naming = _naming(fmt, weights)
    state = _CONVERT[naming](weights.tensors, weights.name)
    used, pixels = convention_of(fmt, weights)
    if used is None:  # a format that implies no convention of its own: its backbone's naming does
        used, pixels = convention_of(_backbone_format(fmt, naming), weights)
    pixels.update({k: v for k, v in pixel_overrides.items() if v is not None})
    if pixels["format"] not in ("RGB", "BGR", None):
        raise CheckpointError(f"'{weights.name}': pixel format must be 'RGB' or 'BGR', got {pixels['format']!r}")

    def floats(v):
        return None if v is None else [float(x) for x in v]

    return {"model": state, "format": pixels["format"], "pixel_mean": floats(pixels["pixel_mean"]),
            "pixel_std": floats(pixels["pixel_std"]), "source": used}


def _backbone_format(fmt, naming: str):
    from .formats import FORMATS

    return FORMATS["timm" if fmt.name == "timm" else naming]


def save_converted(converted: dict, path: str) -> None:
    """torch.save a converted checkpoint (tensors and plain values only: loads with weights_only=True), atomically.
    An input convention value that is None (not recorded by our own checkpoint) is left out. A whole-detector
    conversion (detector_converters) also keeps "architecture", "mask_on", "num_classes", "dropped" and "notes"."""
    from .checkpointer import atomic_torch_save

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    keys = ("model", *_PIXEL_KEYS, "source", "architecture", "mask_on", "num_classes", "dropped", "notes")
    atomic_torch_save({k: converted[k] for k in keys if converted.get(k) is not None}, path)


# ---------------------------------------------------------------------------------------------- loading
def find_resnet_prefix(module: nn.Module) -> str:
    """Where our ResNet sits inside `module`: "" for a bare ResNet, "backbone.bottom_up." in an FPN detector."""
    candidates = sorted({k[: -len("stem.conv1.weight")] for k in module.state_dict()
                         if k == "stem.conv1.weight" or k.endswith(".stem.conv1.weight")}, key=len)
    if not candidates:
        raise CheckpointError(f"{type(module).__name__} holds no ResNet (no '...stem.conv1.weight'); pass prefix=")
    if len(candidates) > 1:
        raise CheckpointError(f"{type(module).__name__} holds several ResNets at {candidates}; pass prefix= to "
                              "choose one")
    return candidates[0]


def load_backbone_weights(module: nn.Module, path_or_state, prefix: str | None = None, trust: bool = False,
                          source: str = "auto", name: str | None = None, warn_pixels: bool = True) -> LoadResult:
    """Convert and load ResNet weights into `module`; see the module docstring for the contract. `name`: what
    messages call an already loaded object (the Checkpointer passes the file it read it from). `warn_pixels`: warn
    when the weights' input convention differs from the one `module` carries (reader.warn_pixel_convention; the
    Checkpointer, which warns itself, passes False)."""
    from .fpn_layout import check_fpn_layout
    from .reader import warn_pixel_convention

    weights = read_weights(path_or_state, trust=trust, name=name)
    name = weights.name
    converted = convert_checkpoint(weights, source=source)
    if prefix is None:
        prefix = find_resnet_prefix(module)
    target = module.state_dict()
    mapped: dict[str, torch.Tensor] = OrderedDict()
    for k, v in converted["model"].items():
        mapped[(prefix + k) if k.split(".", 1)[0] in _RESNET_ROOTS else k] = v

    check_fpn_layout(mapped, target, name)  # FPN weights kept by name: the same output-conv layout as the model
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in mapped.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    if mismatched:
        raise CheckpointError(f"'{name}' does not fit the model: shape mismatch for " + "; ".join(mismatched[:20])
                              + (f" (+{len(mismatched) - 20} more)" if len(mismatched) > 20 else ""))

    loadable = {k: v for k, v in mapped.items() if k in target}
    module.load_state_dict(loadable, strict=False)
    unexpected = [k for k in mapped if k not in target and not k.endswith("num_batches_tracked")]
    resnet_keys = [k for k in target if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in _RESNET_ROOTS]
    missing = [k for k in resnet_keys if k not in mapped and not k.endswith("num_batches_tracked")]
    meta = {k: converted[k] for k in _PIXEL_KEYS}
    if all(v is None for v in meta.values()):
        expect = "they record no input convention (the config's INPUT.FORMAT / MODEL.PIXEL_MEAN / PIXEL_STD apply)"
    else:
        expect = (f"the weights expect INPUT.FORMAT {meta['format']}, PIXEL_MEAN {meta['pixel_mean']}, "
                  f"PIXEL_STD {meta['pixel_std']}" + (" (None: not recorded)" if None in meta.values() else ""))
    logger.info("Loaded %d tensors from '%s' (%s names) into %s at '%s'; %s", len(loadable), name,
                converted["source"], type(module).__name__, prefix, expect)
    if missing:
        logger.warning("Weights missing from '%s' (left as initialised): %s", name, ", ".join(missing))
    if unexpected:
        logger.warning("Weights in '%s' that the model does not use: %s", name, ", ".join(unexpected))
    if warn_pixels:
        warn_pixel_convention(meta, module, name, converted["source"], logger)
    return LoadResult(missing, unexpected, converted["source"], prefix, meta, tuple(loadable))
