"""What every synthetic generator does around its drawing: check arguments, seed, iterate, write the json."""
from __future__ import annotations

import json
import os
import zlib

import numpy as np


def start_split(output_dir, split: str, num_images: int, image_size: int, seed: int, progress: bool, desc: str):
    """Check the arguments, create `output_dir/<split>/`, and return (output_dir, image_dir, rng, iterator).

    The rng depends on (seed, split) only, so a split is reproducible on its own.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    output_dir = os.fspath(output_dir)
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.default_rng([int(seed), zlib.crc32(split.encode())])
    iterator = range(num_images)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=desc, unit="img")
    return output_dir, image_dir, rng, iterator


def write_coco_json(output_dir: str, split: str, data: dict) -> str:
    """Write `output_dir/<split>.json` atomically (temp file + rename) and return its path."""
    json_path = os.path.join(output_dir, f"{split}.json")
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, json_path)
    return json_path
