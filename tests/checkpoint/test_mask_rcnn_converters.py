"""Whole Mask R-CNN files -> our FasterRCNN with MODEL.MASK_ON (detector_converters.py), back to detectron2
(detectron2_names.py) and through tools/convert_weights.py.

References: torchvision's maskrcnn_resnet50_fpn state dict (its mask head / predictor run beside ours on the same
random RoI features, the 91 COCO channels picked by category id) and detectron2's own Mask R-CNN (skipped without
detectron2): its K-channel predictor gains our background channel and the file written back by --to detectron2
loads into detectron2's model with every key and shape its own. Whole-model output parity is
tests/modeling/meta_arch/test_mask_rcnn_*_parity.py's.
"""
import os

import pytest
import torch
from _random_weights import randomize
from _tools import ROOT, load_tool
from torchvision.models import detection as tvdet

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.converters import save_converted
from resnet_backbone.checkpoint.detector_converters import convert_detector, identify_detector
from resnet_backbone.checkpoint.detectron2_names import convert_to_detectron2, ours_detector_to_detectron2
from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling import build_model

CONVERT = load_tool("convert_weights")
TV_CONFIG = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_torchvision.yaml")
D2_CONFIG = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x.yaml")
LOGITS = "roi_heads.mask_predictor.mask_fcn_logits"


@pytest.fixture(scope="module")
def tv_mask(tmp_path_factory):
    tv = randomize(tvdet.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None), 3).eval()
    path = str(tmp_path_factory.mktemp("tvmask") / "maskrcnn_resnet50_fpn.pth")
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.fixture(scope="module")
def ours_tv():
    cfg = get_cfg()
    cfg.merge_from_file(TV_CONFIG)
    torch.manual_seed(123)
    return build_model(cfg).eval()


def test_torchvision_mask_rcnn_converts_whole_and_its_mask_branch_matches(tv_mask, ours_tv):
    tv, path = tv_mask
    assert identify_detector(tv.state_dict()) == ("torchvision", "Mask R-CNN")
    converted = convert_detector(path)
    assert converted["mask_on"] and converted["num_classes"] == 80
    assert converted["model"][f"{LOGITS}.weight"].shape == (81, 256, 1, 1)
    Checkpointer(ours_tv, save_to_disk=False).load_weights(path, allow_partial=False)
    x = torch.randn(3, 256, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = ours_tv.roi_heads.mask_predictor(ours_tv.roi_heads.mask_head(x))
        ref = tv.roi_heads.mask_predictor(tv.roi_heads.mask_head(x))[:, [0] + COCO_CATEGORY_IDS]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_torchvision_old_mask_head_names_convert_like_the_new(tv_mask):
    tv, _ = tv_mask
    state = dict(tv.state_dict())
    for i in range(4):  # MaskRCNNHeads before its version 2: mask_fcn{i+1}
        for f in ("weight", "bias"):
            state[f"roi_heads.mask_head.mask_fcn{i + 1}.{f}"] = state.pop(f"roi_heads.mask_head.{i}.0.{f}")
    old, new = convert_detector(state)["model"], convert_detector(tv.state_dict())["model"]
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in new)


def test_a_wrong_mask_predictor_shape_is_named(tv_mask, ours_tv, tmp_path):
    tv, _ = tv_mask
    state = dict(tv.state_dict())
    state[f"{LOGITS}.weight"], state[f"{LOGITS}.bias"] = torch.zeros(50, 256, 1, 1), torch.zeros(50)
    with pytest.raises(CheckpointError, match=rf"'{LOGITS}\.weight' \(50, 256, 1, 1\).*91 classes of "
                                              r"'roi_heads\.box_predictor\.cls_score\.weight' \(91, 1024\)"):
        convert_detector(state)
    # a converted file (our names) whose mask predictor is for another class count: named on load
    good = convert_detector(tv.state_dict())
    good["model"][f"{LOGITS}.weight"] = torch.zeros(5, 256, 1, 1)
    good["model"][f"{LOGITS}.bias"] = torch.zeros(5)
    path = str(tmp_path / "bad_mask.pth")
    save_converted(good, path)
    with pytest.raises(CheckpointError, match=rf"bad_mask\.pth.*'{LOGITS}\.weight' has 5 mask channels, shape "
                                              r"\(5, 256, 1, 1\).*81.*MODEL\.ROI_HEADS\.NUM_CLASSES = 80"):
        Checkpointer(ours_tv, save_to_disk=False).load_weights(path)


def test_a_mask_rcnn_file_loads_into_a_faster_rcnn_leaving_the_mask_keys(tv_mask, caplog):
    """MASK_ON False: the box detector loads, the mask keys are named as ignored (detectron2 warns the same)."""
    _, path = tv_mask
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "COCO-Detection", "faster_rcnn_R_50_FPN_torchvision.yaml"))
    model = build_model(cfg)
    with caplog.at_level("WARNING"):
        Checkpointer(model, save_to_disk=False).load_weights(path, allow_partial=False)
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in caplog.text


def test_tool_converts_a_torchvision_mask_rcnn(tv_mask, ours_tv, tmp_path, capsys):
    _, path = tv_mask
    out = str(tmp_path / "mask_tv.pth")
    assert CONVERT.main([path, out]) == 0
    assert "whole torchvision Mask R-CNN" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["mask_on"] and saved["model"][f"{LOGITS}.weight"].shape[0] == 81
    Checkpointer(ours_tv, save_to_disk=False).load_weights(out, allow_partial=False)


# -------------------------------------------------------------------------------------------- detectron2
def _d2_mask_model():
    d2_config = pytest.importorskip("detectron2.config", reason="detectron2 is not importable (PYTHONPATH)")
    import detectron2
    from detectron2.modeling import build_model as d2_build_model

    path = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "configs",
                        "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x.yaml")
    if not os.path.isfile(path):
        pytest.skip(f"detectron2's configs/ not found ({path})")
    cfg = d2_config.get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return randomize(d2_build_model(cfg), 5).eval()


def test_detectron2_mask_rcnn_to_ours_and_back_into_detectron2(tmp_path, capsys):
    d2 = _d2_mask_model()
    state = {k: v.clone() for k, v in d2.state_dict().items()}
    assert identify_detector(state) == ("detectron2", "Mask R-CNN")
    converted = convert_detector(state)
    logits = converted["model"][f"{LOGITS}.weight"]
    assert logits.shape == (81, 256, 1, 1) and not logits[0].any()  # our unused background channel 0
    assert torch.equal(logits[1:], state["roi_heads.mask_head.predictor.weight"])
    cfg = get_cfg()
    cfg.merge_from_file(D2_CONFIG)
    ours = build_model(cfg).eval()
    ours.load_state_dict(converted["model"], strict=False)
    x = torch.randn(2, 256, 14, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # detectron2's head, channel c = our channel c + 1
        torch.testing.assert_close(ours.roi_heads.mask_predictor(ours.roi_heads.mask_head(x))[:, 1:],
                                   d2.roi_heads.mask_head.layers(x), rtol=1e-5, atol=1e-5)
    # --to detectron2: detectron2's own model takes every key with its own shapes
    back = ours_detector_to_detectron2(converted["model"])
    result = d2.load_state_dict(back, strict=False)
    assert not result.unexpected_keys and all("anchor_generator" in k or k.startswith("pixel_")
                                              for k in result.missing_keys)
    assert all(torch.equal(back[k], state[k]) for k in back)
    written = convert_to_detectron2(converted["model"], source="ours")
    assert written["architecture"] == "FasterRCNN" and "roi_heads.mask_head.predictor.weight" in written["model"]
    # the tool: a converted file of ours -> --to detectron2 -> detectron2's DetectionCheckpointer, every value back
    from detectron2.checkpoint import DetectionCheckpointer

    ours_file, out = str(tmp_path / "ours.pth"), str(tmp_path / "for_d2.pkl")
    save_converted(converted, ours_file)
    assert CONVERT.main([ours_file, out, "--to", "detectron2"]) == 0
    assert "a whole Mask R-CNN, heads included" in capsys.readouterr().out
    fresh = randomize(d2, 6)
    DetectionCheckpointer(fresh).load(out)
    got = fresh.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in back)


def test_detectron2_mask_predictor_of_another_width_is_named():
    d2 = _d2_mask_model()
    state = dict(d2.state_dict())
    state["roi_heads.mask_head.predictor.weight"] = torch.zeros(7, 256, 1, 1)
    with pytest.raises(CheckpointError, match=r"'roi_heads\.mask_head\.predictor\.weight' has shape \(7, 256, 1, 1\)"
                                              r".*80 channels"):
        convert_detector(state)
