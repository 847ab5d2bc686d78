#!/usr/bin/env python
"""Run a trained detector on images and draw its detections (boxes, or polygons for text models).

    python tools/demo.py --config-file CFG --weights output/model_final.pth --input IMG_OR_DIR --output DIR \
        [--score-thresh 0.5] [KEY VALUE ...]

Writes one picture per input image into DIR and prints where they went. Works for every detector whose
eval output follows the contract (Faster R-CNN, DETR, DBNet: "polygons" are drawn when present).

Output names: the input's name with the extension .jpg for a JPEG input, .png otherwise (a.tif -> a.png).
When several inputs would get the same output name (x.png, x.PNG and x.tif all give x.png), each of them
keeps its whole file name and gets the output extension added: x.png.png, x.PNG.png, x.tif.png. Inputs with
the same file name in different folders are refused (run them with separate --output folders).
Nothing is ever written over an input image: --output may not be an --input folder, and an output that is an
input file is refused. An output file that already exists is refused unless --overwrite is given.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_backbone.utils.cli import OverridesArgumentParser, ToolError, ToolInputNotFound, run_tool  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("resnet_backbone.demo")


def get_parser() -> argparse.ArgumentParser:
    p = OverridesArgumentParser(description="Draw a detector's predictions on images.",
                                epilog=__doc__[__doc__.index("Output names:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="model weights (.pth); default: MODEL.WEIGHTS of the config")
    p.add_argument("--input", required=True, nargs="+", help="image file(s) or a directory of images")
    p.add_argument("--output", required=True,
                   help="output directory (not an --input folder; output names: see below)")
    p.add_argument("--overwrite", action="store_true", help="replace output pictures that already exist")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections with at least this score")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


def list_images(inputs) -> list[str]:
    out = []
    for x in inputs:
        if os.path.isdir(x):
            out += sorted(os.path.join(x, f) for f in os.listdir(x) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(x):
            out.append(x)
        else:
            raise ToolInputNotFound(f"--input: no such file or directory: {x}")
    if not out:
        raise ToolInputNotFound(f"--input: no images ({', '.join(IMAGE_EXTS)}) found in {inputs}")
    return out


def _output_ext(path: str) -> str:
    return ".jpg" if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg") else ".png"


def output_names(files: list[str]) -> list[str]:
    """The output file name of each input, in order (the rules are in the module docstring). Raises ToolError
    when two inputs would still get the same name (the same file name in two folders)."""
    def refuse_duplicates(keys, names):
        first: dict[str, str] = {}
        for f, key, n in zip(files, keys, names):
            if key in first:
                raise ToolError(f"--input '{first[key]}' and '{f}' would both be drawn to '{n}' in the --output "
                                "folder; give them separate --output folders (or rename one)")
            first[key] = f

    names = [os.path.splitext(os.path.basename(f))[0] + _output_ext(f) for f in files]
    refuse_duplicates([os.path.basename(f) for f in files], names)  # one file name in two folders: no rename helps
    counts = Counter(names)
    names = [n if counts[n] == 1 else os.path.basename(f) + _output_ext(f) for f, n in zip(files, names)]
    refuse_duplicates(names, names)  # e.g. x.png, x.tif and x.png.png: x.png's new name is taken
    return names


def _file_id(path: str):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def plan_outputs(inputs, files: list[str], output_dir: str, overwrite: bool = False) -> list[str]:
    """The output path of each input file, checked before anything is built or written: --output is not a file
    nor an --input folder, no output is an input file, no two outputs collide, and no output exists already
    unless `overwrite`. Raises ToolError naming the paths (and the flag) otherwise."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ToolError(f"--output '{output_dir}' is a file, not a folder; give a folder for the pictures")
    if os.path.isdir(output_dir):
        for x in inputs:
            if os.path.isdir(x) and os.path.samefile(x, output_dir):
                raise ToolError(f"--output '{output_dir}' is the --input folder '{x}': the drawn pictures would be "
                                "written among (and over) the input images; choose another --output folder")
    input_ids = {}
    for f in files:
        input_ids.setdefault(_file_id(f), f)
    dsts = [os.path.join(output_dir, n) for n in output_names(files)]
    existing = []
    for dst in dsts:
        if os.path.lexists(dst):
            if os.path.exists(dst) and _file_id(dst) in input_ids:
                raise ToolError(f"the output '{dst}' is the input image '{input_ids[_file_id(dst)]}': drawing "
                                "would overwrite it; choose another --output folder")
            existing.append(dst)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ToolError(f"the output '{existing[0]}'{more} already exists; pass --overwrite to replace it, or "
                        "choose another --output folder")
    return dsts


def class_names_for(cfg) -> list[str] | None:
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        try:
            from resnet_backbone.data import MetadataCatalog

            names = MetadataCatalog.get(name).get("thing_classes", None)
            if names:
                return list(names)
        except Exception:  # dataset files absent: fall back to class ids
            continue
    return None


class Predictor:
    """cfg + weights -> model in eval mode; `__call__(image in cfg.INPUT.FORMAT, HWC uint8)` -> output dict."""

    def __init__(self, cfg, weights: str = ""):
        from resnet_backbone.checkpoint.checkpointer import Checkpointer
        from resnet_backbone.data.transforms import apply_augmentations, build_augmentation
        from resnet_backbone.modeling.fast_paths import optimize_for_inference
        from resnet_backbone.modeling.meta_arch import build_model

        self.cfg = cfg
        self.model = build_model(cfg)
        weights = weights or cfg.MODEL.WEIGHTS
        if weights:
            Checkpointer(self.model, "", save_to_disk=False).load_weights(weights)
        else:
            logger.warning("no weights given: the model is randomly initialised")
        self.model = optimize_for_inference(self.model, cfg)  # eval mode + the fast paths the config asks for
        self.augs = build_augmentation(cfg, is_train=False)
        self._apply = apply_augmentations

    def __call__(self, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        resized, _ = self._apply(self.augs, image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.inference_mode():
            return self.model([{"image": tensor, "height": h, "width": w}])[0]


def run(cfg, weights: str, inputs, output_dir: str, score_thresh: float = 0.5, overwrite: bool = False) -> list[str]:
    """Draw the detections on each image of `inputs` into `output_dir`; returns the written paths. Every output
    is checked (plan_outputs) before the model is built."""
    from resnet_backbone.data import read_image
    from resnet_backbone.utils.visualizer import draw_detections

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = list_images(inputs)
    dsts = plan_outputs(inputs, files, output_dir, overwrite)
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ToolError(f"--output '{output_dir}' cannot be created: {e.strerror or e}") from e
    input_ids = {_file_id(f): f for f in files}
    predictor = Predictor(cfg, weights)
    names = class_names_for(cfg)
    written = []
    written_ids: dict = {}
    from tqdm import tqdm

    for path, dst in tqdm(list(zip(files, dsts)), desc="demo", disable=len(files) < 2):
        # on a case-insensitive file system two names of the plan can be one file: never write a file twice
        # (nor an input file, should one have appeared since the plan)
        if os.path.exists(dst):
            fid = _file_id(dst)
            if fid in input_ids or fid in written_ids:
                other = input_ids.get(fid) or written_ids[fid]
                raise ToolError(f"the output '{dst}' is the same file as '{other}' (a case-insensitive file "
                                "system?); choose another --output folder or rename the inputs")
        image = read_image(path, format=cfg.INPUT.FORMAT)
        out = predictor(image)
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        polygons = out.get("polygons")
        vis = draw_detections(rgb, out["boxes"], out["labels"], out["scores"], names, polygons=polygons,
                              score_thresh=score_thresh)
        if dst.endswith(".jpg"):
            Image.fromarray(vis).save(dst, quality=92)
        else:
            Image.fromarray(vis).save(dst)
        written_ids[_file_id(dst)] = dst
        n = int((out["scores"] >= score_thresh).sum())
        logger.info("%s: %d detections >= %.2f -> %s", path, n, score_thresh, dst)
        written.append(dst)
    return written


def main(argv=None) -> list[str]:
    from resnet_backbone.engine import setup_cfg
    from resnet_backbone.utils.logger import setup_logger

    args = get_parser().parse_args(argv)
    setup_logger()
    cfg = setup_cfg(args)
    cfg.freeze()
    written = run(cfg, args.weights, args.input, args.output, args.score_thresh, overwrite=args.overwrite)
    print(f"Wrote {len(written)} picture(s) to {args.output}")
    return written


if __name__ == "__main__":
    sys.exit(run_tool(main))
