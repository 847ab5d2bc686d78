#!/usr/bin/env python
"""Train or evaluate a detector from a config (detectron2's tools/train_net.py flags and meaning).

    python tools/train_net.py --config-file configs/quickstart/faster_rcnn_R_50_FPN_synthetic.yaml
    python tools/train_net.py --config-file CFG --resume                 # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 2             # 2 processes (gloo on CPU, nccl on GPU)
    torchrun --nproc-per-node 2 tools/train_net.py --config-file CFG     # same, launched by torchrun
    python tools/train_net.py --config-file CFG SOLVER.MAX_ITER 100 OUTPUT_DIR out/x   # KEY VALUE overrides
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.checkpoint.checkpointer import Checkpointer  # noqa: E402
from resnet_backbone.engine import Trainer, default_argument_parser, default_setup, launch, setup_cfg  # noqa: E402
from resnet_backbone.modeling.fast_paths import optimize_for_inference  # noqa: E402
from resnet_backbone.utils import comm  # noqa: E402


def setup(args):
    cfg = setup_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Checkpointer(model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        # MODEL.FUSE_FROZEN_BN / CHANNELS_LAST / COMPILE: the inference fast paths, once the weights are in
        model = optimize_for_inference(model, cfg)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.is_main_process() and results:
        from resnet_backbone.engine import flatten_results

        logging.getLogger("resnet_backbone").info("Final results: %s", flatten_results(results))
    return results


def invoke_main(argv=None) -> None:
    args = default_argument_parser().parse_args(argv)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    invoke_main()
