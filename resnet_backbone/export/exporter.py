"""export_model(cfg, ...): a config (+ weights) -> an exported file that runs without this package's Python.

Formats: "exported_program" (torch.export, `.pt2`), "onnx" (torch.onnx's dynamo exporter, `.onnx`, run by
onnxruntime) and "torchscript" (torch.jit.trace, `.ts`). Each export writes `export.json` beside the model: the
interface (input name and layout, INPUT.FORMAT, pixel statistics already applied in the graph, the test resize the
caller does, output names) and, for DBNet, the arguments of the polygon post-processing.

What each format covers and why (docs/EXPORT.md): every format exports the backbone, DETR and DBNet;
TorchScript does not export Faster R-CNN (see `_refuse_torchscript`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
from torch.export import Dim

from ..config import ConfigError
from .graphs import OUTPUT_NAMES, BackboneGraph, DBNetGraph, DETRGraph, FasterRCNNGraph

__all__ = ["ExportError", "FORMATS", "PARTS", "MODEL_FILES", "export_model", "build_export_graph",
           "check_exportable"]

FORMATS = ("exported_program", "onnx", "torchscript")
PARTS = ("model", "backbone")
MODEL_FILES = {"exported_program": "model.pt2", "onnx": "model.onnx", "torchscript": "model.ts"}
_GRAPHS = {"FasterRCNN": FasterRCNNGraph, "DETR": DETRGraph, "DBNet": DBNetGraph}
ONNX_OPSET = 18


class ExportError(ValueError):
    """A model or format that cannot be exported; the message names the format / config key and the way out."""


def check_exportable(cfg, format: str, part: str = "model") -> None:
    """Refuse, naming the option, every setting whose behaviour an exported graph cannot carry."""
    if format not in FORMATS:
        raise ExportError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if part not in PARTS:
        raise ExportError(f"export part {part!r} is not one of {', '.join(PARTS)}")
    m = cfg.MODEL
    if m.get("COMPILE", False):
        raise ConfigError("MODEL.COMPILE = True cannot be exported: torch.compile wraps the eager model and the "
                          "exported graph is compiled by its own runtime; set MODEL.COMPILE False")
    if m.get("MKLDNN_PREPACK", False):
        raise ConfigError("MODEL.MKLDNN_PREPACK = True cannot be exported: prepacked oneDNN convs are an eager-only "
                          "weight layout; set MODEL.MKLDNN_PREPACK False (the runtimes pick their own kernels)")
    if cfg.TEST.AUG.ENABLED:
        raise ConfigError("TEST.AUG.ENABLED = True cannot be exported: test-time augmentation runs the model at "
                          "several sizes and merges in Python; export with TEST.AUG.ENABLED False")
    device = torch.device(m.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE = {m.DEVICE!r} but CUDA is not available here: export on a CUDA machine "
                          "or set MODEL.DEVICE cpu")
    if part == "model" and m.META_ARCHITECTURE not in _GRAPHS:
        raise ConfigError(f"MODEL.META_ARCHITECTURE = {m.META_ARCHITECTURE!r} has no export; exportable: "
                          f"{', '.join(_GRAPHS)} (or export the backbone alone)")
    if part == "model" and m.META_ARCHITECTURE == "FasterRCNN" and m.get("MASK_ON", False):
        raise ConfigError("MODEL.MASK_ON = True cannot be exported: the exported Faster R-CNN graph gives boxes, "
                          "scores and labels only (no mask head); export with MODEL.MASK_ON False (the box detector "
                          "of the same weights) or the backbone alone")
    if format == "torchscript" and part == "model" and m.META_ARCHITECTURE == "FasterRCNN":
        _refuse_torchscript()


def _refuse_torchscript():
    raise ExportError(
        "format 'torchscript' cannot export MODEL.META_ARCHITECTURE 'FasterRCNN': torch.jit.trace records the "
        "per-level anchor counts and top-k sizes of the RPN as constants of the example image's size, so the "
        "graph is wrong at any other size, and the detector's torchvision subclasses are not scriptable; use "
        "--format exported_program or onnx")


def build_export_graph(cfg, weights: str | None = None, part: str = "model") -> torch.nn.Module:
    """The module to export (graphs.py), in eval mode on cfg.MODEL.DEVICE, with `weights` (or MODEL.WEIGHTS)."""
    from ..checkpoint.checkpointer import Checkpointer

    weights = weights if weights is not None else cfg.MODEL.WEIGHTS
    if part == "backbone":
        from ..modeling.backbone import build_backbone

        module = build_backbone(cfg).to(torch.device(cfg.MODEL.DEVICE))
    else:
        from ..modeling.meta_arch import build_model

        module = build_model(cfg)
    if weights:
        Checkpointer(module, "", save_to_disk=False).load_weights(weights)
    module.eval()
    from ..modeling.fast_paths import fuse_conv_frozen_bn, to_channels_last

    if cfg.MODEL.FUSE_FROZEN_BN:  # folded norms are plain convs: exported as such
        fuse_conv_frozen_bn(module)
    if cfg.MODEL.CHANNELS_LAST:
        to_channels_last(module)
    if part == "backbone":
        graph = BackboneGraph(module, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    else:
        graph = _GRAPHS[cfg.MODEL.META_ARCHITECTURE](module)
    return graph.to(torch.device(cfg.MODEL.DEVICE)).eval()


def _example(graph, part: str, size: tuple[int, int], device) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    h, w = size
    if part == "backbone":  # a batch of 2: a size-1 dimension would be specialised to 1
        x = torch.rand((2, 3, h, w), generator=g) * 255
        return x.to(device), {"images": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    x = torch.rand((3, h, w), generator=g) * 255
    return x.to(device), {"image": {1: Dim.DYNAMIC, 2: Dim.DYNAMIC}}


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """The named loggers at WARNING and above while the block runs (their INFO lines are per graph node)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _min_sizes(ep) -> dict[str, int]:
    """The smallest H and W the exported program accepts (torch.export derives them from the model's guards)."""
    sizes = {}
    spec = ep.graph_signature.user_inputs[0]
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == spec)
    shape = node.meta["val"].shape
    for name, dim in zip(("height", "width"), shape[-2:]):
        expr = getattr(dim, "node", None)
        if expr is None:
            continue
        vr = ep.range_constraints.get(expr.expr)
        if vr is not None:
            sizes[f"min_{name}"] = int(vr.lower)
    return sizes


def export_model(cfg, weights: str | None = None, format: str = "exported_program", output_dir: str = "output/export",
                 part: str = "model", example_size: tuple[int, int] = (256, 320)) -> dict[str, str]:
    """Export the detector of `cfg` (or, part="backbone", its backbone) with `weights` (default MODEL.WEIGHTS).

    Returns {"model": path of the exported file, "metadata": path of export.json}. The exported program takes
    one float32 (3, H, W) image on the 0-255 scale in INPUT.FORMAT order (backbone: (N, 3, H, W)), H and W (and
    N) dynamic, and returns the outputs named in export.json. `example_size` (H, W) is the image traced.
    """
    check_exportable(cfg, format, part)
    graph = build_export_graph(cfg, weights, part)
    device = torch.device(cfg.MODEL.DEVICE)
    example, dynamic = _example(graph, part, tuple(int(s) for s in example_size), device)
    input_name = next(iter(dynamic))
    names = graph.output_names if part == "backbone" else OUTPUT_NAMES[cfg.MODEL.META_ARCHITECTURE]
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MODEL_FILES[format])
    extra = {}
    with torch.no_grad():
        if format == "torchscript":
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            torch.jit.save(traced, path)
        else:
            ep = torch.export.export(graph, (example,), dynamic_shapes=(dynamic[input_name],), strict=False)
            extra = _min_sizes(ep)
            if format == "exported_program":
                torch.export.save(ep, path)
            else:
                with _quiet_loggers("onnx_ir", "onnxscript"):  # a log line per deduplicated initializer
                    onnx_program = torch.onnx.export(ep, (example,), input_names=[input_name], output_names=names,
                                                     dynamo=True, opset_version=ONNX_OPSET, verbose=False)
                onnx_program.save(path)
    meta = _metadata(cfg, format, part, input_name, names, extra)
    meta_path = os.path.join(output_dir, "export.json")
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return {"model": path, "metadata": meta_path}


def _metadata(cfg, format: str, part: str, input_name: str, names: list[str], extra: dict) -> dict:
    arch = "backbone" if part == "backbone" else cfg.MODEL.META_ARCHITECTURE
    shape = ["N", 3, "H", "W"] if part == "backbone" else [3, "H", "W"]
    meta = {
        "format": format,
        "file": MODEL_FILES[format],
        "model": arch,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "input": {"name": input_name, "shape": shape, "dtype": "float32", "range": [0, 255],
                  "channel_order": cfg.INPUT.FORMAT, **extra,
                  "normalised_in_graph": {"pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                                          "pixel_std": list(cfg.MODEL.PIXEL_STD)},
                  "resize_by_caller": {"min_size_test": cfg.INPUT.MIN_SIZE_TEST,
                                       "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                                       "resize_method": cfg.INPUT.RESIZE_METHOD}},
        "outputs": names,
        "torch": torch.__version__,
    }
    if arch == "DBNet":
        c = cfg.MODEL.DBNET
        meta["db_postprocess"] = {"binarize_thresh": c.BINARIZE_THRESH, "box_thresh": c.BOX_THRESH,
                                  "unclip_ratio": c.UNCLIP_RATIO, "max_candidates": c.MAX_CANDIDATES,
                                  "min_size": c.MIN_SIZE}
    if format == "onnx":
        meta["onnx_opset"] = ONNX_OPSET
    return meta
