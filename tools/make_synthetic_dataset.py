#!/usr/bin/env python
"""Write a synthetic detection dataset (real COCO json + PNG images) for machines without COCO.

    python tools/make_synthetic_dataset.py --kind shapes --output datasets/synthetic_shapes \
        --num-train 200 --num-val 50 --image-size 256 --seed 0

writes OUTPUT/train.json, OUTPUT/train/*.png, OUTPUT/val.json, OUTPUT/val/*.png. With the default
datasets root ($RB_DATASETS, "./datasets") the shapes output above is what "synthetic_shapes_train" /
"synthetic_shapes_val" read.
"""
from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm


def _generate(kind, output, split, n, image_size, seed):
    if kind == "shapes":
        from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

        return generate_shapes_dataset(output, split, n, image_size=image_size, seed=seed, progress=True)
    from resnet_backbone.data.synthetic.text import generate_text_dataset  # written by the text/DBNet work

    return generate_text_dataset(output, split, n, image_size, seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["shapes", "text"], default="shapes")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        p.error("--num-train and --num-val must be >= 0")
    os.makedirs(args.output, exist_ok=True)
    splits = [(s, n) for s, n in (("train", args.num_train), ("val", args.num_val)) if n > 0]
    # the val split gets a different seed stream (the generator also mixes in the split name)
    for split, n in tqdm(splits, desc=f"{args.kind} splits", unit="split", disable=len(splits) < 2):
        path = _generate(args.kind, args.output, split, n, args.image_size, args.seed)
        print(f"wrote {n} images: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
