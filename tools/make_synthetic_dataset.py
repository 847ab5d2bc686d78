#!/usr/bin/env python
"""Write a synthetic detection dataset (real COCO json + PNG images) for machines without COCO.

    python tools/make_synthetic_dataset.py --kind shapes --output datasets/synthetic_shapes \
        --num-train 200 --num-val 50 --image-size 256 --seed 0

writes OUTPUT/train.json, OUTPUT/train/*.png, OUTPUT/val.json, OUTPUT/val/*.png. With the default
datasets root ($RB_DATASETS, "./datasets") the shapes output above is what "synthetic_shapes_train" /
"synthetic_shapes_val" read. A split that is already there (its json, or images in its folder) is refused
unless --overwrite is given; nothing is written before that check.
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.utils.cli import ToolError, run_tool  # noqa: E402

MIN_IMAGE_SIZE = 32  # what the generators accept (data/synthetic/common.py)


def _generate(kind, output, split, n, image_size, seed):
    if kind == "shapes":
        from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

        return generate_shapes_dataset(output, split, n, image_size=image_size, seed=seed, progress=True)
    from resnet_backbone.data.synthetic.text import generate_text_dataset  # written by the text/DBNet work

    return generate_text_dataset(output, split, n, image_size, seed)


def check_output(output: str, splits: list[str], overwrite: bool) -> None:
    """Raise ToolError, naming the path, when `output` cannot hold the dataset or (without `overwrite`) one of
    `splits` was written there before."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ToolError(f"--output '{output}' is a file, not a folder; give the folder to write the dataset into")
    existing = []
    for split in splits:
        json_path, image_dir = os.path.join(output, f"{split}.json"), os.path.join(output, split)
        if os.path.lexists(image_dir) and not os.path.isdir(image_dir):
            raise ToolError(f"'{image_dir}' is a file where the {split} images go; move it away or choose another "
                            "--output folder")
        if os.path.lexists(json_path):
            existing.append(json_path)
        elif os.path.isdir(image_dir) and os.listdir(image_dir):
            existing.append(image_dir)
    if existing and not overwrite:
        raise ToolError(f"a dataset already exists in --output '{output}' ({', '.join(existing)}); pass --overwrite "
                        "to replace it, or choose another --output folder")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["shapes", "text"], default="shapes")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--image-size", type=int, default=256, help=f"pixels (>= {MIN_IMAGE_SIZE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the splits of a dataset already in --output (their json and images)")
    args = p.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        p.error("--num-train and --num-val must be >= 0")
    if args.image_size < MIN_IMAGE_SIZE:
        p.error(f"--image-size must be >= {MIN_IMAGE_SIZE}, got {args.image_size}")
    splits = [(s, n) for s, n in (("train", args.num_train), ("val", args.num_val)) if n > 0]
    check_output(args.output, [s for s, _ in splits], args.overwrite)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise ToolError(f"--output '{args.output}' cannot be created: {e.strerror or e}") from e
    # the val split gets a different seed stream (the generator also mixes in the split name)
    for split, n in tqdm(splits, desc=f"{args.kind} splits", unit="split", disable=len(splits) < 2):
        path = _generate(args.kind, args.output, split, n, args.image_size, args.seed)
        print(f"wrote {n} images: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
