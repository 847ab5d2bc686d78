#!/usr/bin/env python
"""Draw the ground truth of the training set on its images, to check the data before training.

    python tools/visualize_data.py --config-file CFG --source dataset --output DIR [--num N] [KEY VALUE ...]
    python tools/visualize_data.py --config-file CFG --source dataloader --output DIR [--num N] [KEY VALUE ...]

--source dataset: the records of DATASETS.TRAIN as loaded, every image (also those without annotations),
in the datasets' order: the boxes with the class names of the dataset's metadata; crowd boxes dashed grey,
labelled "name (crowd)". For a text dataset (evaluator_type "text") the polygons instead, don't-care text
dashed grey, labelled "###". With MODEL.MASK_ON the instance masks too (polygons or RLE, rasterised by
pycocotools as the mapper does): translucent class-coloured fills with outlines, crowd regions grey.
--source dataloader: the samples of the training loader (the mapper and augmentations training uses, seeded
as training from SEED at iteration 0; SEED -1: a random seed, logged), i.e. the images after augmentation
and the boxes (text: polygons; with MODEL.MASK_ON also the gt_masks) the model receives. Crowd annotations are
not among them; don't-care text is.

--num N: at most N pictures (default: every record of the dataset, i.e. one epoch for the dataloader).

Output names: --source dataset names each picture as tools/demo.py does (the image's name, .jpg for a JPEG,
.png otherwise; x.png and x.tif both present: x.png.png, x.tif.png); when two records' images share a file
name (two folders, or the same image twice) every picture is prefixed with its record's index: 000012_x.png.
--source dataloader: NNNNNN_<name>, NNNNNN the sample's position in the training stream. An existing
picture is refused unless --overwrite is given (for the dataloader: any NNNNNN_* picture of a previous run in
--output); --output may not be an image folder of the dataset (--source dataset), and no picture is ever
written over a dataset image.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS_DIR))
sys.path.insert(0, TOOLS_DIR)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_backbone.utils.cli import OverridesArgumentParser, ToolError, positive_int, run_tool  # noqa: E402

logger = logging.getLogger("resnet_backbone.visualize_data")
_DATALOADER_NAME = re.compile(r"^\d{6}_.+\.(png|jpg)$")


def get_parser() -> argparse.ArgumentParser:
    p = OverridesArgumentParser(description="Draw the ground truth of DATASETS.TRAIN on its images.",
                                epilog=__doc__[__doc__.index("--source dataset:"):],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--source", required=True, choices=["dataset", "dataloader"],
                   help="dataset: the records as loaded; dataloader: the training samples after augmentation")
    p.add_argument("--output", required=True, help="output folder for the pictures")
    p.add_argument("--num", type=positive_int, default=None, metavar="N",
                   help="at most N pictures (default: every record)")
    p.add_argument("--overwrite", action="store_true", help="replace pictures that already exist")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


def setup(args):
    """The config (file + overrides, frozen, validated as training validates it: datasets given by path are
    registered) and the names of DATASETS.TRAIN (ConfigError when empty or not registered)."""
    from resnet_backbone.config import ConfigError
    from resnet_backbone.config.validate import validate_cfg
    from resnet_backbone.data import DatasetCatalog
    from resnet_backbone.engine import setup_cfg

    cfg = setup_cfg(args)
    cfg.freeze()
    validate_cfg(cfg, model=False)  # data only: the model is not built (its builder checks are left out)
    names = list(cfg.DATASETS.TRAIN)
    where = f" (config {args.config_file})" if args.config_file else ""
    if not names:
        raise ConfigError(f"DATASETS.TRAIN is empty{where}: nothing to visualize; set DATASETS.TRAIN to a "
                          "registered dataset name or to 'path/to/instances.json:path/to/images'")
    for name in names:
        if name not in DatasetCatalog:
            raise ConfigError(f"DATASETS.TRAIN: dataset '{name}' is not registered{where}; available: "
                              f"{', '.join(sorted(DatasetCatalog)) or 'none'} (or give 'path/to/instances.json:"
                              "path/to/images')")
    return cfg, names


def _meta(name: str):
    from resnet_backbone.data import MetadataCatalog

    return MetadataCatalog.get(name)


def _is_text(name: str) -> bool:
    return _meta(name).get("evaluator_type", None) == "text"


def _class_names(name: str):
    names = _meta(name).get("thing_classes", None)
    return list(names) if names else None


def _save(vis: np.ndarray, dst: str) -> None:
    if dst.endswith(".jpg"):
        Image.fromarray(vis).save(dst, quality=92)
    else:
        Image.fromarray(vis).save(dst)


def _makedirs(output_dir: str) -> None:
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise ToolError(f"--output '{output_dir}' cannot be created: {e.strerror or e}") from e


# ---------------------------------------------------------------------------- --source dataset
def _record_drawing(rec: dict, text: bool, mask_on: bool = False):
    """(boxes xyxy, labels, polygons or None, crowd, ignore, masks or None) of a dataset record's annotations. A
    text annotation with several polygons gives one drawn instance per polygon. `mask_on`: each annotation's
    segmentation as an (H, W) mask at the record's size (None for one without)."""
    from resnet_backbone.data import DatasetError
    from resnet_backbone.data.masks import segmentation_to_mask

    boxes, labels, polys, crowd, ignore, masks = [], [], [], [], [], []
    for a in rec.get("annotations", []) or []:
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            label = int(a.get("category_id", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"bad bbox {a.get('bbox')!r} (expected [x, y, width, height])",
                               file=rec.get("file_name"), record=f"annotation id={a.get('id')}", field="bbox") from e
        seg = a.get("segmentation")
        parts = [None]
        if text and isinstance(seg, list) and seg:
            flat = [seg] if all(isinstance(v, (int, float)) for v in seg) else seg
            parts = [np.asarray(p, dtype=float).reshape(-1, 2) for p in flat]
        if mask_on and not text:
            masks.append(None if not seg else segmentation_to_mask(
                seg, rec["height"], rec["width"], file=rec.get("file_name"), record=f"annotation id={a.get('id')}"))
        for p in parts:
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            polys.append(p)
            crowd.append(bool(a.get("iscrowd", 0)))
            ignore.append(bool(a.get("ignore", False)))
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return boxes, labels, (polys if text else None), crowd, ignore, (masks if mask_on and not text else None)


def _dataset_names(files: list[str]) -> list[str]:
    """demo.py's output names; with a file name shared by two records, each prefixed by its record's index."""
    import demo

    try:
        return demo.output_names(files)
    except ToolError:
        plain = [os.path.splitext(os.path.basename(f))[0] + demo._output_ext(f) for f in files]
        return [f"{i:06d}_{n}" for i, n in enumerate(plain)]


def visualize_dataset(cfg, names: list[str], output_dir: str, num: int | None = None,
                      overwrite: bool = False) -> list[str]:
    import demo
    from tqdm import tqdm

    from resnet_backbone.data import DatasetError, read_image
    from resnet_backbone.data.build import get_detection_dataset_dicts
    from resnet_backbone.utils.visualizer import draw_ground_truth

    items = []  # (record, dataset name)
    for name in names:
        recs = get_detection_dataset_dicts([name], filter_empty=False, on_bad_sample=cfg.DATALOADER.ON_BAD_SAMPLE)
        items += [(r, name) for r in recs]
        if num is not None and len(items) >= num:
            break
    items = items[:num] if num is not None else items
    files = []
    for rec, _ in items:
        f = rec.get("file_name")
        if not isinstance(f, str) or not os.path.isfile(f):
            raise DatasetError("image file not found" if isinstance(f, str) else f"no file_name ({f!r})",
                               file=f if isinstance(f, str) else None, record=f"image_id={rec.get('image_id')}",
                               field="file_name")
        files.append(f)
    image_dirs = sorted({os.path.dirname(f) or "." for f in files})
    dsts = demo.plan_outputs(image_dirs, files, output_dir, overwrite, names=_dataset_names(files))
    _makedirs(output_dir)
    written = []
    for (rec, name), path, dst in tqdm(list(zip(items, files, dsts)), desc="visualize dataset", unit="image"):
        text = _is_text(name)
        image = read_image(path, format="RGB")
        boxes, labels, polys, crowd, ignore, masks = _record_drawing(rec, text, cfg.MODEL.MASK_ON)
        vis = draw_ground_truth(image, boxes, labels, _class_names(name), polygons=polys, crowd=crowd,
                                ignore=ignore, masks=masks)
        _save(vis, dst)
        written.append(dst)
    return written


# ---------------------------------------------------------------------------- --source dataloader
def _sample_drawing(sample: dict, image_format: str, text: bool):
    """(RGB image, boxes, labels, polygons or None, ignore, gt_masks or None) of a mapped training sample."""
    img = sample["image"]
    img = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    img = np.ascontiguousarray(img.transpose(1, 2, 0))
    if img.shape[2] == 3 and image_format == "BGR":
        img = img[:, :, ::-1]
    inst = sample.get("instances")
    if inst is None or len(inst) == 0:
        return img, np.zeros((0, 4)), [], None, None, None
    boxes = inst.gt_boxes
    boxes = getattr(boxes, "tensor", boxes)
    labels = inst.gt_classes
    has = inst.has if hasattr(inst, "has") else (lambda k: hasattr(inst, k))
    ignore = inst.gt_ignore if has("gt_ignore") else None
    polys = list(inst.gt_polygons) if text and has("gt_polygons") else None
    masks = inst.gt_masks if has("gt_masks") else None
    return img, boxes, labels, polys, ignore, masks


def _check_dataloader_output(output_dir: str, overwrite: bool) -> None:
    import demo

    demo.plan_outputs([], [], output_dir, overwrite, names=[])  # --output is not a file
    if overwrite or not os.path.isdir(output_dir):
        return
    old = sorted(f for f in os.listdir(output_dir) if _DATALOADER_NAME.match(f))
    if old:
        more = f" (and {len(old) - 1} more)" if len(old) > 1 else ""
        raise ToolError(f"--output '{output_dir}' already has pictures of a previous run ('{old[0]}'{more}); pass "
                        "--overwrite to replace them, or choose another --output folder")


def visualize_dataloader(cfg, names: list[str], output_dir: str, num: int | None = None,
                         overwrite: bool = False) -> list[str]:
    import demo
    from tqdm import tqdm

    from resnet_backbone.data.build import build_detection_train_loader
    from resnet_backbone.utils.seed import derive_seed
    from resnet_backbone.utils.visualizer import draw_ground_truth

    _check_dataloader_output(output_dir, overwrite)
    seed = int(cfg.SEED)
    if seed < 0:
        seed = derive_seed(time.time_ns())
        logger.info("SEED is -1: drawing the samples of seed %d (set SEED %d to see them again)", seed, seed)
    loader = build_detection_train_loader(cfg, seed=seed)
    total = len(loader.dataset) if num is None else num
    text = any(_is_text(n) for n in names)
    class_names = next((c for c in map(_class_names, names) if c), None)
    _makedirs(output_dir)
    written = []
    with tqdm(total=total, desc="visualize dataloader", unit="image") as bar:
        for batch in loader:
            for sample in batch:
                if len(written) >= total:
                    break
                src = str(sample.get("file_name", "image"))
                dst = os.path.join(output_dir, f"{len(written):06d}_{os.path.splitext(os.path.basename(src))[0]}"
                                               f"{demo._output_ext(src)}")
                if os.path.exists(dst):
                    if os.path.isdir(dst):
                        raise ToolError(f"the output '{dst}' is a folder; move it away or choose another --output")
                    if os.path.isfile(src) and os.path.samefile(src, dst):
                        raise ToolError(f"the output '{dst}' is the dataset image '{src}': drawing would overwrite "
                                        "it; choose another --output folder")
                img, boxes, labels, polys, ignore, masks = _sample_drawing(sample, cfg.INPUT.FORMAT, text)
                vis = draw_ground_truth(img, boxes, labels, class_names, polygons=polys, ignore=ignore, masks=masks)
                _save(vis, dst)
                written.append(dst)
                bar.update(1)
            if len(written) >= total:
                break
    return written


def main(argv=None) -> list[str]:
    from resnet_backbone.utils.logger import setup_logger

    args = get_parser().parse_args(argv)
    setup_logger()
    cfg, names = setup(args)
    run = visualize_dataset if args.source == "dataset" else visualize_dataloader
    written = run(cfg, names, args.output, args.num, overwrite=args.overwrite)
    print(f"Wrote {len(written)} picture(s) of DATASETS.TRAIN {names} ({args.source}) to {args.output}")
    return written


if __name__ == "__main__":
    sys.exit(run_tool(main))
