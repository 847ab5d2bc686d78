#!/usr/bin/env python
"""Convert ResNet weights (torchvision / timm / detectron2 / Caffe2-MSRA) or whole Faster R-CNNs to our names.

    python tools/convert_weights.py resnet50-0676ba61.pth weights/R-50-torchvision.pth
    python tools/convert_weights.py R-50.pkl weights/R-50-msra.pth --source caffe2
    python tools/convert_weights.py resnet50-0676ba61.pth weights/R-50-tv-for-d2.pkl --to detectron2
    python tools/convert_weights.py model_final_b275ba.pkl weights/faster_rcnn_R_50_FPN_1x.pth
    python tools/convert_weights.py fasterrcnn_resnet50_fpn_coco-258fb6c6.pth weights/frcnn_tv.pth
    python tools/convert_weights.py output/model_final.pth for_detectron2.pkl --to detectron2

OUT is a torch.save'd dict {"model": state dict (stem.conv1.weight, res2.0.conv1.norm.weight, ..., linear.*),
"format": "RGB"|"BGR", "pixel_mean": [...], "pixel_std": [...], "source": ...}; set INPUT.FORMAT,
MODEL.PIXEL_MEAN/STD to the recorded values.

Whole detectors: a detectron2 Faster R-CNN (GeneralizedRCNN with an FPN: model-zoo .pkl or DetectionCheckpointer
.pth) or a torchvision fasterrcnn_resnet50_fpn / _v2 state dict is recognised by its head names (--source auto) and
converted whole: "model" is then our FasterRCNN's state dict (backbone.bottom_up.*, backbone.fpn_*, rpn.head.*,
roi_heads.*), with "architecture": "FasterRCNN", "num_classes" and "dropped" (the source keys a Faster R-CNN does
not use, also printed). torchvision's 91-way COCO head becomes our 80 classes. --source detectron2_detector /
torchvision_detector insist on a whole detector; --source detectron2 / torchvision convert a detector file's
ResNet names only (its other keys unchanged), as for backbone files. Mask R-CNNs (detectron2's FPN ones and
torchvision's maskrcnn_resnet50_fpn) convert whole the same way, into our FasterRCNN with MODEL.MASK_ON. Files of
other detectors (Keypoint / Cascade / C4 R-CNN, FCOS, Panoptic FPN) are refused; RetinaNet files convert whole
(checkpoint/retinanet_converter.py). --to detectron2 on our
own FasterRCNN checkpoint (or a torchvision one) writes detectron2's GeneralizedRCNN names, heads included. An
official DETR checkpoint (facebookresearch/detr: backbone.0.body.*, query_embed.weight) is recognised too and
converted whole into our DETR's names (--source detr insists; its files pickle their arguments: --trust).

Our own checkpoints (what tools/train_net.py saves) are recognised
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
from resnet_backbone.checkpoint.detector_converters import CONVERTIBLE, identify_detector  # noqa: E402
from resnet_backbone.checkpoint.formats import FORMATS, detect_format  # noqa: E402
from resnet_backbone.checkpoint.reader import read_weights  # noqa: E402
from resnet_backbone.utils.cli import run_tool  # noqa: E402

TOOL = os.path.basename(__file__)
DETECTOR_SOURCES = ("detectron2_detector", "torchvision_detector")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="weights file (.pth/.pt/.pkl)")
    parser.add_argument("output", help="converted .pth to write")
    parser.add_argument("--source", default="auto", choices=["auto", *SOURCES, *DETECTOR_SOURCES, "detr"],
                        help="naming of the input (auto: detected, whole detectors included; detectron2_detector / "
                             "torchvision_detector: a whole Faster R-CNN; detr: an official DETR checkpoint, whole "
                             "model, docs/DETR.md)")
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
        converted = _convert(args)
        save_converted(converted, args.output)
    except CheckpointError as e:
        print(f"{TOOL}: error: {e}", file=sys.stderr)
        return 2  # the tools' status for the library's own errors (utils.cli)
    state = converted["model"]
    if converted.get("architecture") == "RetinaNet":  # checkpoint/retinanet_converter.py
        print(f"{args.input} (whole {converted['source']} RetinaNet) -> {args.output}: {len(state)} tensors in our "
              f"RetinaNet names, {converted['num_classes']} classes (MODEL.RETINANET.NUM_CLASSES); "
              + "; ".join([*converted["notes"], f"dropped: {converted['dropped']}"]))
        print(f"input convention: {_convention(converted['format'], converted['pixel_mean'], converted['pixel_std'])}")
        return 0
    if converted.get("architecture") == "FasterRCNN":
        what, mask = ("Mask R-CNN", ", MODEL.MASK_ON True") if converted.get("mask_on") else ("Faster R-CNN", "")
        print(f"{args.input} (whole {converted['source']} {what}) -> {args.output}: {len(state)} tensors in "
              f"our FasterRCNN names, {converted['num_classes']} classes (MODEL.ROI_HEADS.NUM_CLASSES{mask})")
        for note in converted["notes"]:
            print(f"  {note}")
        dropped = converted["dropped"]
        print(f"dropped {len(dropped)} source keys the detector does not use" + (f": {', '.join(dropped)}"
                                                                                 if dropped else ""))
        print(f"input convention: {_convention(converted['format'], converted['pixel_mean'], converted['pixel_std'])}")
        return 0
    ours = sum(1 for k in state if k.split(".", 1)[0] in ("stem", "res2", "res3", "res4", "res5", "linear"))
    print(f"{args.input} ({converted['source']} names) -> {args.output}: {len(state)} tensors "
          f"({ours} ResNet, {len(state) - ours} other)")
    print(f"input convention: {_convention(converted['format'], converted['pixel_mean'], converted['pixel_std'])}")
    return 0


def _convert(args) -> dict:
    """The converted-file dict, from the format registry (resnet_backbone/checkpoint/formats.py): a whole
    detectron2 / torchvision Faster R-CNN or an official DETR converted whole (auto, or forced by --source
    *_detector / detr), anything else (and --source torchvision / timm / detectron2 / caffe2 / ours) by its ResNet
    names."""
    pixels = {"format": args.format, "pixel_mean": args.pixel_mean, "pixel_std": args.pixel_std}
    weights = read_weights(args.input, trust=args.trust)
    if args.source in SOURCES:
        return convert_checkpoint(weights, source=args.source, **pixels)
    fmt = detect_format(weights)
    if args.source != "auto" and fmt.name != args.source:
        if args.source == "detr":
            return FORMATS["detr"].to_ours(weights, **pixels)  # names the file and what it lacks
        found = identify_detector(weights.tensors)
        family = args.source[: -len("_detector")]
        what = f"a {found[1]} in {found[0]} names" if found else "no detector heads found"
        raise CheckpointError(f"'{args.input}': --source {args.source} given, but it is not a whole {family} "
                              f"Faster R-CNN ({what})")
    if fmt.whole == "FasterRCNN":
        family, arch = identify_detector(weights.tensors)
        if arch not in CONVERTIBLE:
            raise CheckpointError(f"'{args.input}' is a {arch} file, not a Faster R-CNN: only Faster R-CNN and Mask "
                                  f"R-CNN (FPN) convert whole (--source {family} converts its ResNet names only, the "
                                  "other keys unchanged)")
    if fmt.whole is not None:
        return fmt.to_ours(weights, **pixels)
    return convert_checkpoint(weights, source="auto", **pixels)


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
        fmt = args.format or converted["format"]
        mean = args.pixel_mean or converted["pixel_mean"]
        std = args.pixel_std or converted["pixel_std"]
        save_detectron2_checkpoint(converted["model"], args.output,
                                   extra={"format": fmt, "pixel_mean": mean, "pixel_std": std})
    except CheckpointError as e:
        print(f"{TOOL}: error: {e}", file=sys.stderr)
        return 2  # the tools' status for the library's own errors (utils.cli)
    whole = ""
    if converted.get("architecture") == "FasterRCNN":
        masks = any(k.startswith("roi_heads.mask_head.") for k in converted["model"])
        whole = f" (a whole {'Mask' if masks else 'Faster'} R-CNN, heads included)"
    print(f"{args.input} ({converted['source']} names) -> {args.output}: {len(converted['model'])} tensors in "
          f"detectron2 names{whole} (load with MODEL.WEIGHTS)")
    print(f"set in the detectron2 config: {_convention(fmt, mean, std)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
