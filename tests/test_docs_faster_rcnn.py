"""docs/FASTER_RCNN.md's key table is the truth: every key of the Faster R-CNN family is in it, every key in it
exists, every "refused" key is refused (naming the key) when changed, and every "honoured" key is read by the code
that builds the model."""
import re
from pathlib import Path

import pytest

from resnet_backbone.config import get_cfg
from resnet_backbone.config.validate import find_cfg_problems
from resnet_backbone.modeling.rcnn.build import check_rcnn_config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "FASTER_RCNN.md"
FAMILY = ("MODEL.PROPOSAL_GENERATOR", "MODEL.ANCHOR_GENERATOR", "MODEL.RPN", "MODEL.ROI_HEADS", "MODEL.ROI_BOX_HEAD",
          "MODEL.ROI_MASK_HEAD")
# the code that reads them: the builders, the detector, the resize, test-time augmentation and its switch
READERS = [ROOT / "resnet_backbone" / "modeling" / "rcnn" / "build.py",
           ROOT / "resnet_backbone" / "modeling" / "meta_arch" / "faster_rcnn.py",
           ROOT / "resnet_backbone" / "modeling" / "meta_arch" / "build.py",
           ROOT / "resnet_backbone" / "modeling" / "meta_arch" / "tta.py",
           ROOT / "resnet_backbone" / "engine" / "trainer.py",
           ROOT / "resnet_backbone" / "data" / "transforms.py"]
# a changed value for each refused key (and for the honoured keys refused only in combination with another)
REFUSED = {
    "MODEL.KEYPOINT_ON": True, "MODEL.LOAD_PROPOSALS": True,
    "MODEL.PROPOSAL_GENERATOR.NAME": "PrecomputedProposals", "MODEL.ANCHOR_GENERATOR.NAME": "RotatedAnchorGenerator",
    "MODEL.ANCHOR_GENERATOR.ANGLES": [[0]], "MODEL.RPN.HEAD_NAME": "MyRPNHead", "MODEL.RPN.IOU_LABELS": [0, 1, 1],
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeads", "MODEL.ROI_HEADS.IOU_LABELS": [-1, 1],
    "MODEL.ROI_BOX_HEAD.NAME": "MyBoxHead", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True,
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": True,
}
REFUSED_WITH_NUM_CONV_0 = {"MODEL.ROI_BOX_HEAD.CONV_DIM": 128, "MODEL.ROI_BOX_HEAD.NORM": "BN"}


def _rows() -> dict[str, str]:
    text = DOC.read_text().split("## Every key of the Faster R-CNN family", 1)[1]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.match(r"^(MODEL|TEST|INPUT)\.", cells[0]):
            continue
        key = cells[0].replace("*ours*", "").strip()
        if " / _" in key:  # "MODEL.RPN.PRE_NMS_TOPK_TRAIN / _TEST"
            first, suffix = key.split(" / ")
            rows[first] = cells[3]
            rows[first.rsplit("_", 1)[0] + suffix] = cells[3]
        else:
            rows[key] = cells[3]
    return rows


def _leaf_keys(node, prefix):
    for k in node:
        v = node[k]
        if hasattr(v, "keys"):
            yield from _leaf_keys(v, f"{prefix}.{k}")
        else:
            yield f"{prefix}.{k}"


def _cfg(**changes):
    cfg = get_cfg()
    cfg.merge_from_file(str(ROOT / "configs" / "Base-RCNN-FPN.yaml"))
    for key, value in changes.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return cfg


def test_the_table_lists_exactly_the_family_keys():
    rows = _rows()
    cfg = get_cfg()
    family = set()
    for section in FAMILY:
        node = cfg
        for p in section.split("."):
            node = node[p]
        family |= set(_leaf_keys(node, section))
    assert family - set(rows) == set(), "keys of the family missing from docs/FASTER_RCNN.md"
    for key in rows:  # and every row is a real key
        node = cfg
        for p in key.split("."):
            assert p in node, f"docs/FASTER_RCNN.md lists {key}, which get_cfg() does not have"
            node = node[p]
    assert all(status.startswith(("honoured", "refused")) for status in rows.values())


def test_refused_rows_are_the_refused_keys():
    refused = {k for k, status in _rows().items() if status.startswith("refused")}
    assert refused == set(REFUSED)


@pytest.mark.parametrize("key", sorted({**REFUSED, **REFUSED_WITH_NUM_CONV_0}))
def test_a_refused_value_is_an_error_naming_the_key_before_anything_is_built(key):
    value = {**REFUSED, **REFUSED_WITH_NUM_CONV_0}[key]
    cfg = _cfg(**{key: value})
    with pytest.raises(ValueError, match=re.escape(key)):
        check_rcnn_config(cfg)
    assert any(key in p for p in find_cfg_problems(cfg, world_size=1))  # C4's Res5ROIHeads too, before any build


def test_the_base_config_and_both_torchvision_configs_pass():
    for name in ("Base-RCNN-FPN.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_torchvision.yaml",
                 "COCO-Detection/faster_rcnn_R_50_FPN_torchvision_v2.yaml"):
        cfg = get_cfg()
        cfg.merge_from_file(str(ROOT / "configs" / name))
        check_rcnn_config(cfg)


def test_every_honoured_key_is_read_by_the_code():
    source = "\n".join(p.read_text() for p in READERS)
    for key, status in _rows().items():
        if status.startswith("honoured") and key != "MODEL.META_ARCHITECTURE":
            leaf = key.rsplit(".", 1)[1]
            assert re.search(rf"\.{leaf}\b", source), f"{key} is marked honoured, but no builder reads .{leaf}"
