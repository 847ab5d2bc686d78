"""Command line and process setup shared by the tools (detectron2's flags and meaning)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from ..checkpoint.checkpointer import _atomic_write, check_output_dir
from ..utils import comm
from ..utils.cli import OverridesArgumentParser
from ..utils.logger import setup_logger
from ..utils.machine import machine
from ..utils.seed import derive_seed, seed_all_rng

__all__ = ["default_argument_parser", "default_setup", "setup_cfg", "flush_denormal", "resolve_seed"]


def default_argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    # OverridesArgumentParser: a flag typed after the KEY VALUE overrides is an argparse error naming it
    parser = OverridesArgumentParser(
        epilog=epilog or """Examples:
  single process:     tools/train_net.py --config-file cfg.yaml
  2 processes:        tools/train_net.py --num-gpus 2 --config-file cfg.yaml  (CPU: 2 gloo processes)
  torchrun:           torchrun --nproc-per-node 2 tools/train_net.py --config-file cfg.yaml
  change config:      tools/train_net.py --config-file cfg.yaml SOLVER.BASE_LR 0.01 SOLVER.IMS_PER_BATCH 4
  evaluate:           tools/train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS model_final.pth
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config file")
    parser.add_argument("--resume", action="store_true",
                        help="resume from OUTPUT_DIR/last_checkpoint if it exists (all states); otherwise load "
                             "MODEL.WEIGHTS and start at iteration 0")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or the last checkpoint "
                        "with --resume) and exit")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (GPUs; on a CPU-only machine, CPU processes with gloo)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (unique per machine)")
    parser.add_argument("--dist-url", default="auto",
                        help="initialization URL for the process group; 'auto' = a free local port (one machine)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 100")
    return parser


def setup_cfg(args):
    """get_cfg() + --config-file + KEY VALUE overrides (frozen)."""
    from ..config import get_cfg

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        from ..config import ConfigError  # a ValueError

        flags = [t for t in opts if isinstance(t, str) and t.startswith("--")]
        hint = (f"; {', '.join(repr(t) for t in flags)} looks like a flag: flags must come before the overrides"
                if flags else f"; the last key '{opts[-1]}' has no value")
        raise ConfigError(f"config overrides must be KEY VALUE pairs, got an odd number ({len(opts)}): {opts}{hint}")
    cfg.merge_from_list(opts)
    return cfg


def flush_denormal() -> bool:
    """Treat denormal floats as zero on CPU (x86 FTZ/DAZ; `torch.set_flush_denormal(True)`). Returns whether
    this CPU supports it.

    The flag lives in each thread's floating-point control register and new threads copy it from the thread
    that starts them, so call this before the first parallel op: intra-op threads that already exist keep
    computing with denormals (which makes a matmul 50-180x slower on this kind of CPU).
    """
    return bool(torch.set_flush_denormal(True))


def resolve_seed(cfg) -> int:
    """cfg.SEED, or for SEED < 0 a random seed, the same on every rank (drawn once per call: collective under
    torch.distributed, so every rank calls it)."""
    seed = int(cfg.SEED)
    if seed >= 0:
        return seed
    return comm.shared_random_seed() if comm.get_world_size() > 1 else derive_seed(*os.urandom(8))


def default_setup(cfg, args=None) -> None:
    """The process's setup, done here once (detectron2's split): the config validated, output dir (checked
    writable), logging, environment + config logged, config.yaml, the seed. The Trainer builds; it validates
    only a config that did not come through here (validate_cfg returns at once for one it has seen).

    SEED < 0 draws a random seed (the same on every rank), logs it and writes it into cfg.SEED, so
    config.yaml records the seed that was really used and the Trainer uses it.
    """
    from ..config.validate import validate_cfg

    # SEED < 0: drawn first, so the config validated is the one written and used (a SEED that is not an
    # integer is validate_cfg's to report)
    drawn = isinstance(cfg.SEED, int) and not isinstance(cfg.SEED, bool) and cfg.SEED < 0
    if drawn:
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = resolve_seed(cfg)
        if was_frozen:
            cfg.freeze()
    # a config that cannot train fails here (every problem named, the model's builder checks included), before
    # the output dir is touched or config.yaml written
    validate_cfg(cfg)
    if cfg.get("FLUSH_DENORMAL", False):
        # first thing: threads started later inherit the flag (it is per thread; see flush_denormal)
        flush_denormal()
    rank = comm.get_rank()
    out = cfg.OUTPUT_DIR
    if out and comm.is_main_process():
        check_output_dir(out)
    comm.synchronize()
    logger = setup_logger(out or None, distributed_rank=rank)
    setup_logger(out or None, distributed_rank=rank, name="fvcore")
    logger.info("Rank %d of world size %d", rank, comm.get_world_size())
    logger.info("Environment: python %s, torch %s, CUDA available: %s, threads %d", sys.version.split()[0],
                torch.__version__, torch.cuda.is_available(), torch.get_num_threads())
    logger.info("Machine: %s", machine().describe())
    if args is not None:
        logger.info("Command line arguments: %s", args)
        if getattr(args, "config_file", ""):
            try:
                with open(args.config_file, encoding="utf-8") as f:
                    logger.info("Contents of %s:\n%s", args.config_file, f.read())
            except OSError:
                pass
    seed = int(cfg.SEED)
    if drawn:
        logger.info("SEED was -1: using the random seed %d (set SEED %d to reproduce this run)", seed, seed)
    seed_all_rng(derive_seed(seed, rank))
    logger.info("Running with full config:\n%s", cfg.dump())
    if out and comm.is_main_process():
        path = os.path.join(out, "config.yaml")
        text = cfg.dump()
        _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        logger.info("Full config saved to %s", path)
    benchmark = bool(cfg.CUDNN_BENCHMARK)  # cuDNN's autotuner (CUDA only)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = benchmark
    logging.getLogger(__name__).debug("setup done")
