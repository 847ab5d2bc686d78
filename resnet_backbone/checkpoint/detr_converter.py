"""Convert an official DETR checkpoint (facebookresearch/detr, e.g. `detr-r50-e632da11.pth`) to our layout.

The official file is `{"model": state_dict, ...}`; its keys and ours (the full table is in docs/DETR.md):

    backbone.0.body.conv1.weight               -> backbone.stem.conv1.weight
    backbone.0.body.bn1.{weight,bias,running_mean,running_var}
                                               -> backbone.stem.conv1.norm.*
    backbone.0.body.layer{k}.{i}.conv{j}.weight -> backbone.res{k+1}.{i}.conv{j}.weight
    backbone.0.body.layer{k}.{i}.bn{j}.*       -> backbone.res{k+1}.{i}.conv{j}.norm.*
    backbone.0.body.layer{k}.{i}.downsample.0.weight -> backbone.res{k+1}.{i}.shortcut.weight
    backbone.0.body.layer{k}.{i}.downsample.1.*      -> backbone.res{k+1}.{i}.shortcut.norm.*
    transformer.*, input_proj.*, query_embed.weight, class_embed.*, bbox_embed.layers.{0,1,2}.*  -> unchanged

The official COCO models predict 92 classes (COCO category ids 0..90, most unused, plus "no object" at 91);
with `num_classes=80` the class head is reduced to our 80 contiguous COCO classes + "no object".
The official weights expect RGB input normalized by ImageNet mean/std * 255 (`DETR_INPUT`); the converted
file records that, and configs/COCO-Detection/detr_R_50_500ep.yaml sets it.
"""
from __future__ import annotations

import torch

from . import CheckpointError
from .converters import _torchvision_key
from .reader import PIXEL_CONVENTIONS, Weights, read_weights

__all__ = ["convert_detr_state_dict", "convert_detr_checkpoint", "convert_detr_weights", "is_detr_state_dict",
           "torchvision_resnet_key", "COCO_CATEGORY_IDS", "DETR_INPUT"]

# what the official weights were trained with
DETR_INPUT = PIXEL_CONVENTIONS["detr"]

# the 80 COCO category ids in contiguous order (contiguous id c <-> COCO_CATEGORY_IDS[c])
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]

_DETR_HEAD_PREFIXES = ("transformer.", "input_proj.", "query_embed.", "class_embed.", "bbox_embed.")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet_key(key: str) -> str | None:
    """A torchvision ResNet key -> our name (converters.py's table); None for num_batches_tracked.
    Raises KeyError for a key that is not part of a torchvision ResNet."""
    if key.endswith("num_batches_tracked"):
        return None
    new = _torchvision_key(key)
    if new is None or new.split(".", 1)[0] not in ("stem", "res2", "res3", "res4", "res5", "linear"):
        raise KeyError(key)
    return new


def is_detr_state_dict(state_dict: dict) -> bool:
    """True for a state dict in the official DETR layout."""
    return any(k.startswith("backbone.0.body.") for k in state_dict) and "query_embed.weight" in state_dict


def _reduce_classes(name: str, value: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    rows = value.shape[0]
    if num_classes is None:  # auto: reduce the official COCO head, keep any other
        num_classes = 80 if rows == 92 else rows - 1
    if rows == num_classes + 1:
        return value
    if rows == 92 and num_classes == 80:  # COCO category ids 0..90 + "no object" -> contiguous 80 + "no object"
        return value[torch.tensor(COCO_CATEGORY_IDS + [91])].clone()
    raise CheckpointError(f"DETR checkpoint key '{name}' has {rows} class rows; the model wants "
                          f"MODEL.DETR.NUM_CLASSES + 1 = {num_classes + 1} (only 92 -> 81, the COCO reduction, "
                          "is converted)")


def convert_detr_state_dict(state_dict: dict, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """Official DETR keys -> our DETR keys. `num_classes`: the class head must end with that many classes
    (+ no object), reducing the official 92-row COCO head to 80 + 1; None: reduce a 92-row head, keep any
    other. Raises CheckpointError naming any key it does not know."""
    if any(k.startswith("detr.") or k.startswith("bbox_attention.") or k.startswith("mask_head.")
           for k in state_dict):
        raise CheckpointError("this is a DETR segmentation (panoptic) checkpoint; only the detection model "
                              "(keys 'backbone.0.body.*', 'transformer.*', ...) converts")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone.0.body."):
            try:
                new = torchvision_resnet_key(key[len("backbone.0.body."):])
            except KeyError:
                unknown.append(key)
                continue
            if new is not None:
                out["backbone." + new] = value
        elif key.startswith(_DETR_HEAD_PREFIXES):
            if key.startswith("class_embed."):
                value = _reduce_classes(key, value, num_classes)
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"not an official DETR detection checkpoint: unknown keys {unknown[:10]}"
                              + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""))
    return out


def convert_detr_weights(weights: Weights, num_classes: int | None = None, **pixel_overrides) -> dict:
    """The official DETR file read by reader.read_weights -> converters.py's converted-file dict {"model": our
    state dict, "format": "RGB", "pixel_mean", "pixel_std", "source": "detr"} (formats.py's "detr" entry)."""
    if not is_detr_state_dict(weights.tensors):
        raise CheckpointError(f"'{weights.name}' is not an official DETR checkpoint (expected a dict with 'model' "
                              "holding keys 'backbone.0.body.*' and 'query_embed.weight')")
    try:
        model = convert_detr_state_dict(weights.tensors, num_classes)
    except CheckpointError as e:
        raise CheckpointError(f"'{weights.name}': {e}") from e
    pixels = {**DETR_INPUT, **{k: v for k, v in pixel_overrides.items() if v is not None}}
    return {"model": model, **{k: v if isinstance(v, str) else [float(x) for x in v] for k, v in pixels.items()},
            "source": "detr"}


def convert_detr_checkpoint(path, num_classes: int | None = None, trust: bool = False) -> dict:
    """Read an official DETR .pth (or take the loaded object); return converters.py's converted-file dict {"model":
    our state dict, "format": "RGB", "pixel_mean", "pixel_std", "source": "detr"} (`converters.save_converted`
    writes it; the file loads with cfg.MODEL.WEIGHTS). The official files also pickle their argparse arguments,
    so reading them needs `trust=True` (full unpickling: trusted files only)."""
    return convert_detr_weights(read_weights(path, trust=trust), num_classes)
