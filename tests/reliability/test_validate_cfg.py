"""validate_cfg: a config that cannot train is refused before anything is built or written, naming the keys."""
import glob
import os

import pytest
from _rel_common import tiny_trainer_cfg

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import find_cfg_problems, validate_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fpn_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    return cfg


def _set(cfg, key, value):
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)))
def test_every_shipped_config_validates(path):
    """Detector configs with the builder checks of their meta architecture; the bare-backbone configs
    (Base-ResNet.yaml and the ImageNet classifiers: tools/classify.py and analyze_model.py build no detector)
    without them, and with them they are refused as the detector get_cfg() describes (C4) is."""
    cfg = get_cfg()
    cfg.merge_from_file(path)
    backbone_only = os.path.basename(path) == "Base-ResNet.yaml" or os.sep + "ImageNet" + os.sep in path
    assert find_cfg_problems(cfg, world_size=1, model=not backbone_only) == []
    if backbone_only:
        assert any(p.startswith("MODEL.ROI_HEADS.NAME = 'Res5ROIHeads'") for p in find_cfg_problems(cfg, 1))


BAD = [
    # (key set, bad value, text the message must contain)
    ("MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res6"], r"MODEL.FPN.IN_FEATURES: \['res6'\] not produced"),
    ("MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"], r"MODEL.FPN.IN_FEATURES: \['res2'\] not produced"),
    ("MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p7"], r"MODEL.ROI_HEADS.IN_FEATURES: \['p7'\] not produced"),
    ("MODEL.RPN.IN_FEATURES", ["res4"], r"MODEL.RPN.IN_FEATURES: \['res4'\] not produced"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", 0, r"MODEL.ROI_HEADS.NUM_CLASSES: must satisfy 1 <= value, got 0"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", -3, r"MODEL.ROI_HEADS.NUM_CLASSES"),
    ("SOLVER.IMS_PER_BATCH", 0, r"SOLVER.IMS_PER_BATCH: must satisfy 1 <= value"),
    ("SOLVER.BASE_LR", float("nan"), r"SOLVER.BASE_LR: must be a finite number"),
    ("SOLVER.BASE_LR", -0.1, r"SOLVER.BASE_LR: must satisfy 0 <= value"),
    ("SOLVER.STEPS", (300, 200), r"SOLVER.STEPS: must be increasing"),
    ("SOLVER.MAX_ITER", "100", r"SOLVER.MAX_ITER: expected int .* got str '100'"),
    ("SOLVER.AMP.ENABLED", "yes", r"SOLVER.AMP.ENABLED: expected bool"),
    ("MODEL.PIXEL_MEAN", 103.5, r"MODEL.PIXEL_MEAN: expected list"),
    ("SOLVER.OPTIMIZER", "RMSprop", r"SOLVER.OPTIMIZER: must be one of 'SGD', 'ADAMW'"),
    ("SOLVER.NONFINITE_POLICY", "ignore", r"SOLVER.NONFINITE_POLICY: must be one of 'error', 'skip'"),
    ("SOLVER.WARMUP_FACTOR", 2.0, r"SOLVER.WARMUP_FACTOR"),
    ("MODEL.RESNETS.DEPTH", 51, r"MODEL.RESNETS.DEPTH: must be one of 18, 34, 50"),
    ("MODEL.RESNETS.NORM", "LayerNorm", r"MODEL.RESNETS.NORM: must be one of"),
    ("MODEL.BACKBONE.FREEZE_AT", 7, r"MODEL.BACKBONE.FREEZE_AT"),
    ("MODEL.RESNETS.RES5_DILATION", 2, r"MODEL.FPN.IN_FEATURES: strides must double"),
    ("MODEL.META_ARCHITECTURE", "FasterRCNNN", r"MODEL.META_ARCHITECTURE: 'FasterRCNNN' is not registered; "
                                               r"did you mean 'FasterRCNN'"),
    ("MODEL.BACKBONE.NAME", "build_resnet_fpn", r"MODEL.BACKBONE.NAME: 'build_resnet_fpn' is not registered"),
    ("MODEL.PIXEL_STD", [1.0, 0.0, 1.0], r"MODEL.PIXEL_STD: every value must be > 0"),
    ("MODEL.PIXEL_STD", [1.0, 1.0], r"MODEL.PIXEL_MEAN / MODEL.PIXEL_STD: differ in length"),
    ("INPUT.FORMAT", "YUV", r"INPUT.FORMAT: must be one of"),
    ("INPUT.MIN_SIZE_TRAIN", (0, 640), r"INPUT.MIN_SIZE_TRAIN: must be positive integers"),
    ("MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64]], r"MODEL.ANCHOR_GENERATOR.SIZES / MODEL.RPN.IN_FEATURES: 2 entries "
                                                   r"for 5 RPN level"),
    ("DATALOADER.NUM_WORKERS", -1, r"DATALOADER.NUM_WORKERS"),
    ("DATALOADER.ON_BAD_SAMPLE", "drop", r"DATALOADER.ON_BAD_SAMPLE: must be one of 'error', 'skip'"),
    ("TEST.EVALUATOR_BACKEND", "cocoapi", r"TEST.EVALUATOR_BACKEND"),
    ("MODEL.RPN.IOU_THRESHOLDS", [0.7, 0.3], r"MODEL.RPN.IOU_THRESHOLDS: must be increasing values in \[0, 1\]"),
]


@pytest.mark.parametrize("key,value,pattern", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_inconsistent_or_wrong_value_is_named(key, value, pattern):
    cfg = _fpn_cfg()
    _set(cfg, key, value)
    with pytest.raises(ConfigError, match=pattern):
        validate_cfg(cfg, world_size=1)


INF, NAN = float("inf"), float("nan")
# Numbers that trained (or crashed far away, blamed on something else) before validate_cfg looked at them:
# (config file to start from, {key: value} set, text the message must contain)
_FPN, _DETR = "Base-RCNN-FPN.yaml", "quickstart/detr_R_50_synthetic.yaml"
_DB = "quickstart/dbnet_R_50_FPN_synthetic.yaml"
BAD_NUMBERS = [
    (_FPN, {"MODEL.ANCHOR_GENERATOR.SIZES": [[-32], [64], [128], [256], [512]]},
     r"MODEL.ANCHOR_GENERATOR.SIZES: every value must be a finite number > 0, got \[-32\]"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.SIZES": [[0, 32]]}, r"MODEL.ANCHOR_GENERATOR.SIZES: .* > 0, got \[0\]"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.SIZES": [[32, INF]]}, r"MODEL.ANCHOR_GENERATOR.SIZES: .*got \[inf\]"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.SIZES": [["32"]]}, r"MODEL.ANCHOR_GENERATOR.SIZES: .*got \['32'\]"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.SIZES": [[]]}, r"MODEL.ANCHOR_GENERATOR.SIZES: every level needs at least one"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, -1.0, 2.0]]},
     r"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS: every value must be a finite number > 0, got \[-1.0\]"),
    (_FPN, {"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[NAN]]}, r"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS: .*got \[nan\]"),
    (_FPN, {"MODEL.PIXEL_MEAN": [103.5, INF, 123.7]}, r"MODEL.PIXEL_MEAN: every value must be a finite number"),
    (_FPN, {"MODEL.PIXEL_MEAN": [NAN, 116.3, 123.7]}, r"MODEL.PIXEL_MEAN: every value must be a finite number"),
    (_FPN, {"MODEL.PIXEL_MEAN": ["103", 116.3, 123.7]}, r"MODEL.PIXEL_MEAN: every value must be a finite number"),
    (_FPN, {"MODEL.PIXEL_STD": [1.0, INF, 1.0]}, r"MODEL.PIXEL_STD: every value must be > 0 and finite"),
    (_FPN, {"MODEL.PIXEL_STD": [NAN, 1.0, 1.0]}, r"MODEL.PIXEL_STD: every value must be > 0 and finite"),
    (_FPN, {"MODEL.RPN.BBOX_REG_WEIGHTS": (1.0, 0.0, 1.0, 1.0)}, r"MODEL.RPN.BBOX_REG_WEIGHTS: every value .* 0 < "),
    (_FPN, {"MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0)},
     r"MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS: needs 4 numbers, got 3"),
    (_FPN, {"MODEL.PROPOSAL_GENERATOR.MIN_SIZE": -1}, r"MODEL.PROPOSAL_GENERATOR.MIN_SIZE: must satisfy 0 <= "),
    (_FPN, {"MODEL.ROI_BOX_HEAD.FC_DIM": 0}, r"MODEL.ROI_BOX_HEAD.FC_DIM: must satisfy 1 <= value"),
    (_FPN, {"INPUT.ROTATION_ANGLE": NAN}, r"INPUT.ROTATION_ANGLE: must be a finite number"),
    (_FPN, {"INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": [0.9, 1.5]},
     r"INPUT.CROP.SIZE: .*0 < value <= 1, got \[1.5\]"),
    (_FPN, {"INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": [NAN, 0.5]}, r"INPUT.CROP.SIZE: .*got \[nan\]"),
    (_FPN, {"INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute_range", "INPUT.CROP.SIZE": [640, 320]},
     r"INPUT.CROP.SIZE: 'absolute_range' needs \(min, max\)"),
    (_FPN, {"SOLVER.BIAS_LR_FACTOR": NAN}, r"SOLVER.BIAS_LR_FACTOR: must be a finite number"),
    (_FPN, {"SOLVER.WEIGHT_DECAY_BIAS": -1e-4}, r"SOLVER.WEIGHT_DECAY_BIAS: must satisfy 0 <= value"),
    (_FPN, {"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 0.0},
     r"SOLVER.CLIP_GRADIENTS.NORM_TYPE: must be a number > 0"),
    (_DETR, {"MODEL.DETR.GIOU_WEIGHT": -2.0}, r"MODEL.DETR.GIOU_WEIGHT: must satisfy 0 <= value"),
    (_DETR, {"MODEL.DETR.NO_OBJECT_WEIGHT": NAN}, r"MODEL.DETR.NO_OBJECT_WEIGHT: must be a finite number"),
    (_DETR, {"MODEL.DETR.DIM_FEEDFORWARD": 0}, r"MODEL.DETR.DIM_FEEDFORWARD: must satisfy 1 <= value"),
    (_DB, {"MODEL.DBNET.K": 0.0}, r"MODEL.DBNET.K: must satisfy 0 < value"),
    (_DB, {"MODEL.DBNET.THRESH_LOSS_WEIGHT": INF}, r"MODEL.DBNET.THRESH_LOSS_WEIGHT: must be a finite number"),
    (_DB, {"MODEL.DBNET.BOX_THRESH": 1.5}, r"MODEL.DBNET.BOX_THRESH: must satisfy 0 <= value <= 1"),
    (_DB, {"MODEL.DBNET.THRESH_MIN": 0.8}, r"MODEL.DBNET.THRESH_MIN / MODEL.DBNET.THRESH_MAX: min 0.8 > max 0.7"),
]


@pytest.mark.parametrize("base,values,pattern", BAD_NUMBERS,
                         ids=[f"{k}={v!r}" for _, vs, _ in BAD_NUMBERS for k, v in list(vs.items())[-1:]])
def test_number_that_is_not_finite_or_not_positive_is_named(base, values, pattern):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", base))
    assert find_cfg_problems(cfg, world_size=1) == []
    for key, value in values.items():
        _set(cfg, key, value)
    with pytest.raises(ConfigError, match=pattern):
        validate_cfg(cfg, world_size=1)


def test_flat_anchor_lists_and_inf_norm_are_fine():
    """What faster_rcnn accepts stays accepted: a flat list (one value per level, faster_rcnn._per_level), int
    ratios, the max norm (inf) for clipping, absolute crop sizes above 1."""
    cfg = _fpn_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [32, 64, 128, 256, 512]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1, 2]]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = INF
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = "absolute_range", [320, 640]
    assert find_cfg_problems(cfg, world_size=1) == []


def test_ims_per_batch_not_divisible_by_world_size():
    cfg = _fpn_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 6
    validate_cfg(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH: 6 images per batch cannot be split over 4"):
        validate_cfg(cfg, world_size=4)


def test_unknown_key_set_in_code_is_named_with_nearest():
    cfg = _fpn_cfg()
    cfg.SOLVER.MAX_ITERS = 3  # an unfrozen CfgNode accepts new attributes; merge-time checks never see this
    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITERS: unknown config key; did you mean 'SOLVER.MAX_ITER'"):
        validate_cfg(cfg, world_size=1)


def test_every_problem_is_reported_at_once():
    cfg = _fpn_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 0
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res9"]
    cfg.SOLVER.IMS_PER_BATCH = 3
    problems = find_cfg_problems(cfg, world_size=2)
    assert [p.split(":")[0] for p in problems] == ["SOLVER.IMS_PER_BATCH", "MODEL.FPN.IN_FEATURES",
                                                     "MODEL.ROI_HEADS.NUM_CLASSES"]


def test_detr_and_dbnet_feature_checks():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quickstart", "detr_R_50_synthetic.yaml"))
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.DETR.NHEADS = 7
    msg = "\n".join(find_cfg_problems(cfg, world_size=1))
    assert "DETR reads 'res5'" in msg and "MODEL.DETR.HIDDEN_DIM / MODEL.DETR.NHEADS" in msg
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "quickstart", "dbnet_R_50_FPN_synthetic.yaml"))
    cfg.MODEL.DBNET.IN_FEATURES = ["p2", "p3", "p4", "res5"]
    with pytest.raises(ConfigError, match=r"MODEL.DBNET.IN_FEATURES: \['res5'\] not produced"):
        validate_cfg(cfg, world_size=1)


def test_cuda_device_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = _fpn_cfg()
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ConfigError, match="MODEL.DEVICE: 'cuda' but CUDA is not available"):
        validate_cfg(cfg, world_size=1)


def test_trainer_refuses_before_building_or_writing(tmp_path, monkeypatch):
    from _tiny_model import TinyTrainer

    built = []
    monkeypatch.setattr(TinyTrainer, "build_model", classmethod(lambda cls, cfg: built.append(1)))
    out = tmp_path / "out"
    cfg = tiny_trainer_cfg(out)
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p9"]
    with pytest.raises(ConfigError, match=r"MODEL.ROI_HEADS.IN_FEATURES: \['p9'\] not produced"):
        TinyTrainer(cfg)
    assert built == [] and not out.exists()


def test_train_net_setup_refuses_before_writing(tmp_path):
    from resnet_backbone.engine import default_setup

    out = tmp_path / "out"
    cfg = _fpn_cfg()
    cfg.OUTPUT_DIR = str(out)
    cfg.SOLVER.STEPS = (5, 5)
    with pytest.raises(ConfigError, match="SOLVER.STEPS: must be increasing"):
        default_setup(cfg)
    assert not out.exists()


@pytest.mark.parametrize("dtype, missing", [("bfloat16", "cpu_bf16_native"), ("float16", "cpu_fp16_native")])
def test_precision_the_cpu_lacks_is_refused_before_writing(tmp_path, dtype, missing):
    from resnet_backbone.engine import default_setup
    from resnet_backbone.utils.machine import override_machine

    out = tmp_path / "out"
    cfg = _fpn_cfg()
    cfg.OUTPUT_DIR = str(out)
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = dtype
    with override_machine(**{missing: False}):
        with pytest.raises(ConfigError, match=rf"SOLVER.AMP.ENABLED True asks for {dtype} autocast .*CPU .* no native "
                                              rf"{dtype}.*SOLVER.AMP.ENABLED auto"):
            default_setup(cfg)
        assert not out.exists()
        cfg.SOLVER.AMP.ENABLED = "auto"  # the same request as "where native" passes
        assert find_cfg_problems(cfg, world_size=1) == []


def test_train_net_on_an_avx2_cpu_refuses_explicit_bf16_with_the_way_out(tmp_path):
    """The whole tool, as a user on an AVX2-only CPU runs it (emulated with RB_MACHINE): a clear error, nothing
    written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
           os.path.join(ROOT, "configs", "quickstart", "faster_rcnn_R_50_FPN_synthetic.yaml"),
           "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(out)]
    env = {**os.environ, "RB_MACHINE": "cpu_bf16_native=0,cpu_amx=0"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode != 0
    assert "SOLVER.AMP.ENABLED True asks for bfloat16 autocast" in r.stderr
    assert "SOLVER.AMP.ENABLED force" in r.stderr and "overridden: cpu_amx, cpu_bf16_native" in r.stderr
    assert not out.exists()


def test_bad_amp_dtype_is_reported_once():
    cfg = _fpn_cfg()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.DTYPE = "int8"
    problems = [p for p in find_cfg_problems(cfg, world_size=1) if "SOLVER.AMP" in p]
    assert problems == ["SOLVER.AMP.DTYPE: must be one of 'float16', 'bfloat16', got 'int8'"]
