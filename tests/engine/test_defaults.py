import os

import pytest
from _tiny_model import TinyTrainer, tiny_cfg

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.engine import default_argument_parser, default_setup, setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fpn_cfg():
    """A config this project builds (get_cfg() alone describes detectron2's C4 model, which it refuses)."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    return cfg


def _tiny_fpn_cfg(out, **overrides):
    """The tiny trainer's config with a model section default_setup accepts (Base-RCNN-FPN's)."""
    cfg = tiny_cfg(out, **overrides)
    cfg.MODEL = _fpn_cfg().MODEL
    return cfg


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
    cfg = _fpn_cfg()
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
    cfg = _fpn_cfg()
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

    cfg = _fpn_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    try:
        default_setup(cfg)
        tiny = torch.tensor([1e-40])
        assert float(tiny * 1.0) == 0.0  # this thread now flushes
    finally:
        torch.set_flush_denormal(False)


def test_bare_get_cfg_is_refused_before_anything_is_written(tmp_path):
    """get_cfg()'s own model (C4, Res5ROIHeads) is not built here: refused by validate_cfg, naming the key, before
    the output dir (log.txt, config.yaml) exists. It used to pass validation and fail in build_roi_heads after
    config.yaml was written."""
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"MODEL.ROI_HEADS.NAME = 'Res5ROIHeads' is not supported by FasterRCNN") as e:
        default_setup(cfg)
    assert not (tmp_path / "out").exists()
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == len(set(lines)) == 3  # ROI_HEADS.NAME, ROI_BOX_HEAD.NAME, NUM_CONV/NUM_FC: each once


def test_setup_once_the_trainer_does_not_validate_again(tmp_path, monkeypatch):
    """default_setup validates; the Trainer given the same config does not (validate_cfg returns at once), while a
    Trainer given a config that did not come through default_setup validates it itself."""
    from resnet_backbone.config import validate as validate_mod

    calls = []
    real = validate_mod.find_cfg_problems
    monkeypatch.setattr(validate_mod, "find_cfg_problems", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = _tiny_fpn_cfg(tmp_path / "a", SEED=-1)
    default_setup(cfg)
    assert len(calls) == 1 and cfg.SEED >= 0
    t = TinyTrainer(cfg)
    assert len(calls) == 1 and t.seed == cfg.SEED  # the seed default_setup drew and wrote to config.yaml
    assert f"SEED: {cfg.SEED}" in (tmp_path / "a" / "config.yaml").read_text()
    TinyTrainer(tiny_cfg(tmp_path / "b"))  # no default_setup: validated here
    assert len(calls) == 2
    changed = _tiny_fpn_cfg(tmp_path / "a", SEED=cfg.SEED)
    default_setup(changed)
    changed.SOLVER.STEPS = (5, 5)  # changed after setup: validated again, and refused
    with pytest.raises(ConfigError, match="SOLVER.STEPS: must be increasing"):
        TinyTrainer(changed)
