#!/usr/bin/env python
"""`make demo`: the quickstart, end to end, on CPU.

1. makes the synthetic shapes set under $RB_DATASETS/synthetic_shapes (default ./datasets) if absent;
2. trains configs/quickstart/faster_rcnn_R_50_FPN_synthetic.yaml (ResNet-50 FPN Faster R-CNN from scratch)
   through tools/train_net.py's main;
3. evaluates with COCOeval and prints the AP table;
4. draws detections on a few validation images into OUTPUT_DIR/demo/ and plots metrics.json into
   OUTPUT_DIR/metrics.png; prints where everything went.

    python tools/run_demo.py [--config-file CFG] [--num-train N] [--num-val M] [--image-size S]
                             [--num-pictures K] [--resume] [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from resnet_backbone.utils.cli import OverridesArgumentParser, run_tool  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "quickstart", "faster_rcnn_R_50_FPN_synthetic.yaml")


def ensure_shapes_dataset(num_train: int, num_val: int, image_size: int, seed: int = 0) -> str:
    from resnet_backbone.data.builtin import datasets_root
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    out = os.path.join(datasets_root(), "synthetic_shapes")
    for split, n, s in (("train", num_train, seed), ("val", num_val, seed + 1)):
        if os.path.exists(os.path.join(out, f"{split}.json")):
            print(f"[demo] using existing {os.path.join(out, split + '.json')}")
            continue
        print(f"[demo] generating {n} synthetic {split} images ({image_size} px) in {out}")
        generate_shapes_dataset(out, split, n, image_size=image_size, seed=s, progress=True)
    return out


def main(argv=None) -> dict:
    p = OverridesArgumentParser(description="Quickstart: data, training, evaluation, pictures.")
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--image-size", type=int, default=192)
    p.add_argument("--num-pictures", type=int, default=6)
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    t0 = time.time()

    data_dir = ensure_shapes_dataset(args.num_train, args.num_val, args.image_size)

    import train_net

    from resnet_backbone.engine import print_results_table
    from resnet_backbone.utils.machine import machine
    from resnet_backbone.utils.precision import resolve_amp

    targs = train_net.default_argument_parser().parse_args(
        ["--config-file", args.config_file] + (["--resume"] if args.resume else []) + list(args.opts))
    t_train = time.time()
    results = train_net.main(targs)
    t_train = time.time() - t_train
    cfg = train_net.setup_cfg(targs)
    out_dir = os.path.abspath(cfg.OUTPUT_DIR)

    import demo
    from plot_metrics import plot_metrics

    val_dir = os.path.join(data_dir, "val")
    val_images = sorted(os.path.join(val_dir, f) for f in os.listdir(val_dir))[: args.num_pictures]
    # OUTPUT_DIR/demo holds this demo's own pictures: a rerun (--resume) replaces them
    pictures = demo.run(cfg, os.path.join(out_dir, "model_final.pth"), val_images, os.path.join(out_dir, "demo"),
                        args.score_thresh, overwrite=True)
    plot = plot_metrics(os.path.join(out_dir, "metrics.json"), os.path.join(out_dir, "metrics.png"))

    print("\n" + "=" * 72)
    print(print_results_table(results) if results else "(no evaluation results)")
    print("=" * 72)
    print(f"data:        {data_dir}")
    print(f"config:      {os.path.join(out_dir, 'config.yaml')}")
    print(f"checkpoint:  {os.path.join(out_dir, 'model_final.pth')}")
    print(f"metrics:     {os.path.join(out_dir, 'metrics.json')}  (TensorBoard: tensorboard --logdir {out_dir})")
    print(f"plot:        {plot}")
    print(f"pictures:    {os.path.dirname(pictures[0]) if pictures else '-'} ({len(pictures)} images)")
    print(f"log:         {os.path.join(out_dir, 'log.txt')}")
    print(f"machine:     {machine().describe()}")
    print(f"precision:   {resolve_amp(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, cfg.MODEL.DEVICE).reason}")
    print(f"wall time:   {time.time() - t0:.0f} s (training + evaluation {t_train:.0f} s)")
    return results


if __name__ == "__main__":
    sys.exit(run_tool(main))
