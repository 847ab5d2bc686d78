#!/usr/bin/env python
"""Top-5 ImageNet classes of an image with the ResNet classifier head (the classification side of the backbone).

    python tools/classify.py cat.jpg --weights weights/R-50-torchvision.pth
    python tools/classify.py cat.jpg --weights R-50.pkl --config-file configs/ImageNet/R_50_MSRA.yaml

--weights is any file the converters read (torchvision / timm state dict, a converted file, a Caffe2 .pkl).
Without --config-file the config follows the weights: configs/ImageNet/R_50_MSRA.yaml for Caffe2/detectron2
weights (and for our own checkpoints recording BGR), configs/ImageNet/R_50_torchvision.yaml otherwise. The
input convention (RGB/BGR, mean, std) the weights record wins over the config's (a note is printed when they
differ); a value our own checkpoint (source "ours") does not record is taken from the config (noted too).
Preprocessing is the standard ImageNet evaluation one: resize the shorter side to 256 (bilinear, antialiased),
center-crop 224, normalize.
Class names come from torchvision's ImageNet metadata (no download).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_backbone.checkpoint import CheckpointError, load_backbone_weights  # noqa: E402
from resnet_backbone.checkpoint.converters import convert_checkpoint  # noqa: E402
from resnet_backbone.config import ConfigError, get_cfg  # noqa: E402
from resnet_backbone.data.detection_utils import read_image  # noqa: E402
from resnet_backbone.data.errors import DatasetError  # noqa: E402
from resnet_backbone.modeling.backbone import build_backbone  # noqa: E402
from resnet_backbone.utils.cli import run_tool  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "ImageNet")


def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess(image_hwc, pixel_mean, pixel_std, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """HWC uint8 array (in the model's channel order) -> normalized (1, C, crop, crop) float tensor."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(np.array(image_hwc, dtype=np.float32)).permute(2, 0, 1)
    x = TF.resize(x, [resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = TF.center_crop(x, [crop, crop])
    mean = torch.tensor(pixel_mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(pixel_std, dtype=x.dtype).view(-1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def classify(image_path: str, weights: str, config_file: str = "", opts: list[str] | None = None, topk: int = 5,
             trust: bool = False) -> list[dict]:
    converted = convert_checkpoint(weights, trust=trust)
    if not config_file:
        msra = converted["source"] in ("caffe2", "detectron2") or converted["format"] == "BGR"
        config_file = os.path.join(CONFIG_DIR, "R_50_MSRA.yaml" if msra else "R_50_torchvision.yaml")
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(opts)
    if cfg.MODEL.RESNETS.NUM_CLASSES <= 0:
        raise ConfigError(f"{config_file}: MODEL.RESNETS.NUM_CLASSES is {cfg.MODEL.RESNETS.NUM_CLASSES}; the "
                          "classifier needs the ImageNet head (1000)")
    cfg_pixels = (cfg.INPUT.FORMAT, [float(v) for v in cfg.MODEL.PIXEL_MEAN], [float(v) for v in cfg.MODEL.PIXEL_STD])
    recorded = (converted["format"], converted["pixel_mean"], converted["pixel_std"])
    if None in recorded:  # our own checkpoint that does not record (all of) its convention: the config's applies
        names = [n for n, v in zip(("INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"), recorded) if v is None]
        print(f"note: '{weights}' records no input convention for {', '.join(names)}; using the config's "
              f"({config_file})", file=sys.stderr)
    fmt, mean, std = (c if r is None else r for r, c in zip(recorded, cfg_pixels))
    if cfg_pixels != (fmt, mean, std):
        print(f"note: using the weights' input convention {fmt} mean {mean} std {std} instead of the config's "
              f"{cfg_pixels[0]} mean {cfg_pixels[1]} std {cfg_pixels[2]}", file=sys.stderr)

    model = build_backbone(cfg).eval()
    load_backbone_weights(model, converted)
    x = preprocess(read_image(image_path, format=fmt), mean, std)
    with torch.no_grad():
        probs = model(x)["linear"].softmax(dim=1)[0]
    names = imagenet_categories() if probs.numel() == 1000 else [f"class {i}" for i in range(probs.numel())]
    values, indices = probs.topk(min(topk, probs.numel()))
    return [{"rank": r + 1, "class_id": int(i), "name": names[int(i)], "prob": float(p)}
            for r, (p, i) in enumerate(zip(values, indices))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--weights", required=True, help="classifier weights (any format the converters read)")
    parser.add_argument("--config-file", default="", help="default: chosen from the weights' source")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--trust", action="store_true", help="allow a .pth that needs full unpickling")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs; got an odd number ({len(args.opts)}): {args.opts}")
    try:
        top = classify(args.image, args.weights, args.config_file, args.opts, args.topk, args.trust)
    except (CheckpointError, DatasetError, ValueError) as e:
        print(f"{os.path.basename(__file__)}: error: {e}", file=sys.stderr)
        return 2  # the tools' status for the library's own errors (utils.cli)
    if args.json:
        print(json.dumps(top, indent=2))
    else:
        for t in top:
            print(f"{t['rank']}. {t['prob']:7.4f}  [{t['class_id']:4d}] {t['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
