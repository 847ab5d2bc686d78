#!/usr/bin/env python
"""Export a model for deployment: TorchScript, ONNX (run by onnxruntime) or torch.export's ExportedProgram.

    python tools/export_model.py --config-file configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml \\
        --weights output/model_final.pth --format onnx --output export/frcnn
    python tools/export_model.py --config-file configs/Text/dbnet_R_50_FPN.yaml --format exported_program \\
        --output export/dbnet MODEL.WEIGHTS output/model_final.pth
    python tools/export_model.py --config-file configs/Base-RCNN-FPN.yaml --part backbone --format torchscript \\
        --output export/r50fpn

Writes DIR/model.{onnx,pt2,ts} and DIR/export.json (the interface: one float32 (3, H, W) image on the 0-255 scale
in INPUT.FORMAT order, already resized by the caller; H and W dynamic; the outputs' names). --part backbone
exports the backbone alone ((N, 3, H, W) in, res2..res5 or p2..p6 out). A setting that cannot be exported
(MODEL.COMPILE, MODEL.MKLDNN_PREPACK, TEST.AUG.ENABLED, MODEL.DEVICE cuda without CUDA) or a format that cannot
export the model (TorchScript: Faster R-CNN) is one error line naming it, exit status 2. docs/EXPORT.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.utils.cli import OverridesArgumentParser, ToolError, ToolInputNotFound, positive_int, run_tool  # noqa: E402,E501

FORMATS = ("torchscript", "onnx", "exported_program")


def get_parser() -> argparse.ArgumentParser:
    p = OverridesArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="model weights; default: MODEL.WEIGHTS of the config")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.* and export.json")
    p.add_argument("--part", default="model", choices=("model", "backbone"),
                   help="the whole detector (default) or its backbone alone")
    p.add_argument("--example-size", nargs=2, type=positive_int, default=[256, 320], metavar=("H", "W"),
                   help="the image size traced (any size runs afterwards); default 256 320")
    p.add_argument("--overwrite", action="store_true", help="replace an export that already exists in DIR")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


def main(argv=None) -> dict:
    from resnet_backbone.engine import setup_cfg
    from resnet_backbone.export import export_model
    from resnet_backbone.export.exporter import MODEL_FILES

    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        raise ToolInputNotFound(f"--config-file {args.config_file}: no such file")
    if args.weights and not os.path.exists(args.weights):
        raise ToolInputNotFound(f"--weights {args.weights}: no such file")
    target = os.path.join(args.output, MODEL_FILES[args.format])
    if os.path.exists(target) and not args.overwrite:
        raise ToolError(f"--output {args.output}: {target} exists (pass --overwrite to replace it)")
    cfg = setup_cfg(args)
    cfg.freeze()
    paths = export_model(cfg, weights=args.weights or None, format=args.format, output_dir=args.output,
                         part=args.part, example_size=tuple(args.example_size))
    print(f"Wrote {paths['model']} and {paths['metadata']}")
    return paths


if __name__ == "__main__":
    sys.exit(run_tool(main))
