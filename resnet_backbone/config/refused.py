"""Keys of get_cfg() that nothing implements: refused when changed from their default, each with why and what to do.

detectron2's configs set these keys (mostly to their defaults, which stay accepted); a value we would silently
ignore is an error instead. validate_cfg reports every changed one, naming the key. Keys refused only for some
values live with the code that reads them (the Faster R-CNN family: modeling/rcnn/build.py `check_config`,
listed in docs/FASTER_RCNN.md); a key here is read by nothing at all (tests/config/test_key_audit.py proves
every other key of get_cfg() is read).
"""
from __future__ import annotations

__all__ = ["REFUSED_KEYS", "refused_key_problems"]

_PROPOSALS = ("precomputed proposals are not supported (the RPN makes them; MODEL.LOAD_PROPOSALS is refused too); "
              "remove the key")
_SCHEDULER = ("belongs to detectron2's WarmupStepWithFixedGammaLR, which is not implemented "
              "(SOLVER.LR_SCHEDULER_NAME: WarmupMultiStepLR or WarmupCosineLR); remove the key")

#: key -> (why it is refused, what to do instead)
REFUSED_KEYS: dict[str, str] = {
    "DATASETS.PROPOSAL_FILES_TRAIN": _PROPOSALS,
    "DATASETS.PROPOSAL_FILES_TEST": _PROPOSALS,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": _PROPOSALS,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": _PROPOSALS,
    "TEST.KEYPOINT_OKS_SIGMAS": "there is no keypoint head or keypoint evaluation; remove the key",
    "MODEL.DETR.MASK_ON": "DETR's segmentation head is not implemented; remove the key",
    "MODEL.DETR.FROZEN_WEIGHTS": ("DETR's frozen-weights segmentation training is not implemented; load weights "
                                  "with MODEL.WEIGHTS"),
    "SOLVER.NUM_DECAYS": _SCHEDULER,
    "SOLVER.RESCALE_INTERVAL": _SCHEDULER,
    "VIS_PERIOD": ("training-time visualization is not implemented; look at the training inputs with "
                   "tools/visualize_data.py and at predictions with tools/demo.py, and set VIS_PERIOD 0"),
    "GLOBAL.HACK": "detectron2's placeholder key, read by nothing; remove the key",
    "VERSION": ("only version 2 configs (detectron2's current format) are read; upgrading older config versions is "
                "not implemented"),
}


def _leaf(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b  # 2 and 2.0 are the same number; a list and a tuple of the same items the same value


def refused_key_problems(cfg, defaults) -> list[str]:
    """One "KEY = value: why" line for every key of REFUSED_KEYS whose value differs from `defaults`."""
    out = []
    for key, why in REFUSED_KEYS.items():
        value, default = _leaf(cfg, key), _leaf(defaults, key)
        if not _same(value, default):
            out.append(f"{key} = {value!r} is not implemented (default {default!r}): {why}")
    return out
