#!/usr/bin/env python
"""Convert ResNet weights (torchvision / timm / detectron2 / Caffe2-MSRA) to our names.

    python tools/convert_weights.py resnet50-0676ba61.pth weights/R-50-torchvision.pth
    python tools/convert_weights.py R-50.pkl weights/R-50-msra.pth --source caffe2
    python tools/convert_weights.py resnet50-0676ba61.pth weights/R-50-tv-for-d2.pkl --to detectron2

OUT is a torch.save'd dict {"model": state dict (stem.conv1.weight, res2.0.conv1.norm.weight, ..., linear.*),
"format": "RGB"|"BGR", "pixel_mean": [...], "pixel_std": [...], "source": ...}; set INPUT.FORMAT,
MODEL.PIXEL_MEAN/STD to the recorded values. Our own checkpoints (what tools/train_net.py saves) are recognised
by their format tag (source "ours") and keep the convention they record; one that records none gets none
(the config's values apply; --format / --pixel-mean / --pixel-std record one). .pkl files are read by a
restricted unpickler (numpy arrays and plain values only); a .pth that needs full unpickling is refused unless
--trust is given.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_backbone.checkpoint import CheckpointError  # noqa: E402
from resnet_backbone.checkpoint.converters import SOURCES, convert_checkpoint, save_converted  # noqa: E402
from resnet_backbone.utils.cli import run_tool  # noqa: E402

TOOL = os.path.basename(__file__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="weights file (.pth/.pt/.pkl)")
    parser.add_argument("output", help="converted .pth to write")
    parser.add_argument("--source", default="auto", choices=["auto", *SOURCES, "detr"],
                        help="naming of the input (detr: an official DETR checkpoint, whole model; docs/DETR.md)")
    parser.add_argument("--trust", action="store_true",
                        help="allow a .pth that needs full unpickling (can run code: trusted files only)")
    parser.add_argument("--format", choices=["RGB", "BGR"], default=None, help="override the recorded format")
    parser.add_argument("--pixel-mean", type=float, nargs=3, default=None)
    parser.add_argument("--pixel-std", type=float, nargs=3, default=None)
    parser.add_argument("--to", choices=["ours", "detectron2"], default="ours",
                        help="detectron2: write detectron2 model names (.pkl model-zoo layout or .pth) instead")
    parser.add_argument("--layout", choices=["fpn", "resnet", "c4"], default=None,
                        help="with --to detectron2: where a ResNet goes (fpn: backbone.bottom_up.*, default)")
    args = parser.parse_args(argv)
    if args.to == "detectron2":
        return _to_detectron2(args)
    try:
        if args.source == "detr":
            from resnet_backbone.checkpoint.detr_converter import convert_detr_checkpoint

            converted = convert_detr_checkpoint(args.input, trust=args.trust)
        else:
            converted = convert_checkpoint(args.input, source=args.source, trust=args.trust, format=args.format,
                                           pixel_mean=args.pixel_mean, pixel_std=args.pixel_std)
        save_converted(converted, args.output)
    except CheckpointError as e:
        print(f"{TOOL}: error: {e}", file=sys.stderr)
        return 2  # the tools' status for the library's own errors (utils.cli)
    state = converted["model"]
    ours = sum(1 for k in state if k.split(".", 1)[0] in ("stem", "res2", "res3", "res4", "res5", "linear"))
    print(f"{args.input} ({converted['source']} names) -> {args.output}: {len(state)} tensors "
          f"({ours} ResNet, {len(state) - ours} other)")
    print(f"input convention: {_convention(converted['format'], converted['pixel_mean'], converted['pixel_std'])}")
    return 0


def _convention(fmt, mean, std) -> str:
    """The input convention line; a value that is None was not recorded (our own checkpoints record only what
    the model carried)."""
    if fmt is None and mean is None and std is None:
        return ("not recorded in the checkpoint (set INPUT.FORMAT, MODEL.PIXEL_MEAN and MODEL.PIXEL_STD to what "
                "it was trained with)")
    parts = [f"{key} {'not recorded' if v is None else v}"
             for key, v in (("INPUT.FORMAT", fmt), ("MODEL.PIXEL_MEAN", mean), ("MODEL.PIXEL_STD", std))]
    return "  ".join(parts)


def _to_detectron2(args) -> int:
    from resnet_backbone.checkpoint.detectron2_names import convert_to_detectron2, save_detectron2_checkpoint

    try:
        converted = convert_to_detectron2(args.input, layout=args.layout, source=args.source, trust=args.trust)
        save_detectron2_checkpoint(converted["model"], args.output)
    except CheckpointError as e:
        print(f"{TOOL}: error: {e}", file=sys.stderr)
        return 2  # the tools' status for the library's own errors (utils.cli)
    print(f"{args.input} ({converted['source']} names) -> {args.output}: {len(converted['model'])} tensors in "
          "detectron2 names (load with MODEL.WEIGHTS)")
    fmt = args.format or converted["format"]
    mean = args.pixel_mean or converted["pixel_mean"]
    std = args.pixel_std or converted["pixel_std"]
    print(f"set in the detectron2 config: {_convention(fmt, mean, std)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
