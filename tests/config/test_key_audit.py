"""Every key of get_cfg() is honoured or refused (issue 15: keys accepted and never read).

For every leaf key, either
  (a) it is in config/refused.py's REFUSED_KEYS, and a value other than its default makes validate_cfg raise a
      ConfigError naming it (and nothing reads it), or
  (b) the code reads it: a recording config (a CfgNode that notes every key read) goes through what reads configs
      -- tools/train_net.py's main (default_setup, the Trainer: model, optimizer, LR schedule, loader, precise BN,
      periodic and final evaluation, checkpoints, EMA, verify_results) for a tiny Faster R-CNN, --eval-only on its
      weights with test-time augmentation, build_model for DETR and DBNet, DatasetMapper.from_config and the
      optimizer / schedule for the branches the first run does not take. validate_cfg's own reads are not counted
      (a range check is not an implementation).
The test fails naming every key that is neither.
"""
import contextlib
import os

import pytest
import torch

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.config import CfgNode
from resnet_backbone.config.refused import REFUSED_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingCfg(CfgNode):
    """A CfgNode that adds the full name of every leaf key read (attribute, item or .get) to `RecordingCfg.reads`
    while `RecordingCfg.active`; merges and dumps happen with it off."""

    reads: set = set()
    active = False

    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__(init_dict, key_list, new_allowed)
        self.__dict__["_prefix"] = "".join(f"{k}." for k in (key_list or []))

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if RecordingCfg.active and not isinstance(value, CfgNode):
            RecordingCfg.reads.add(self.__dict__.get("_prefix", "") + str(name))
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default


@contextlib.contextmanager
def recording():
    RecordingCfg.active = True
    try:
        yield
    finally:
        RecordingCfg.active = False


def _leaf_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _recording_cfg(config_file, opts):
    """get_cfg() + the file + opts as a RecordingCfg; the merge's own reads are not recorded."""
    was, RecordingCfg.active = RecordingCfg.active, False
    try:
        cfg = RecordingCfg(get_cfg())
        cfg.merge_from_file(os.path.join(ROOT, "configs", config_file))
        cfg.merge_from_list(opts)
        return cfg
    finally:
        RecordingCfg.active = was


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _other_value(default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    if isinstance(default, str):
        return default + "_other"
    if isinstance(default, (list, tuple)):
        return [[1.0, 2.0]] if not default else []
    raise AssertionError(f"no other value for {default!r}")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("audit")
    train = generate_shapes_dataset(str(root), "train", 4, image_size=64, seed=0)
    val = generate_shapes_dataset(str(root), "val", 2, image_size=64, seed=1)
    return f"{train}:{root / 'train'}", f"{val}:{root / 'val'}"


def _run_reads(tmp_path, datasets, monkeypatch) -> set:
    from _tools import TINY_FRCNN_MODEL, load_tool

    from resnet_backbone.config import validate
    from resnet_backbone.data import DatasetMapper
    from resnet_backbone.engine import default_setup
    from resnet_backbone.modeling.meta_arch import build_model
    from resnet_backbone.solver import build_lr_scheduler, build_optimizer

    RecordingCfg.reads = set()
    real_find = validate.find_cfg_problems

    def unrecorded_find(*a, **k):  # validate_cfg's range checks do not count as reading a key
        was, RecordingCfg.active = RecordingCfg.active, False
        try:
            return real_find(*a, **k)
        finally:
            RecordingCfg.active = was

    monkeypatch.setattr(validate, "find_cfg_problems", unrecorded_find)
    train_net = load_tool("train_net")
    train, val = datasets
    tiny = [*TINY_FRCNN_MODEL, "MODEL.ROI_HEADS.NUM_CLASSES", "3", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
            "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(2,)",
            "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2", "SEED", "3",
            "LOG_PERIOD", "1"]
    on = ["TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "1", "MODEL_EMA.ENABLED", "True",
          "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
          "SOLVER.BEST_CHECKPOINT_METRIC", "bbox/AP50", "INPUT.CROP.ENABLED", "True", "INPUT.PHOTOMETRIC.ENABLED",
          "True", "TEST.EXPECTED_RESULTS", "[['bbox', 'AP', 50.0, 100.0]]", "SOLVER.REFERENCE_WORLD_SIZE", "1",
          "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "0.5"]
    out = tmp_path / "frcnn"
    cfg = _recording_cfg("Base-RCNN-FPN.yaml", [*tiny, *on, "OUTPUT_DIR", str(out)])
    args = train_net.default_argument_parser().parse_args([])
    with recording():
        monkeypatch.setattr(train_net, "setup", lambda a: (cfg.freeze(), default_setup(cfg, a), cfg)[-1])
        train_net.main(args)
        # --eval-only on those weights, with test-time augmentation and the inference fast paths' keys
        ev = _recording_cfg("Base-RCNN-FPN.yaml", [*tiny, "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS",
                                                   str(out / "model_final.pth"), "TEST.AUG.ENABLED", "True",
                                                   "TEST.AUG.MIN_SIZES", "(48, 64)", "TEST.AUG.MAX_SIZE", "100"])
        monkeypatch.setattr(train_net, "setup", lambda a: (ev.freeze(), default_setup(ev, a), ev)[-1])
        train_net.main(train_net.default_argument_parser().parse_args(["--eval-only"]))
        # the branches not taken above: large-scale jitter (instead of crops), the cosine schedule, AdamW
        other = _recording_cfg("Base-RCNN-FPN.yaml", [*tiny, "INPUT.LSJ.ENABLED", "True", "INPUT.LSJ.SIZE", "[64, 64]",
                                                      "SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR",
                                                      "SOLVER.OPTIMIZER", "ADAMW", "SOLVER.CLIP_GRADIENTS.ENABLED",
                                                      "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value"])
        DatasetMapper.from_config(other, True)
        DatasetMapper.from_config(other, False)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        build_lr_scheduler(other, build_optimizer(other, model))
        from resnet_backbone.solver import build_grad_clipper

        build_grad_clipper(other)
        # the other detectors, tiny
        for config_file, opts in [
            ("quickstart/detr_R_50_synthetic.yaml", ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                                                     "64", "MODEL.DETR.HIDDEN_DIM", "16", "MODEL.DETR.NHEADS", "2",
                                                     "MODEL.DETR.DIM_FEEDFORWARD", "16"]),
            ("quickstart/dbnet_R_50_FPN_synthetic.yaml", ["MODEL.RESNETS.DEPTH", "18",
                                                          "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                                                          "MODEL.FPN.OUT_CHANNELS", "16"]),
            # RetinaNet: MODEL.RETINANET.* (its builders read every key; modeling/retinanet/build.py)
            ("quickstart/retinanet_R_50_FPN_synthetic.yaml", ["MODEL.RESNETS.DEPTH", "18",
                                                              "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                                                              "MODEL.FPN.OUT_CHANNELS", "16"]),
            # Mask R-CNN: MODEL.ROI_MASK_HEAD.* are read when the mask head is built (MODEL.MASK_ON)
            ("quickstart/mask_rcnn_R_50_FPN_synthetic.yaml", [*TINY_FRCNN_MODEL, "MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]),
        ]:
            c = _recording_cfg(config_file, opts)
            build_model(c)
            build_optimizer(c, model)
    return set(RecordingCfg.reads)


def test_every_key_is_read_or_refused(tmp_path, datasets, monkeypatch):
    reads = _run_reads(tmp_path, datasets, monkeypatch)
    keys = set(_leaf_keys(get_cfg()))
    neither = sorted(keys - reads - set(REFUSED_KEYS))
    assert not neither, f"accepted and never read (implement them, or refuse them in config/refused.py): {neither}"
    read_and_refused = sorted(reads & set(REFUSED_KEYS))
    assert not read_and_refused, f"refused in config/refused.py but read by the code: {read_and_refused}"


@pytest.mark.parametrize("key", sorted(REFUSED_KEYS))
def test_a_refused_key_changed_from_its_default_names_it(key):
    from resnet_backbone.config.validate import validate_cfg

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    validate_cfg(cfg, world_size=1)  # the default passes (detectron2's configs set many of these to it)
    *path, leaf = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    node[leaf] = _other_value(node[leaf])
    with pytest.raises(ConfigError) as e:
        validate_cfg(cfg, world_size=1)
    lines = [p for p in str(e.value).splitlines()[1:] if p.strip().startswith(f"{key} = ")]
    assert len(lines) == 1 and "is not implemented" in lines[0] and REFUSED_KEYS[key] in lines[0], str(e.value)


def test_recording_config_sees_reads():
    """The recorder itself: a read key is recorded with its full name, a merge or a dump records nothing."""
    RecordingCfg.reads = set()
    cfg = _recording_cfg("Base-RCNN-FPN.yaml", ["SOLVER.BASE_LR", "0.5"])
    cfg.dump()
    assert RecordingCfg.reads == set()
    with recording():
        _recording_cfg("Base-RCNN-FPN.yaml", ["SOLVER.MAX_ITER", "3"])  # merging is not reading
        assert cfg.SOLVER.BASE_LR == 0.5 and cfg.MODEL.RESNETS["DEPTH"] == 50 and cfg.get("SEED") == -1
        clone = cfg.clone()
        assert clone.INPUT.FORMAT == "BGR"
    assert RecordingCfg.reads == {"SOLVER.BASE_LR", "MODEL.RESNETS.DEPTH", "SEED", "INPUT.FORMAT"}
