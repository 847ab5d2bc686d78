"""`validate_cfg(cfg)`: catch a config that cannot train BEFORE anything is built or written.

Merging already refuses unknown keys and values whose type differs from the default (config.py). This step
looks at the finished config as a whole and reports every problem at once, each naming its key(s):

  - types: a value set in code (cfg.X = ...) bypasses the merge checks; compared with the defaults here
    (int for float is fine, list and tuple are interchangeable, a None default accepts anything);
  - ranges and choices: SOLVER.*, INPUT.*, DATALOADER.*, TEST.*, MODEL.RESNETS.* (depth, norm, freeze_at ...);
  - numbers that must be finite (and positive where 0 or less means nothing): anchor sizes and aspect ratios,
    PIXEL_MEAN / PIXEL_STD (std > 0), box-regression weights, loss weights, crop size, rotation angle ...;
  - consistency: MODEL.FPN.IN_FEATURES produced by the ResNet (MODEL.RESNETS.OUT_FEATURES), RPN / ROI_HEADS /
    DBNET in-features produced by the backbone, DETR reading res5, anchor sizes per level, NUM_CLASSES >= 1,
    SOLVER.IMS_PER_BATCH divisible by the world size, PIXEL_MEAN/STD length matching INPUT.FORMAT,
    MODEL.DEVICE available;
  - datasets given by path (DATASETS.TRAIN / TEST "instances.json:images" or "gts_dir:images"): the json /
    folders exist (validate_cfg then registers them, data/builtin.py);
  - inference fast paths: MODEL.MKLDNN_PREPACK on a non-CPU device, or without MODEL.FUSE_FROZEN_BN over foldable
    norms (modeling/fast_paths `fast_path_problems`, also run by optimize_for_inference);
  - precision: SOLVER.AMP.ENABLED / DTYPE against what MODEL.DEVICE runs natively (utils/precision.py): True
    with a dtype the device lacks is refused here, before the model is built.

  - keys nothing implements (config/refused.py REFUSED_KEYS): refused when changed from their default;
  - the meta architecture's own builder checks (`model=True`, the default): FasterRCNN's are modeling/rcnn/build.py
    `check_config` (what its builders refuse: C4's Res5ROIHeads, the bare get_cfg() model, included); a detector
    registered elsewhere may give a `check_config(cfg) -> list[str]` classmethod. `model=False` leaves them out
    for a config whose model is not built from it (a data-only tool, a Trainer subclass with its own build_model).

Feature checks are done without building a model (the strides of ResNet stages and FPN levels are known),
for the builders this package registers; a backbone registered by someone else is not second-guessed. A problem
is reported once, under the key it is about.

validate_cfg runs once per config: default_setup validates it, and the Trainer's call for the same config object
with the same contents returns at once (the config's dump is remembered on the object).

    from resnet_backbone.config.validate import validate_cfg
    validate_cfg(cfg, world_size=2)   # ConfigError listing every problem, or None
"""
from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Sequence

from .config import WORD_OR_BOOL_KEYS, CfgNode, ConfigError

__all__ = ["validate_cfg", "find_cfg_problems"]

logger = logging.getLogger(__name__)
_VALIDATED = "_validated_as"  # cfg.__dict__ entry: (cfg.dump(), world size, model checks) of the last pass

_RESNET_FEATURES = ("stem", "res2", "res3", "res4", "res5", "linear")
_OWN_BACKBONES = ("build_resnet_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_problems(node, default, prefix: str, out: list[str]) -> None:
    for k, v in node.items():
        key = f"{prefix}{k}"
        if k not in default:
            near = difflib.get_close_matches(k, list(default), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            out.append(f"{key}: unknown config key{hint}")
            continue
        d = default[k]
        if isinstance(d, CfgNode):
            if isinstance(v, CfgNode):
                _type_problems(v, d, key + ".", out)
            else:
                out.append(f"{key}: must be a config section, got {type(v).__name__} {v!r}")
            continue
        if d is None:
            continue
        ok = True
        if isinstance(d, bool):
            ok = isinstance(v, bool) or (isinstance(v, str) and v.lower() in WORD_OR_BOOL_KEYS.get(key, ()))
        elif isinstance(d, int):
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(d, float):
            ok = _is_num(v)
        elif isinstance(d, str):
            ok = isinstance(v, str)
        elif isinstance(d, (list, tuple)):
            ok = isinstance(v, (list, tuple))
        if not ok:
            out.append(f"{key}: expected {type(d).__name__} (like the default {d!r}), got {type(v).__name__} {v!r}")


class _Checker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.problems: list[str] = []

    def get(self, key: str):
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def add(self, key: str, msg: str) -> None:
        self.problems.append(f"{key}: {msg}")

    def number(self, key: str, lo=None, hi=None, lo_open=False, hi_open=False, integer=False) -> None:
        v = self.get(key)
        if not _is_num(v) or (integer and not isinstance(v, int)) or not math.isfinite(v):
            self.add(key, f"must be a finite {'integer' if integer else 'number'}, got {v!r}")
            return
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
            hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
            self.add(key, f"must satisfy {lo_s}value{hi_s}, got {v!r}")

    def numbers(self, key: str, lo=None, hi=None, lo_open=False, length=None) -> None:
        """A list of finite numbers, each lo <= (or <) value <= hi, `length` of them where given."""
        v = list(self.get(key))
        if length is not None and len(v) != length:
            self.add(key, f"needs {length} numbers, got {len(v)}: {v}")
            return
        bad = [x for x in v if not _is_num(x) or not math.isfinite(x)
               or (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi)]
        if bad:
            lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
            hi_s = "" if hi is None else f" <= {hi}"
            self.add(key, f"every value must be a finite number with {lo_s}value{hi_s}, got {bad} in {v}")

    def choice(self, key: str, choices: Sequence, transform=None) -> None:
        v = self.get(key)
        w = transform(v) if transform is not None and isinstance(v, str) else v
        if w not in choices:
            self.add(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")

    def names(self, key: str, available: Sequence[str], what: str) -> None:
        v = list(self.get(key))
        if not v:
            self.add(key, f"is empty; choose from {list(available)}")
            return
        missing = [f for f in v if f not in available]
        if missing:
            self.add(key, f"{missing} not produced by {what}, which outputs {list(available)}")


def _resnet_strides(cfg) -> dict[str, int]:
    from ..modeling.backbone.resnet import default_feature_strides  # the builder's own rule

    r = cfg.MODEL.RESNETS
    strides = default_feature_strides(r.RES5_DILATION if r.RES5_DILATION in (1, 2) else 1)
    return {f: strides[f] for f in r.OUT_FEATURES if f in strides}


def _backbone_outputs(c: _Checker) -> list[str] | None:
    """Names the backbone will output, or None when that is not known here (a backbone from elsewhere)."""
    cfg = c.cfg
    name = cfg.MODEL.BACKBONE.NAME
    if name not in _OWN_BACKBONES:
        return None
    res = _resnet_strides(cfg)
    if name == "build_resnet_backbone":
        return list(cfg.MODEL.RESNETS.OUT_FEATURES)
    fpn_in = list(cfg.MODEL.FPN.IN_FEATURES)
    c.names("MODEL.FPN.IN_FEATURES", list(cfg.MODEL.RESNETS.OUT_FEATURES),
            f"the ResNet (MODEL.RESNETS.OUT_FEATURES) for {name}")
    if not fpn_in or any(f not in res for f in fpn_in):
        return None  # already reported; the heads are not checked against a guess
    strides = [res[f] for f in fpn_in]
    if any(strides[i] != 2 * strides[i - 1] for i in range(1, len(strides))):
        c.add("MODEL.FPN.IN_FEATURES", f"strides must double from level to level (finest first), got "
              f"{dict(zip(fpn_in, strides))} (MODEL.RESNETS.RES5_DILATION={cfg.MODEL.RESNETS.RES5_DILATION})")
        return None
    levels = [int(math.log2(s)) for s in strides]
    extra = 1
    retinanet = name == "build_retinanet_resnet_fpn_backbone"
    top_in = cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE or ("res5" if retinanet else "p5")  # fpn.py _top_block_in_feature
    if top_in not in (("res5", "p5") if retinanet else ("p5",)):
        c.add("MODEL.FPN.TOP_BLOCK_IN_FEATURE", f"{top_in!r} cannot feed the top block of {name}; "
              + ("'res5' (detectron2) or 'p5' (torchvision)" if retinanet else "its max-pooled P6 comes from 'p5'"))
    elif top_in == "p5" and levels[-1] != 5:
        c.add("MODEL.FPN.TOP_BLOCK_IN_FEATURE", f"'p5' but the FPN's coarsest output is p{levels[-1]} "
              "(MODEL.FPN.IN_FEATURES)")
    if retinanet:
        extra = 2
        if top_in == "res5" and "res5" not in cfg.MODEL.RESNETS.OUT_FEATURES:
            c.add("MODEL.RESNETS.OUT_FEATURES", f"{name} computes P6/P7 from res5; add 'res5'")
    levels += [levels[-1] + i for i in range(1, extra + 1)]
    return [f"p{lv}" for lv in levels]


def _check_model(c: _Checker, world_size: int) -> None:
    from ..layers.batch_norm import NORM_CHOICES  # the builders' own tables: one source for the valid values
    from ..modeling.backbone.resnet import RESNET_DEPTHS

    cfg = c.cfg
    m = cfg.MODEL
    try:
        from ..modeling.backbone import BACKBONE_REGISTRY
        from ..modeling.meta_arch import META_ARCH_REGISTRY
    except Exception:  # pragma: no cover - registries unavailable: nothing to compare names with
        BACKBONE_REGISTRY = META_ARCH_REGISTRY = None
    for key, reg in (("MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY), ("MODEL.BACKBONE.NAME", BACKBONE_REGISTRY)):
        if reg is not None and c.get(key) not in reg:
            names = sorted(k for k, _ in reg)
            near = difflib.get_close_matches(str(c.get(key)), names, n=1)
            c.add(key, f"{c.get(key)!r} is not registered" + (f"; did you mean '{near[0]}'?" if near else "")
                  + f" (registered: {', '.join(names)})")

    dev = str(m.DEVICE)
    try:
        import torch

        d = torch.device(dev)
        if d.type == "cuda" and not torch.cuda.is_available():
            c.add("MODEL.DEVICE", f"'{dev}' but CUDA is not available on this machine (use 'cpu')")
        elif d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
            c.add("MODEL.DEVICE", f"'{dev}' but only {torch.cuda.device_count()} CUDA device(s) exist")
    except (RuntimeError, ValueError) as e:
        c.add("MODEL.DEVICE", f"not a device: {dev!r} ({e})")

    fmt = cfg.INPUT.FORMAT
    channels = {"BGR": 3, "RGB": 3, "L": 1}.get(fmt)
    mean, std = list(m.PIXEL_MEAN), list(m.PIXEL_STD)
    if len(mean) != len(std):
        c.add("MODEL.PIXEL_MEAN / MODEL.PIXEL_STD", f"differ in length: {mean} vs {std}")
    elif channels is not None and len(mean) != channels:
        c.add("MODEL.PIXEL_MEAN / INPUT.FORMAT", f"{len(mean)} values for {fmt!r} images with {channels} channel(s)")
    if any(not _is_num(s) or not math.isfinite(s) for s in mean):
        c.add("MODEL.PIXEL_MEAN", f"every value must be a finite number, got {mean}")
    if any(not _is_num(s) or not math.isfinite(s) or not s > 0 for s in std):  # 0, inf or nan: a nan loss later
        c.add("MODEL.PIXEL_STD", f"every value must be > 0 and finite, got {std}")

    r = m.RESNETS
    c.choice("MODEL.RESNETS.DEPTH", tuple(RESNET_DEPTHS))
    c.choice("MODEL.RESNETS.NORM", NORM_CHOICES)
    c.choice("MODEL.RESNETS.RES5_DILATION", (1, 2))
    c.number("MODEL.BACKBONE.FREEZE_AT", 0, 5, integer=True)
    c.number("MODEL.RESNETS.NUM_GROUPS", 1, integer=True)
    c.number("MODEL.RESNETS.WIDTH_PER_GROUP", 1, integer=True)
    c.number("MODEL.RESNETS.RES2_OUT_CHANNELS", 1, integer=True)
    c.number("MODEL.RESNETS.STEM_OUT_CHANNELS", 1, integer=True)
    c.number("MODEL.RESNETS.NUM_CLASSES", 0, integer=True)
    if r.DEPTH in (18, 34):
        if r.RES2_OUT_CHANNELS != 64:
            c.add("MODEL.RESNETS.RES2_OUT_CHANNELS", f"must be 64 for ResNet-{r.DEPTH}, got {r.RES2_OUT_CHANNELS}")
        if r.RES5_DILATION != 1:
            c.add("MODEL.RESNETS.RES5_DILATION", f"must be 1 for ResNet-{r.DEPTH}, got {r.RES5_DILATION}")
    bad = [f for f in r.OUT_FEATURES if f not in _RESNET_FEATURES]
    if bad or not list(r.OUT_FEATURES):
        c.add("MODEL.RESNETS.OUT_FEATURES", f"unknown or empty {list(r.OUT_FEATURES)}; valid: {_RESNET_FEATURES}")
    if "linear" in r.OUT_FEATURES and not r.NUM_CLASSES:
        c.add("MODEL.RESNETS.OUT_FEATURES / MODEL.RESNETS.NUM_CLASSES", "'linear' needs NUM_CLASSES > 0")
    if m.BACKBONE.NAME != "build_resnet_backbone":
        c.choice("MODEL.FPN.FUSE_TYPE", ("sum", "avg"))
        c.choice("MODEL.FPN.NORM", NORM_CHOICES)
        c.number("MODEL.FPN.OUT_CHANNELS", 1, integer=True)
    elif m.FPN.get("OUTPUT_CONVS", True) is not True:
        c.add("MODEL.FPN.OUTPUT_CONVS", f"{m.FPN.OUTPUT_CONVS!r} has no effect: MODEL.BACKBONE.NAME is "
              "build_resnet_backbone, which has no FPN; leave it True or use build_resnet_fpn_backbone")

    outputs = _backbone_outputs(c)
    what = f"the backbone ({m.BACKBONE.NAME})"
    arch = m.META_ARCHITECTURE
    if arch != "DBNet" and m.DBNET.get("ASF", False) is not False:  # DBNet++'s fusion exists in the DB head only
        c.add("MODEL.DBNET.ASF", f"Adaptive Scale Fusion (DBNet++) is part of the DB head and "
              f"MODEL.META_ARCHITECTURE is {arch!r}; set MODEL.META_ARCHITECTURE DBNet or MODEL.DBNET.ASF False")
    if arch == "FasterRCNN":
        rpn = m.RPN
        if outputs is not None:
            c.names("MODEL.RPN.IN_FEATURES", outputs, what)
            c.names("MODEL.ROI_HEADS.IN_FEATURES", outputs, what)
        n_levels = len(rpn.IN_FEATURES)
        for key in ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"):
            v = list(c.get(key))
            if len(v) not in (1, n_levels):
                c.add(f"{key} / MODEL.RPN.IN_FEATURES", f"{len(v)} entries for {n_levels} RPN level(s); give one "
                      "(shared) or one per level")
            levels = [list(x) if isinstance(x, (list, tuple)) else [x] for x in v]  # rcnn/build._per_level
            bad = [x for lv in levels for x in lv if not _is_num(x) or not math.isfinite(x) or x <= 0]
            if bad:  # a negative size or ratio builds anchors that train without error, on nonsense
                c.add(key, f"every value must be a finite number > 0, got {bad} in {v}")
            elif any(not lv for lv in levels):
                c.add(key, f"every level needs at least one value, got {v}")
        c.number("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", 0)
        for key in ("MODEL.RPN.BBOX_REG_WEIGHTS", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"):
            c.numbers(key, 0, lo_open=True, length=4)  # box deltas are divided by them
        c.number("MODEL.ROI_BOX_HEAD.FC_DIM", 1, integer=True)
        c.number("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 0, integer=True)
        c.number("MODEL.ROI_HEADS.NUM_CLASSES", 1, integer=True)
        for key in ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
                    "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"):
            c.number(key, 1, integer=True)
        for key in ("MODEL.RPN.POSITIVE_FRACTION", "MODEL.ROI_HEADS.POSITIVE_FRACTION"):
            c.number(key, 0, 1, lo_open=True)
        for key in ("MODEL.RPN.NMS_THRESH", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"):
            c.number(key, 0, 1)
        for key in ("MODEL.RPN.IOU_THRESHOLDS", "MODEL.ROI_HEADS.IOU_THRESHOLDS"):
            v = list(c.get(key))
            if any(not _is_num(x) or not 0 <= x <= 1 for x in v) or v != sorted(v):
                c.add(key, f"must be increasing values in [0, 1], got {v}")
    elif arch == "RetinaNet":  # the rest of its keys: modeling/retinanet/build.py check_config
        if outputs is not None:
            c.names("MODEL.RETINANET.IN_FEATURES", outputs, what)
    elif arch == "DETR":
        d = m.DETR
        if outputs is not None and "res5" not in outputs:
            c.add("MODEL.RESNETS.OUT_FEATURES", f"DETR reads 'res5' but the backbone outputs {outputs}")
        c.number("MODEL.DETR.NUM_CLASSES", 1, integer=True)
        c.number("MODEL.DETR.NUM_OBJECT_QUERIES", 1, integer=True)
        c.number("MODEL.DETR.NHEADS", 1, integer=True)
        c.number("MODEL.DETR.HIDDEN_DIM", 1, integer=True)
        c.number("MODEL.DETR.DEC_LAYERS", 1, integer=True)
        c.number("MODEL.DETR.ENC_LAYERS", 0, integer=True)
        c.number("MODEL.DETR.DROPOUT", 0, 1, hi_open=True)
        c.number("MODEL.DETR.DIM_FEEDFORWARD", 1, integer=True)
        for key in ("MODEL.DETR.CLASS_WEIGHT", "MODEL.DETR.GIOU_WEIGHT", "MODEL.DETR.L1_WEIGHT",
                    "MODEL.DETR.NO_OBJECT_WEIGHT"):
            c.number(key, 0)
        if isinstance(d.NHEADS, int) and d.NHEADS > 0 and isinstance(d.HIDDEN_DIM, int) and d.HIDDEN_DIM % d.NHEADS:
            c.add("MODEL.DETR.HIDDEN_DIM / MODEL.DETR.NHEADS", f"{d.HIDDEN_DIM} is not divisible by {d.NHEADS} heads")
    elif arch == "DBNet":
        if outputs is not None:
            c.names("MODEL.DBNET.IN_FEATURES", outputs, what)
        c.choice("MODEL.DBNET.NORM", NORM_CHOICES)
        c.number("MODEL.DBNET.SHRINK_RATIO", 0, 1, lo_open=True, hi_open=True)
        c.number("MODEL.DBNET.UNCLIP_RATIO", 0, lo_open=True)
        c.number("MODEL.DBNET.INNER_CHANNELS", 1, integer=True)
        c.number("MODEL.DBNET.K", 0, lo_open=True)
        c.number("MODEL.DBNET.NEG_POS_RATIO", 0, lo_open=True)
        c.number("MODEL.DBNET.MAX_CANDIDATES", 1, integer=True)
        for key in ("MODEL.DBNET.PROB_LOSS_WEIGHT", "MODEL.DBNET.THRESH_LOSS_WEIGHT", "MODEL.DBNET.BINARY_LOSS_WEIGHT",
                    "MODEL.DBNET.MIN_SIZE", "MODEL.DBNET.MIN_TEXT_SIZE"):
            c.number(key, 0)
        for key in ("MODEL.DBNET.THRESH_MIN", "MODEL.DBNET.THRESH_MAX", "MODEL.DBNET.BINARIZE_THRESH",
                    "MODEL.DBNET.BOX_THRESH"):
            c.number(key, 0, 1)
        db = m.DBNET
        lo, hi = db.THRESH_MIN, db.THRESH_MAX
        if all(_is_num(x) and math.isfinite(x) for x in (lo, hi)) and lo > hi:
            c.add("MODEL.DBNET.THRESH_MIN / MODEL.DBNET.THRESH_MAX", f"min {lo} > max {hi}")


def _model_builder_checks(c: _Checker) -> None:
    """The meta architecture's own checks (what its builders refuse), run here before anything is built or
    written: FasterRCNN's are modeling/rcnn/build.py `check_config`; a detector registered elsewhere may offer a
    `check_config(cfg) -> list[str]` classmethod. A key that a check above already reported is not repeated."""
    arch = c.cfg.MODEL.META_ARCHITECTURE
    check = None
    if arch == "FasterRCNN":
        from ..modeling.rcnn.build import check_config as check
    else:
        try:
            from ..modeling.meta_arch import META_ARCH_REGISTRY

            check = getattr(META_ARCH_REGISTRY.get(arch), "check_config", None)
        except KeyError:  # not registered: reported with MODEL.META_ARCHITECTURE
            return
    for line in (check(c.cfg) if check is not None else []):
        key = line.split(" = ", 1)[0].split(":", 1)[0]
        if not any(p.startswith((f"{key}:", f"{key} ")) for p in c.problems):
            c.problems.append(line)


def _check_solver(c: _Checker, world_size: int) -> None:
    s = c.cfg.SOLVER
    c.number("SOLVER.IMS_PER_BATCH", 1, integer=True)
    c.number("SOLVER.REFERENCE_WORLD_SIZE", 0, integer=True)
    ref = s.REFERENCE_WORLD_SIZE if isinstance(s.REFERENCE_WORLD_SIZE, int) and s.REFERENCE_WORLD_SIZE > 0 else 0
    if isinstance(s.IMS_PER_BATCH, int) and s.IMS_PER_BATCH >= 1 and ref and s.IMS_PER_BATCH % ref:
        # the Trainer scales the batch to the world size (Trainer.auto_scale_workers): images per process stay
        c.add("SOLVER.IMS_PER_BATCH", f"{s.IMS_PER_BATCH} images per batch cannot be split over "
              f"SOLVER.REFERENCE_WORLD_SIZE {ref} processes; use a multiple of it")
    elif isinstance(s.IMS_PER_BATCH, int) and s.IMS_PER_BATCH >= 1 and not ref and s.IMS_PER_BATCH % world_size:
        c.add("SOLVER.IMS_PER_BATCH", f"{s.IMS_PER_BATCH} images per batch cannot be split over {world_size} "
              "processes (world size); use a multiple of it (or set SOLVER.REFERENCE_WORLD_SIZE to the world "
              "size the config was written for)")
    c.number("SOLVER.MAX_ITER", 0, integer=True)
    c.number("SOLVER.BASE_LR", 0)
    c.number("SOLVER.BASE_LR_END", 0)
    c.number("SOLVER.MOMENTUM", 0, 1, hi_open=True)
    c.number("SOLVER.WEIGHT_DECAY", 0)
    c.number("SOLVER.WEIGHT_DECAY_NORM", 0)
    c.number("SOLVER.GAMMA", 0, lo_open=True)
    c.number("SOLVER.WARMUP_FACTOR", 0, 1)
    c.number("SOLVER.WARMUP_ITERS", 0, integer=True)
    c.number("SOLVER.CHECKPOINT_PERIOD", 0, integer=True)
    c.number("SOLVER.BACKBONE_MULTIPLIER", 0)
    c.number("SOLVER.BIAS_LR_FACTOR", 0)
    if s.WEIGHT_DECAY_BIAS is not None:
        c.number("SOLVER.WEIGHT_DECAY_BIAS", 0)
    # EMA + gradient accumulation (engine/ema.py, engine/trainer.py)
    c.number("SOLVER.GRAD_ACCUM_STEPS", 1, integer=True)
    c.number("MODEL_EMA.DECAY", 0, 1, lo_open=True, hi_open=True)
    c.number("MODEL_EMA.START_ITER", 0, integer=True)
    c.choice("SOLVER.OPTIMIZER", ("SGD", "ADAMW"), transform=str.upper)
    c.choice("SOLVER.LR_SCHEDULER_NAME", ("WarmupMultiStepLR", "WarmupCosineLR"))
    c.choice("SOLVER.WARMUP_METHOD", ("linear", "constant"))
    c.choice("SOLVER.NONFINITE_POLICY", ("error", "skip"))
    c.choice("SOLVER.AMP.DTYPE", ("float16", "bfloat16"))
    _check_precision(c)
    c.choice("SOLVER.BEST_CHECKPOINT_MODE", ("max", "min"))
    if s.CLIP_GRADIENTS.ENABLED:
        c.choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ("value", "norm", "full_model"))
        c.number("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0, lo_open=True)
        norm = s.CLIP_GRADIENTS.NORM_TYPE  # inf is a valid norm (the largest gradient)
        if not _is_num(norm) or math.isnan(norm) or norm <= 0:
            c.add("SOLVER.CLIP_GRADIENTS.NORM_TYPE", f"must be a number > 0 (inf for the max norm), got {norm!r}")
    steps = list(s.STEPS)
    if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in steps):
        c.add("SOLVER.STEPS", f"must be non-negative integers, got {steps}")
    elif any(b <= a for a, b in zip(steps, steps[1:])):
        c.add("SOLVER.STEPS", f"must be increasing, got {steps}")
    elif isinstance(s.MAX_ITER, int) and steps and steps[-1] > s.MAX_ITER \
            and s.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        logger.warning("SOLVER.STEPS %s: step(s) after SOLVER.MAX_ITER=%d never happen", steps, s.MAX_ITER)


def _check_precision(c: _Checker) -> None:
    """SOLVER.AMP against what MODEL.DEVICE runs natively. A bad DTYPE or an unavailable device is reported by
    its own check, once."""
    import torch

    from ..utils.precision import PrecisionError, resolve_amp

    amp, dev = c.cfg.SOLVER.AMP, str(c.cfg.MODEL.DEVICE or "cpu")
    try:
        if amp.DTYPE not in ("float16", "bfloat16") or (
                torch.device(dev).type == "cuda" and not torch.cuda.is_available()):
            return
        resolve_amp(amp.ENABLED, amp.DTYPE, dev)
    except PrecisionError as e:
        c.problems.append(str(e))  # the message starts with the key it is about
    except RuntimeError:  # not a device: MODEL.DEVICE's own check says so
        pass


def _check_data(c: _Checker) -> None:
    cfg = c.cfg
    i = cfg.INPUT
    c.choice("INPUT.FORMAT", ("BGR", "RGB", "L"))
    c.choice("INPUT.RESIZE_METHOD", ("pil", "bilinear", "torchvision"))
    c.choice("INPUT.MASK_FORMAT", ("polygon", "bitmask"))  # data/dataset_mapper.py MASK_FORMATS
    sizes = list(i.MIN_SIZE_TRAIN) if isinstance(i.MIN_SIZE_TRAIN, (list, tuple)) else [i.MIN_SIZE_TRAIN]
    if not sizes or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in sizes):
        c.add("INPUT.MIN_SIZE_TRAIN", f"must be positive integers, got {i.MIN_SIZE_TRAIN}")
    c.choice("INPUT.MIN_SIZE_TRAIN_SAMPLING", ("choice", "range"))
    if i.MIN_SIZE_TRAIN_SAMPLING == "range" and len(sizes) != 2:
        c.add("INPUT.MIN_SIZE_TRAIN / INPUT.MIN_SIZE_TRAIN_SAMPLING", f"'range' needs (min, max), got {sizes}")
    c.number("INPUT.MAX_SIZE_TRAIN", 1, integer=True)
    c.number("INPUT.MIN_SIZE_TEST", 0, integer=True)
    c.number("INPUT.MAX_SIZE_TEST", 1, integer=True)
    c.number("INPUT.MAX_IMAGE_PIXELS", 0, integer=True)
    c.choice("INPUT.RANDOM_FLIP", ("none", "horizontal", "vertical"))
    if i.CROP.ENABLED:
        c.choice("INPUT.CROP.TYPE", ("relative", "relative_range", "absolute", "absolute_range"))
        relative = str(i.CROP.TYPE).startswith("relative")
        c.numbers("INPUT.CROP.SIZE", 0, 1 if relative else None, lo_open=True, length=2)
        size = list(i.CROP.SIZE)
        if i.CROP.TYPE == "absolute_range" and len(size) == 2 and all(_is_num(x) for x in size) and size[0] > size[1]:
            c.add("INPUT.CROP.SIZE", f"'absolute_range' needs (min, max), got {size}")
    c.number("INPUT.ROTATION_ANGLE")
    # transforms.v2 augmentations: large-scale jitter and photometric distortion
    if i.LSJ.ENABLED:
        c.numbers("INPUT.LSJ.SCALE_RANGE", 0, None, lo_open=True, length=2)
        rng = list(i.LSJ.SCALE_RANGE)
        if len(rng) == 2 and all(_is_num(x) for x in rng) and rng[0] > rng[1]:
            c.add("INPUT.LSJ.SCALE_RANGE", f"needs (min, max) with min <= max, got {rng}")
        size = list(i.LSJ.SIZE)
        if len(size) != 2 or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in size):
            c.add("INPUT.LSJ.SIZE", f"must be two positive integers (H, W), got {i.LSJ.SIZE}")
        c.number("INPUT.LSJ.PAD_VALUE", 0, 255)
        if i.CROP.ENABLED:
            c.add("INPUT.LSJ.ENABLED / INPUT.CROP.ENABLED", "large-scale jitter does its own fixed-size crop; "
                  "turn one of them off")
        if _is_num(i.ROTATION_ANGLE) and i.ROTATION_ANGLE:
            c.add("INPUT.LSJ.ENABLED / INPUT.ROTATION_ANGLE", "rotation would change the fixed LSJ size; set "
                  "INPUT.ROTATION_ANGLE to 0 or turn LSJ off")
    if i.PHOTOMETRIC.ENABLED:
        for k in ("BRIGHTNESS", "CONTRAST", "SATURATION"):
            c.number(f"INPUT.PHOTOMETRIC.{k}", 0, 1)
        c.number("INPUT.PHOTOMETRIC.HUE", 0, 0.5)
    c.number("DATALOADER.NUM_WORKERS", 0, integer=True)
    c.number("DATALOADER.REPEAT_THRESHOLD", 0)
    c.choice("DATALOADER.ON_BAD_SAMPLE", ("error", "skip"))
    c.choice("DATALOADER.SAMPLER_TRAIN", ("TrainingSampler", "RepeatFactorTrainingSampler"))
    c.number("TEST.EVAL_PERIOD", 0, integer=True)
    c.number("TEST.PRECISE_BN.NUM_ITER", 1, integer=True)
    for i, entry in enumerate(list(cfg.TEST.EXPECTED_RESULTS)):  # detectron2's verify_results rows
        ok = isinstance(entry, (list, tuple)) and len(entry) == 4 and all(isinstance(x, str) for x in entry[:2]) \
            and all(_is_num(x) and math.isfinite(x) for x in entry[2:]) and entry[3] >= 0
        if not ok:
            c.add("TEST.EXPECTED_RESULTS", f"entry {i} must be [task, metric, expected, tolerance >= 0] (e.g. "
                  f"['bbox', 'AP', 38.5, 0.2]), got {entry!r}")
    c.number("TEST.DETECTIONS_PER_IMAGE", 1, integer=True)
    c.choice("TEST.EVALUATOR_BACKEND", ("pycocotools", "faster_coco_eval"))
    # test-time augmentation (modeling/meta_arch/tta.py): Faster R-CNN only
    aug = cfg.TEST.AUG
    if not aug.MIN_SIZES or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in aug.MIN_SIZES):
        c.add("TEST.AUG.MIN_SIZES", f"must be one or more positive integers, got {aug.MIN_SIZES}")
    c.number("TEST.AUG.MAX_SIZE", 1, integer=True)
    if aug.ENABLED:
        from ..modeling.meta_arch import META_ARCH_REGISTRY, FasterRCNN

        arch = cfg.MODEL.META_ARCHITECTURE  # an unknown name is _check_model's problem
        if arch in META_ARCH_REGISTRY and not issubclass(META_ARCH_REGISTRY.get(arch), FasterRCNN):
            c.add("TEST.AUG.ENABLED", f"test-time augmentation is implemented for FasterRCNN only, not "
                  f"MODEL.META_ARCHITECTURE={arch!r}; set TEST.AUG.ENABLED False")
    c.number("LOG_PERIOD", 0, integer=True)
    c.number("SEED", integer=True)


def _check_datasets(c: _Checker) -> None:
    """DATASETS.TRAIN / TEST entries given by path ("instances.json:images", "gts_dir:images"): files exist."""
    try:
        from ..data.builtin import path_dataset_problems
        from ..data.catalog import DatasetCatalog
    except Exception:  # pragma: no cover - data package unavailable: nothing to check against
        return
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in c.get(key):
            if isinstance(name, str) and name not in DatasetCatalog:
                for err in path_dataset_problems(name):
                    c.add(key, f"{err.reason}: {err.file!r}")


def find_cfg_problems(cfg, world_size: int | None = None, *, model: bool = True) -> list[str]:
    """Every problem of `cfg` as "KEY: what is wrong" lines (empty when the config is fine).

    `model=False` leaves out the meta architecture's builder checks (`_model_builder_checks`), for a config whose
    model is not built from it: a data-only tool, or a Trainer subclass with its own `build_model`.
    """
    from .config import get_cfg
    from .refused import refused_key_problems

    if world_size is None:
        from ..utils import comm

        world_size = comm.get_world_size()
    c = _Checker(cfg)
    defaults = get_cfg()
    _type_problems(cfg, defaults, "", c.problems)
    if c.problems:  # range checks on values of the wrong type would only repeat the same problem
        return c.problems
    c.problems += refused_key_problems(cfg, defaults)
    _check_solver(c, world_size)
    _check_data(c)
    _check_datasets(c)
    _check_model(c, world_size)
    from ..modeling.fast_paths import fast_path_problems  # the fast-path keys' own check (MKLDNN_PREPACK)

    c.problems += fast_path_problems(cfg)
    if model:
        _model_builder_checks(c)
    return c.problems


def validate_cfg(cfg, world_size: int | None = None, *, model: bool = True) -> None:
    """Raise ConfigError listing every problem (each naming its key), before anything is built or trained.

    Validation happens once per config: calling it again on the same config object with the same contents (the
    Trainer after default_setup) returns at once. `model`: see find_cfg_problems.
    """
    if world_size is None:
        from ..utils import comm

        world_size = comm.get_world_size()
    done = cfg.__dict__.get(_VALIDATED)
    text = cfg.dump()
    if done is not None and done[0] == text and done[1] == world_size and done[2] >= model:
        logger.debug("config already validated (world size %d)", world_size)
        return
    problems = find_cfg_problems(cfg, world_size, model=model)
    if problems:
        raise ConfigError(f"invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n  "
                          + "\n  ".join(problems))
    # DATASETS entries given by path are registered now (as text datasets for a text model), so the loaders,
    # the evaluator and the metadata all see them
    from ..data.builtin import register_cfg_datasets
    from ..data.errors import DatasetError

    try:
        register_cfg_datasets(cfg)
    except DatasetError as e:  # a file removed since the check above
        raise ConfigError(f"invalid config (1 problem):\n  DATASETS: {e}") from e
    cfg.__dict__[_VALIDATED] = (text, world_size, model)  # not a config key: dump() and merges do not see it
