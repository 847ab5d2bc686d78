import os

import pytest

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.config import get_cfg
from resnet_backbone.engine import default_argument_parser, default_setup, setup_cfg


def test_argument_parser_has_detectron2_flags():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.yaml", "--resume", "--eval-only", "--num-gpus", "2", "--num-machines", "1",
         "--machine-rank", "0", "--dist-url", "tcp://127.0.0.1:1234", "SOLVER.MAX_ITER", "7", "SEED", "1"])
    assert args.config_file == "a.yaml" and args.resume and args.eval_only and args.num_gpus == 2
    assert args.dist_url == "tcp://127.0.0.1:1234"
    assert args.opts == ["SOLVER.MAX_ITER", "7", "SEED", "1"]
    cfg = setup_cfg(default_argument_parser().parse_args(["SOLVER.MAX_ITER", "7"]))
    assert cfg.SOLVER.MAX_ITER == 7


def test_odd_overrides_rejected():
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        setup_cfg(default_argument_parser().parse_args(["SOLVER.MAX_ITER"]))


def test_default_setup_random_seed_logged_and_saved(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = -1
    cfg.freeze()
    default_setup(cfg, None)
    assert cfg.SEED >= 0 and cfg.is_frozen()
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert f"SEED: {cfg.SEED}" in saved
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"random seed {cfg.SEED}" in log
    # the saved config loads back as a config
    again = get_cfg()
    again.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert again.SEED == cfg.SEED


def test_default_setup_unwritable_output(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = os.path.join(str(f), "out")
    with pytest.raises(CheckpointError, match="cannot be created"):
        default_setup(cfg, None)


_DENORMAL_MM = """
import sys, torch
if sys.argv[1] == "early":
    from resnet_backbone.engine import flush_denormal
    assert flush_denormal()
torch.set_num_threads(2)
tiny = torch.full((64, 4096), 1e-40)       # denormal float32
big = torch.full((4096, 64), 1e30)
out = tiny @ big                           # 4096 * 1e-40 * 1e30 = 4.1e-7 unless inputs are flushed to zero
print(int((out != 0).sum()))
"""


@pytest.mark.parametrize("when", ["early", "never"])
def test_flush_denormal_reaches_every_intra_op_thread(when):
    """Set before the first parallel op, FTZ/DAZ holds in all threads of a 2-thread matmul: every output is 0
    (denormal inputs read as zero). Without it every output is the small nonzero product."""
    import subprocess
    import sys

    if not __import__("torch").set_flush_denormal(False):
        pytest.skip("this CPU has no flush-denormal mode")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _DENORMAL_MM, when], capture_output=True, text=True, check=True,
                         cwd=root).stdout
    nonzero = int(out.strip().splitlines()[-1])
    assert nonzero == (0 if when == "early" else 64 * 64)


def test_default_setup_flushes_denormals(tmp_path):
    import torch

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    try:
        default_setup(cfg)
        tiny = torch.tensor([1e-40])
        assert float(tiny * 1.0) == 0.0  # this thread now flushes
    finally:
        torch.set_flush_denormal(False)
