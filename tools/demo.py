#!/usr/bin/env python
"""Run a trained detector on images and draw its detections (boxes, or polygons for text models).

    python tools/demo.py --config-file CFG --weights output/model_final.pth --input IMG_OR_DIR --output DIR \
        [--score-thresh 0.5] [KEY VALUE ...]

Writes one picture per input image into DIR (same name; PNG unless the input is a JPEG) and prints
where they went. Works for every detector whose eval output follows the contract (Faster R-CNN, DETR,
DBNet: "polygons" are drawn when present).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
logger = logging.getLogger("resnet_backbone.demo")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Draw a detector's predictions on images.")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="model weights (.pth); default: MODEL.WEIGHTS of the config")
    p.add_argument("--input", required=True, nargs="+", help="image file(s) or a directory of images")
    p.add_argument("--output", required=True, help="output directory")
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
            raise FileNotFoundError(f"--input: no such file or directory: {x}")
    if not out:
        raise FileNotFoundError(f"--input: no images found in {inputs}")
    return out


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


def run(cfg, weights: str, inputs, output_dir: str, score_thresh: float = 0.5) -> list[str]:
    from resnet_backbone.data import read_image
    from resnet_backbone.utils.visualizer import draw_detections

    files = list_images(inputs)
    os.makedirs(output_dir, exist_ok=True)
    predictor = Predictor(cfg, weights)
    names = class_names_for(cfg)
    written = []
    from tqdm import tqdm

    for path in tqdm(files, desc="demo", disable=len(files) < 2):
        image = read_image(path, format=cfg.INPUT.FORMAT)
        out = predictor(image)
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        polygons = out.get("polygons")
        vis = draw_detections(rgb, out["boxes"], out["labels"], out["scores"], names, polygons=polygons,
                              score_thresh=score_thresh)
        stem, ext = os.path.splitext(os.path.basename(path))
        ext = ".jpg" if ext.lower() in (".jpg", ".jpeg") else ".png"
        dst = os.path.join(output_dir, stem + ext)
        Image.fromarray(vis).save(dst, quality=92) if ext == ".jpg" else Image.fromarray(vis).save(dst)
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
    written = run(cfg, args.weights, args.input, args.output, args.score_thresh)
    print(f"Wrote {len(written)} picture(s) to {args.output}")
    return written


if __name__ == "__main__":
    main()
