"""validate_cfg runs each meta architecture's own builder checks, once, before anything is built: FasterRCNN's
(modeling/rcnn/build.py check_config) and a registered detector's `check_config` classmethod; a key a range check
already reported is not repeated."""
import os

import pytest
from torch import nn

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import find_cfg_problems, validate_cfg
from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fpn():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    return cfg


def test_bare_get_cfg_is_refused_by_the_faster_rcnn_builder_checks():
    problems = find_cfg_problems(get_cfg(), world_size=1)
    assert [p.split(" = ")[0] for p in problems] == ["MODEL.ROI_HEADS.NAME", "MODEL.ROI_BOX_HEAD.NAME",
                                                     "MODEL.ROI_BOX_HEAD.NUM_CONV/NUM_FC"]
    assert find_cfg_problems(get_cfg(), world_size=1, model=False) == []  # the data / solver / backbone keys pass


def test_a_key_is_reported_once():
    cfg = _fpn()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 0  # both a range check and the builder refuse it
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 0
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True  # only the builder refuses this one
    problems = find_cfg_problems(cfg, world_size=1)
    for key in ("MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"):
        assert sum(p.startswith((f"{key}:", f"{key} ")) for p in problems) == 1, (key, problems)
    assert len(problems) == 3


def test_a_registered_detector_brings_its_own_checks():
    class _Audited(nn.Module):
        @classmethod
        def check_config(cls, cfg):
            return [] if cfg.MODEL.RESNETS.DEPTH == 101 else [f"MODEL.RESNETS.DEPTH = {cfg.MODEL.RESNETS.DEPTH} is "
                                                             "not supported by _Audited: only 101"]

    META_ARCH_REGISTRY.register(_Audited)
    try:
        cfg = get_cfg()
        cfg.MODEL.META_ARCHITECTURE = "_Audited"
        with pytest.raises(ConfigError, match=r"MODEL.RESNETS.DEPTH = 50 is not supported by _Audited"):
            validate_cfg(cfg, world_size=1)
        cfg.MODEL.RESNETS.DEPTH = 101
        validate_cfg(cfg, world_size=1)
    finally:
        META_ARCH_REGISTRY._obj_map.pop("_Audited")  # fvcore has no unregister
