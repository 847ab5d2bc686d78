#!/usr/bin/env python
"""Parameters and FLOPs of the backbone a config builds, per stage (fvcore's FlopCountAnalysis).

    python tools/analyze_model.py --config-file configs/ImageNet/R_50_torchvision.yaml --input-size 224 224
    python tools/analyze_model.py --config-file configs/Base-RCNN-FPN.yaml MODEL.RESNETS.DEPTH 101

FLOPs are counted as fvcore counts them: one multiply-add = 1 ("GMac"; torchvision's "4.1 GFLOPS" for
ResNet-50 is the same number). Element-wise ops (ReLU, additions, pooling, FrozenBatchNorm2d) are not
counted; fvcore does count nn.BatchNorm2d (NORM "BN"), about +0.5% on ResNet-50.
Parameters are nn.Parameters (frozen ones included); FrozenBatchNorm2d statistics and affines are buffers
and appear in the "buffers" column. Rows are the backbone's top-level modules; a nested backbone (the
ResNet inside an FPN, "bottom_up") is expanded into its own stages.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resnet_backbone.config import get_cfg  # noqa: E402
from resnet_backbone.modeling.backbone import Backbone, build_backbone  # noqa: E402
from resnet_backbone.utils.cli import OverridesArgumentParser, ToolError, positive_int, run_tool  # noqa: E402


def setup_cfg(config_file: str | None, opts: list[str]):
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _rows(model: nn.Module) -> list[tuple[str, nn.Module]]:
    rows = []
    for name, child in model.named_children():
        if isinstance(child, Backbone):
            rows.extend((f"{name}.{n}", c) for n, c in child.named_children())
        else:
            rows.append((name, child))
    return rows


def analyze(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> dict:
    """{"rows": [{"name", "params", "buffers", "gmac"}], "total": {...}, "outputs": {name: shape}}."""
    from fvcore.nn import FlopCountAnalysis

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")

    model = model.eval()
    x = torch.zeros(1, channels, *input_size)
    flops = FlopCountAnalysis(model, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    by_module = flops.by_module()
    rows = []
    for name, module in _rows(model):
        rows.append({
            "name": name,
            "params": sum(p.numel() for p in module.parameters()),
            "buffers": sum(b.numel() for n, b in module.named_buffers() if not n.endswith("num_batches_tracked")),
            "gmac": by_module.get(name, 0) / 1e9,
        })
    # ops run by the backbone's own forward, outside its children (e.g. the classifier's global pooling)
    rest = flops.total() - sum(by_module.get(name, 0) for name, _ in _rows(model))
    if rest:
        rows.append({"name": "(own ops)", "params": 0, "buffers": 0, "gmac": rest / 1e9})
    with torch.no_grad():
        outputs = {k: list(v.shape) for k, v in model(x).items()}
    total = {
        "name": "total",
        "params": sum(p.numel() for p in model.parameters()),
        "buffers": sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")),
        "gmac": flops.total() / 1e9,
    }
    return {"rows": rows, "total": total, "outputs": outputs, "input_size": list(input_size)}


def format_table(result: dict) -> str:
    lines = [f"input 1x3x{result['input_size'][0]}x{result['input_size'][1]}",
             f"{'module':<22}{'params':>14}{'params (M)':>12}{'buffers':>12}{'GMac':>10}"]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"] + [result["total"]]:
        if r["name"] == "total":
            lines.append("-" * len(lines[1]))
        lines.append(f"{r['name']:<22}{r['params']:>14,}{r['params'] / 1e6:>12.3f}{r['buffers']:>12,}"
                     f"{r['gmac']:>10.3f}")
    lines.append("outputs: " + ", ".join(f"{k} {tuple(v)}" for k, v in result["outputs"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = OverridesArgumentParser(description=__doc__.split("\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config (defaults if omitted)")
    parser.add_argument("--input-size", nargs=2, type=positive_int, default=[224, 224], metavar=("H", "W"),
                        help="input height and width in pixels (positive integers; default 224 224)")
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"overrides come in KEY VALUE pairs, got {args.opts}")
    cfg = setup_cfg(args.config_file, args.opts)
    model = build_backbone(cfg)
    result = analyze(model, tuple(args.input_size), channels=len(cfg.MODEL.PIXEL_MEAN))
    print(format_table(result))
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
        except OSError as e:
            raise ToolError(f"--json '{args.json}' cannot be written: {e.strerror or e}") from e
    return result


if __name__ == "__main__":
    sys.exit(run_tool(main))
