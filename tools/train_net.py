#!/usr/bin/env python
"""Train or evaluate a detector from a config (detectron2's tools/train_net.py flags and meaning).

    python tools/train_net.py --config-file configs/quickstart/faster_rcnn_R_50_FPN_synthetic.yaml
    python tools/train_net.py --config-file CFG --resume                 # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 2             # 2 processes (gloo on CPU, nccl on GPU)
    torchrun --nproc-per-node 2 tools/train_net.py --config-file CFG     # same, launched by torchrun
    python tools/train_net.py --config-file CFG SOLVER.MAX_ITER 100 OUTPUT_DIR out/x   # KEY VALUE overrides

Flags come before the KEY VALUE overrides (a flag after them is an error naming it). A bad config, dataset,
checkpoint or precision setting ends the run with one line `train_net.py: error: ...` and exit status 2 (in
this process and under torchrun, in each rank); a bug keeps its traceback (status 1). With --num-gpus N the
spawned ranks report their errors with torch's traceback.
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
from resnet_backbone.utils.cli import run_tool  # noqa: E402

_engine_argument_parser = default_argument_parser


def default_argument_parser(epilog=None):
    """The engine's parser (detectron2's flags) plus train_net's --allow-partial-weights."""
    parser = _engine_argument_parser(epilog)
    parser.add_argument("--allow-partial-weights", action="store_true",
                        help="with --eval-only: evaluate even if MODEL.WEIGHTS leaves part of the model at its "
                             "random initialisation (refused otherwise; training always allows it: fine-tuning)")
    return parser


def setup(args):
    cfg = setup_cfg(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # every tensor must come from the weights (a partial load evaluates random layers) unless asked otherwise;
        # MODEL_EMA.ENABLED: the checkpoint's EMA weights, the ones training evaluated
        Checkpointer(model, cfg.OUTPUT_DIR, use_ema_weights=bool(cfg.MODEL_EMA.ENABLED)).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume, allow_partial=getattr(args, "allow_partial_weights", False))
        # MODEL.FUSE_FROZEN_BN / MKLDNN_PREPACK / CHANNELS_LAST / COMPILE: the inference fast paths, weights loaded
        model = optimize_for_inference(model, cfg)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.is_main_process() and results:
        from resnet_backbone.engine import flatten_results

        logging.getLogger("resnet_backbone").info("Final results: %s", flatten_results(results))
    if comm.is_main_process():  # TEST.EXPECTED_RESULTS (detectron2's verify_results): a miss fails the run
        from resnet_backbone.engine.trainer import verify_results

        verify_results(cfg, results or {})
    return results


def _check_launch_args(parser, args) -> None:
    """What launch() would refuse later with a traceback, as argparse errors now."""
    if args.num_machines < 1:
        parser.error(f"--num-machines must be >= 1, got {args.num_machines}")
    if not 0 <= args.machine_rank < args.num_machines:
        parser.error(f"--machine-rank must be in [0, --num-machines {args.num_machines}), got {args.machine_rank}")
    if args.num_machines > 1 and args.dist_url in (None, "auto"):
        parser.error("--dist-url auto only works on one machine; with --num-machines > 1 give "
                     "--dist-url tcp://HOST:PORT of machine 0")


def invoke_main(argv=None) -> None:
    parser = default_argument_parser()
    args = parser.parse_args(argv)
    _check_launch_args(parser, args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    # one process (and each torchrun rank): the library's errors end in one line, exit 2 (resnet_backbone.utils.cli)
    sys.exit(run_tool(invoke_main))
