"""Whole Faster R-CNN files from torchvision and detectron2 -> our FasterRCNN (detector_converters.py), the
MODEL.WEIGHTS load path (Checkpointer.load_weights), ours -> detectron2 (detectron2_names.py) and the tool.

The references are the libraries themselves: torchvision's fasterrcnn_resnet50_fpn / _v2 and detectron2's
GeneralizedRCNN (built from its own configs; skipped with the reason when detectron2 is not importable) are
randomised, saved, converted and loaded into our model built from our configs; then each part of our model (backbone
+ FPN, RPN head, box head, box predictor) is run beside the reference's same part on the same random input. Image
free: detection parity is tests/modeling's business.
"""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from _random_weights import randomize
from _tools import ROOT, load_tool
from torchvision.models import detection as tvdet

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.detector_converters import convert_detector, identify_detector
from resnet_backbone.checkpoint.detectron2_names import convert_to_detectron2, ours_detector_to_detectron2
from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling import build_model

try:
    import detectron2  # noqa: F401  (beside the project: PYTHONPATH=/tmp/d2/src:/tmp/d2/site)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model

    D2_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "configs")
    D2_MISSING = None if os.path.isdir(D2_CONFIGS) else f"detectron2's configs/ not found beside it ({D2_CONFIGS})"
except ImportError as e:
    D2_MISSING = f"detectron2 is not importable ({e}); put it on PYTHONPATH to run the detectron2 comparisons"
requires_d2 = pytest.mark.skipif(D2_MISSING is not None, reason=str(D2_MISSING))

CONFIGS = os.path.join(ROOT, "configs", "COCO-Detection")
OURS_D2 = os.path.join(CONFIGS, "faster_rcnn_R_50_FPN_1x.yaml")
OURS_TV = os.path.join(CONFIGS, "faster_rcnn_R_50_FPN_torchvision.yaml")
OURS_TV2 = os.path.join(CONFIGS, "faster_rcnn_R_50_FPN_torchvision_v2.yaml")
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
CONVERT = load_tool("convert_weights")


# ------------------------------------------------------------------------------------------------ helpers
_randomize = randomize


def _ours(cfg_file: str, *opts) -> torch.nn.Module:
    """A new model of ours (random values, none of the reference's: loading must replace every tensor)."""
    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", *[str(o) for o in opts]])
    torch.manual_seed(123)
    return build_model(cfg).eval()


_SHARED: dict = {}


def _shared(cfg_file: str, *opts) -> torch.nn.Module:
    """One model per config for the tests that only need a target to refuse a file (building R50s is slow)."""
    key = (cfg_file, *map(str, opts))
    if key not in _SHARED:
        _SHARED[key] = _ours(cfg_file, *opts)
    return _SHARED[key]


def _close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    tol = 1e-4 * float(ref.abs().max()) + 1e-6
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=tol, msg=what)


def _compare_parts(ours, ref_backbone, ref_rpn_head, ref_box_head, ref_predictor, ref_levels, predictor_map):
    """Run each of our parts beside the reference's on one random input. predictor_map(ref_scores, ref_deltas)
    gives the reference's outputs in our row order (background first)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        feats = ours.backbone(x)
        ref_feats = ref_backbone(x)
        for ours_name, ref_name in ref_levels.items():
            _close(feats[ours_name], ref_feats[ref_name], f"backbone {ours_name}")
        level = [torch.randn(2, feats["p2"].shape[1], 8, 12, generator=g)]
        (logits,), (deltas,) = ours.rpn.head(level)
        (ref_logits,), (ref_deltas,) = ref_rpn_head(level)
        _close(logits, ref_logits, "rpn objectness")
        _close(deltas, ref_deltas, "rpn deltas")
        rois = torch.randn(5, feats["p2"].shape[1], 7, 7, generator=g)
        h = ours.roi_heads.box_head(rois)
        _close(h, ref_box_head(rois), "box head")
        scores, box = ours.roi_heads.box_predictor(h)
        ref_scores, ref_box = predictor_map(*ref_predictor(h))
        _close(scores, ref_scores, "class scores")
        _close(box, ref_box, "box deltas")


def _covers_model(converted: dict, model: torch.nn.Module) -> None:
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    got = {k for k in converted["model"] if not k.endswith("num_batches_tracked")}
    assert got == own, f"missing {sorted(own - got)[:5]}, extra {sorted(got - own)[:5]}"


# ------------------------------------------------------------------------------------------- torchvision
TV_LEVELS = {"p2": "0", "p3": "1", "p4": "2", "p5": "3", "p6": "pool"}


def _tv_coco_rows(scores, deltas):
    """torchvision's 91-way COCO outputs (row = COCO category id) in our 80-class order, background first."""
    keep = [0] + COCO_CATEGORY_IDS
    return scores[:, keep], deltas.view(deltas.shape[0], 91, 4)[:, keep].flatten(1)


def _torchvision_file(tmp_path_factory, builder, seed: int):
    """torchvision's own model (random values), saved as its state dict: (model, path)."""
    tv = _randomize(builder(weights=None, weights_backbone=None), seed)
    path = str(tmp_path_factory.mktemp(builder.__name__) / f"{builder.__name__}.pth")
    torch.save(tv.state_dict(), path)
    return tv, path


@pytest.fixture(scope="module")
def tv_v1(tmp_path_factory):
    return _torchvision_file(tmp_path_factory, tvdet.fasterrcnn_resnet50_fpn, 1)


@pytest.fixture(scope="module")
def tv_v2(tmp_path_factory):
    return _torchvision_file(tmp_path_factory, tvdet.fasterrcnn_resnet50_fpn_v2, 2)


def test_torchvision_v1_file_loads_whole_and_matches_torchvision(tv_v1):
    tv, path = tv_v1
    converted = convert_detector(path)
    assert converted["source"] == "torchvision" and converted["architecture"] == "FasterRCNN"
    assert converted["num_classes"] == 80 and converted["dropped"] == []
    assert set(converted["source_keys"].values()) == set(tv.state_dict())  # every key of the file used
    assert converted["format"] == "RGB" and converted["pixel_std"] == [58.395, 57.12, 57.375]
    ours = _ours(OURS_TV)
    _covers_model(converted, ours)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)  # MODEL.WEIGHTS
    _compare_parts(ours, tv.backbone, tv.rpn.head, tv.roi_heads.box_head, tv.roi_heads.box_predictor, TV_LEVELS,
                   _tv_coco_rows)
    state = ours.state_dict()
    assert torch.equal(state["backbone.bottom_up.res3.1.conv2.norm.running_var"],
                       tv.state_dict()["backbone.body.layer2.1.bn2.running_var"])
    # our class c is COCO category COCO_CATEGORY_IDS[c]: "person" (id 1) is row 1, "toothbrush" (id 90) row 80
    assert torch.equal(state["roi_heads.box_predictor.cls_score.weight"][80], tv.roi_heads.box_predictor.cls_score
                       .weight[90])


def test_torchvision_v2_file_loads_whole_and_matches_torchvision(tv_v2):
    tv, path = tv_v2
    converted = convert_detector(path)
    assert set(converted["source_keys"].values()) == set(tv.state_dict())
    assert "backbone.fpn_lateral2.norm.running_mean" in converted["model"]
    assert "rpn.head.conv.1.0.weight" in converted["model"] and "roi_heads.box_head.5.weight" in converted["model"]
    ours = _ours(OURS_TV2)
    _covers_model(converted, ours)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    _compare_parts(ours, tv.backbone, tv.rpn.head, tv.roi_heads.box_head, tv.roi_heads.box_predictor, TV_LEVELS,
                   _tv_coco_rows)


def test_torchvision_old_layout_converts_like_the_new(tv_v1, tmp_path):
    """Files saved before torchvision's FPN / RPNHead version 2 (the released fasterrcnn_resnet50_fpn_coco weights):
    inner_blocks.{i}.weight, rpn.head.conv.weight. torchvision itself still loads them (checked)."""
    tv, _ = tv_v1
    old = {}
    for k, v in tv.state_dict().items():
        if k.startswith("rpn.head.conv.0.0."):
            k = "rpn.head.conv." + k[len("rpn.head.conv.0.0."):]
        if k.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")):
            k = k.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
        old[k] = v
    assert "rpn.head.conv.weight" in old and "backbone.fpn.inner_blocks.3.bias" in old
    check = tvdet.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    check.load_state_dict(dict(old), strict=True)  # a plain dict: no version metadata, torchvision's old layout
    assert torch.equal(check.rpn.head.conv[0][0].weight, tv.rpn.head.conv[0][0].weight)
    path = str(tmp_path / "old.pth")
    torch.save(old, path)
    new = convert_detector(tv.state_dict())["model"]
    got = convert_detector(path)["model"]
    assert got.keys() == new.keys() and all(torch.equal(got[k], new[k]) for k in new)


def test_torchvision_class_counts(tmp_path):
    tv = _randomize(tvdet.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4), 3)
    path = str(tmp_path / "three_classes.pth")
    torch.save(tv.state_dict(), path)
    converted = convert_detector(path)
    assert converted["num_classes"] == 3  # not the COCO head: kept as is (background 0, contiguous)
    ours = _ours(OURS_TV, "MODEL.ROI_HEADS.NUM_CLASSES", 3)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    _compare_parts(ours, tv.backbone, tv.rpn.head, tv.roi_heads.box_head, tv.roi_heads.box_predictor, TV_LEVELS,
                   lambda s, d: (s, d))
    with pytest.raises(CheckpointError) as e:
        Checkpointer(_shared(OURS_TV), save_to_disk=False).load_weights(path)
    msg = str(e.value)
    for part in (path, "roi_heads.box_predictor.cls_score.weight", "(4, 1024)", "(81, 1024)",
                 "MODEL.ROI_HEADS.NUM_CLASSES = 80", "set MODEL.ROI_HEADS.NUM_CLASSES to 3"):
        assert part in msg, (part, msg)


def test_torchvision_coco_head_kept_for_a_91_row_model(tv_v1):
    """A model configured for torchvision's 90 category ids (NUM_CLASSES 90) takes the 91-row head unreduced."""
    tv, path = tv_v1
    ours = _ours(OURS_TV, "MODEL.ROI_HEADS.NUM_CLASSES", 90)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    assert torch.equal(ours.roi_heads.box_predictor.bbox_pred.weight, tv.roi_heads.box_predictor.bbox_pred.weight)
    # any other class count: refused, saying which two fit
    with pytest.raises(CheckpointError, match=r"\(91, 1024\).*\(6, 1024\).*set MODEL\.ROI_HEADS\.NUM_CLASSES to 90 "
                                              r"\(or 80: torchvision's 91-row COCO head"):
        Checkpointer(_shared(OURS_TV, "MODEL.ROI_HEADS.NUM_CLASSES", 5), save_to_disk=False).load_weights(path)


def test_pixel_convention_warning_names_both(tv_v1, caplog):
    _, path = tv_v1
    ours = _ours(OURS_TV, "INPUT.FORMAT", "BGR", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]")
    log = logging.getLogger("resnet_backbone.checkpoint.checkpointer")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            Checkpointer(ours, save_to_disk=False).load_weights(path)
    finally:
        log.removeHandler(caplog.handler)
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "INPUT.FORMAT RGB (config: BGR)" in text and "MODEL.PIXEL_STD [58.395, 57.12, 57.375] (config: [1.0" in text


def test_missing_head_key_and_unknown_key(tv_v1, tmp_path):
    tv, _ = tv_v1
    state = dict(tv.state_dict())
    del state["roi_heads.box_predictor.bbox_pred.bias"]
    path = str(tmp_path / "no_bias.pth")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"no_bias\.pth.*lacks head key.*'roi_heads\.box_predictor\.bbox_pred"
                                              r"\.bias'"):
        Checkpointer(_shared(OURS_TV), save_to_disk=False).load_weights(path)
    state = dict(tv.state_dict())
    state["backbone.fpn.extra_blocks.p6.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unknown keys \['backbone\.fpn\.extra_blocks\.p6\.weight'\]"):
        convert_detector(state)


def _torchvision_others() -> dict:
    """torchvision's other detectors, built from their classes on an R18 FPN (their head names are the builders'
    maskrcnn_resnet50_fpn, keypointrcnn_resnet50_fpn, retinanet_resnet50_fpn, fcos_resnet50_fpn; R18: faster)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    def fpn(**kw):
        return resnet_fpn_backbone(backbone_name="resnet18", weights=None, **kw)

    def p6p7():
        return fpn(returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))

    return {"torchvision Keypoint R-CNN": tvdet.KeypointRCNN(fpn(), num_classes=2),
            "torchvision RetinaNet": tvdet.RetinaNet(p6p7(), num_classes=2),
            "torchvision FCOS": tvdet.FCOS(p6p7(), num_classes=2)}


def test_other_torchvision_detectors_refused(tmp_path):
    for what, model in _torchvision_others().items():
        state = model.state_dict()
        assert identify_detector(state)[1].startswith(what)
        with pytest.raises(CheckpointError, match=f"is a {what}.*not a Faster R-CNN"):
            convert_detector(state)
        if what.endswith("Keypoint R-CNN"):  # the file paths, once
            path = str(tmp_path / "keypointrcnn.pth")
            torch.save(state, path)
            with pytest.raises(CheckpointError, match=f"keypointrcnn.pth' is a {what}"):
                Checkpointer(_shared(OURS_TV), save_to_disk=False).load_weights(path)
            assert CONVERT.main([path, str(tmp_path / "out.pth")]) == 2


# -------------------------------------------------------------------------------------------- detectron2
D2_LEVELS = {f"p{i}": f"p{i}" for i in range(2, 7)}


def _d2_rows(scores, deltas):
    """detectron2's outputs (background last, 4K deltas) in our order: background first, 4 background deltas."""
    return torch.cat([scores[:, -1:], scores[:, :-1]], 1), torch.cat([torch.zeros_like(deltas[:, :4]), deltas], 1)


def _d2_model(config: str, *opts, seed: int = 4):
    cfg = d2_get_cfg()
    cfg.merge_from_file(os.path.join(D2_CONFIGS, config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return _randomize(d2_build_model(cfg), seed)


def _d2_parts(m):
    return (m.backbone, m.proposal_generator.rpn_head, m.roi_heads.box_head, m.roi_heads.box_predictor)


def _write_model_zoo_pkl(state: dict, path: str, **extra) -> None:
    model = {k: v.detach().numpy().copy() for k, v in state.items()}
    model.update(extra)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f)


@pytest.fixture(scope="module")
def d2_r50(tmp_path_factory):
    m = _d2_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    d = tmp_path_factory.mktemp("d2")
    DetectionCheckpointer(m, save_dir=str(d), optimizer=torch.optim.SGD(m.parameters(), lr=0.1)).save(
        "model_final", iteration=90000)
    pkl = str(d / "model_final_b275ba.pkl")
    _write_model_zoo_pkl(m.state_dict(), pkl)
    return m, str(d / "model_final.pth"), pkl


@requires_d2
@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_detectron2_file_loads_whole_and_matches_detectron2(d2_r50, kind):
    m, pth, pkl = d2_r50
    path = pth if kind == "pth" else pkl
    converted = convert_detector(path)
    assert converted["source"] == "detectron2" and converted["num_classes"] == 80 and converted["dropped"] == []
    assert set(converted["source_keys"].values()) == set(m.state_dict())  # every key of the file used
    assert converted["format"] == "BGR" and converted["pixel_mean"] == [103.53, 116.28, 123.675]
    ours = _ours(OURS_D2)
    _covers_model(converted, ours)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)  # MODEL.WEIGHTS
    _compare_parts(ours, *_d2_parts(m), D2_LEVELS, _d2_rows)
    d2 = m.state_dict()
    ours_state = ours.state_dict()
    for k in ("backbone.bottom_up.res4.5.conv3.norm.running_mean", "backbone.fpn_output4.bias"):
        assert torch.equal(ours_state[k], d2[k])
    assert torch.equal(ours_state["rpn.head.cls_logits.weight"], d2["proposal_generator.rpn_head.objectness_logits"
                                                                      ".weight"])
    assert torch.equal(ours_state["roi_heads.box_head.fc7.weight"], d2["roi_heads.box_head.fc2.weight"])


@requires_d2
def test_detectron2_conv_head_gn_variant(tmp_path):
    """Several RPN convs (conv.conv{k}), a conv + GN box head (conv{i+1}.norm) with one fc, GN in the FPN."""
    opts = [*R18, "MODEL.RPN.CONV_DIMS", [-1, -1], "MODEL.ROI_BOX_HEAD.NUM_CONV", 2, "MODEL.ROI_BOX_HEAD.NUM_FC", 1,
            "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.FPN.NORM", "GN", "MODEL.ROI_HEADS.NUM_CLASSES", 5]
    m = _d2_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", *opts, seed=5)
    assert "proposal_generator.rpn_head.conv.conv1.weight" in m.state_dict()
    path = str(tmp_path / "gn.pkl")
    _write_model_zoo_pkl(m.state_dict(), path)
    ours = _ours(OURS_D2, *opts)
    converted = convert_detector(path)
    _covers_model(converted, ours)
    assert converted["source_keys"]["roi_heads.box_head.1.1.weight"] == "roi_heads.box_head.conv2.norm.weight"
    assert converted["source_keys"]["roi_heads.box_head.3.weight"] == "roi_heads.box_head.fc1.weight"
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    _compare_parts(ours, *_d2_parts(m), D2_LEVELS, _d2_rows)


@requires_d2
def test_detectron2_class_agnostic_regression_repeated(tmp_path):
    """CLS_AGNOSTIC_BBOX_REG (4 deltas for all classes): repeated per class, so every class gets detectron2's box."""
    opts = [*R18, "MODEL.ROI_HEADS.NUM_CLASSES", 3]
    m = _d2_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", *opts, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
                  True, seed=8)
    ours = _ours(OURS_D2, *opts)
    path = str(tmp_path / "agnostic.pkl")
    _write_model_zoo_pkl(m.state_dict(), path)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    _compare_parts(ours, *_d2_parts(m), D2_LEVELS, lambda s, d: _d2_rows(s, d.repeat(1, 3)))


@requires_d2
def test_old_detectron2_keys_dropped_and_named(d2_r50, tmp_path, capsys):
    """Old detectron2 files also kept the anchor generator's cell anchors and pixel_mean / pixel_std as buffers
    (added here to a file of today's detectron2); their pixel statistics become the recorded convention."""
    m, _, _ = d2_r50
    path = str(tmp_path / "old.pkl")
    rgb = [[[123.675]], [[116.28]], [[103.53]]]
    _write_model_zoo_pkl(m.state_dict(), path, **{
        "pixel_mean": np.array(rgb, np.float32), "pixel_std": np.array([[[58.395]], [[57.12]], [[57.375]]], np.float32),
        **{f"proposal_generator.anchor_generator.cell_anchors.{i}": np.zeros((3, 4), np.float32) for i in range(5)}})
    converted = convert_detector(path)
    assert converted["dropped"] == ["pixel_mean", "pixel_std",
                                    *[f"proposal_generator.anchor_generator.cell_anchors.{i}" for i in range(5)]]
    assert converted["format"] == "RGB"
    np.testing.assert_allclose(converted["pixel_mean"], [123.675, 116.28, 103.53], rtol=1e-6)
    out = str(tmp_path / "converted.pth")
    assert CONVERT.main([path, out]) == 0
    printed = capsys.readouterr().out
    assert "whole detectron2 Faster R-CNN" in printed and "80 classes" in printed
    assert "dropped 7 source keys" in printed and "cell_anchors.4" in printed and "INPUT.FORMAT RGB" in printed
    saved = torch.load(out, weights_only=True)
    assert saved["architecture"] == "FasterRCNN" and saved["dropped"] == converted["dropped"]
    assert saved["model"].keys() == converted["model"].keys()
    assert all(torch.equal(v, converted["model"][k]) for k, v in saved["model"].items())
    # the converted file loads whole with MODEL.WEIGHTS (our names: the direct path)
    ours = _shared(OURS_D2)
    Checkpointer(ours, save_to_disk=False).load_weights(out, allow_partial=False)
    assert torch.equal(ours.state_dict()["roi_heads.box_predictor.cls_score.bias"],
                       converted["model"]["roi_heads.box_predictor.cls_score.bias"])


@requires_d2
def test_ours_to_detectron2_loads_into_detectron2(d2_r50, tmp_path, capsys):
    """Our trained checkpoint -> tools/convert_weights.py --to detectron2 -> detectron2's DetectionCheckpointer
    fills a fresh GeneralizedRCNN with exactly the original detectron2 values."""
    m, pth, _ = d2_r50
    ours = _ours(OURS_D2)
    Checkpointer(ours, save_to_disk=False).load_weights(pth, allow_partial=False)
    ckpt = Checkpointer(ours, str(tmp_path / "run"), save_to_disk=True).save("model_final", iteration=5)
    out = str(tmp_path / "for_d2.pkl")
    assert CONVERT.main([ckpt, out, "--to", "detectron2"]) == 0
    printed = capsys.readouterr().out
    assert "a whole Faster R-CNN, heads included" in printed and "INPUT.FORMAT BGR" in printed
    fresh = _d2_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", seed=99)
    DetectionCheckpointer(fresh).load(out)
    want, got = m.state_dict(), fresh.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


@requires_d2
def test_torchvision_file_to_detectron2(tv_v1, tmp_path):
    """torchvision -> (ours) -> detectron2 names: detectron2's own R50-FPN (STRIDE_IN_1X1 False, RGB) then predicts
    torchvision's class scores for the 80 COCO classes."""
    tv, path = tv_v1
    out = str(tmp_path / "tv_for_d2.pkl")
    assert CONVERT.main([path, out, "--to", "detectron2"]) == 0
    d2 = _d2_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", False, seed=98)
    DetectionCheckpointer(d2).load(out)
    h = torch.randn(3, 1024)
    with torch.no_grad():
        scores, deltas = d2.roi_heads.box_predictor(h)
        tv_scores, tv_deltas = _tv_coco_rows(*tv.roi_heads.box_predictor(h))
    _close(scores, torch.cat([tv_scores[:, 1:], tv_scores[:, :1]], 1), "scores")
    _close(deltas, tv_deltas[:, 4:], "deltas")
    # the written file records torchvision's input convention, which reading it back keeps
    back = convert_detector(out)
    assert back["source"] == "detectron2" and back["format"] == "RGB" and back["pixel_std"] == [58.395, 57.12, 57.375]


@requires_d2
def test_other_detectron2_architectures_refused(tmp_path):
    for config, opts, what in [
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", [], "detectron2 C4 Faster R-CNN"),  # C4 + masks
        ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", [], "detectron2 Cascade R-CNN"),  # cascade + masks
        ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", [], "detectron2 Keypoint R-CNN"),
        ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", [], "detectron2 RetinaNet"),
        ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", [], "detectron2 C4 Faster R-CNN"),
        ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", ["MODEL.MASK_ON", False], "detectron2 Cascade R-CNN"),
        ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", [], "detectron2 Panoptic FPN"),
    ]:
        cfg = d2_get_cfg()
        cfg.merge_from_file(os.path.join(D2_CONFIGS, config))
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", *R18, *opts])
        state = d2_build_model(cfg).state_dict()
        with pytest.raises(CheckpointError, match=f"is a {what}"):
            convert_detector(state)
        if what.endswith("Cascade R-CNN"):  # the file paths, once
            path = str(tmp_path / "other.pkl")
            _write_model_zoo_pkl(state, path)
            with pytest.raises(CheckpointError, match=f"other.pkl' is a {what}"):
                Checkpointer(_shared(OURS_D2), save_to_disk=False).load_weights(path)
            assert CONVERT.main([path, str(tmp_path / "out.pth")]) == 2


@requires_d2
def test_detectron2_missing_head_key(d2_r50, tmp_path):
    m, _, _ = d2_r50
    state = dict(m.state_dict())
    del state["proposal_generator.rpn_head.anchor_deltas.weight"]
    path = str(tmp_path / "cut.pkl")
    _write_model_zoo_pkl(state, path)
    with pytest.raises(CheckpointError, match=r"cut\.pkl.*lacks head key.*'proposal_generator\.rpn_head\."
                                              r"anchor_deltas\.weight'"):
        Checkpointer(_shared(OURS_D2), save_to_disk=False).load_weights(path)


def test_detectron2_layout_fixture_from_our_names(tmp_path):
    """Weaker than the tests above (those need detectron2 itself): a detectron2-layout file made here by renaming
    OUR model's state dict with detectron2's names as written in this test. It runs without detectron2 and checks
    the load path (MODEL.WEIGHTS .pkl, whole model, class rows, class-count error), not detectron2's real names."""
    src = _randomize(_ours(OURS_D2, *R18, "MODEL.ROI_HEADS.NUM_CLASSES", 3), 6)
    d2 = {}
    for k, v in src.state_dict().items():
        k = (k.replace("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv.")
             .replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
             .replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
             .replace("box_head.fc6.", "box_head.fc1.").replace("box_head.fc7.", "box_head.fc2."))
        if k.startswith("roi_heads.box_predictor.cls_score."):
            v = torch.cat([v[1:], v[:1]])  # detectron2: background last
        if k.startswith("roi_heads.box_predictor.bbox_pred."):
            v = v[4:]  # detectron2: no background deltas
        d2[k] = v
    assert d2.keys() == ours_detector_to_detectron2(src.state_dict()).keys()
    path = str(tmp_path / "fixture.pkl")
    _write_model_zoo_pkl(d2, path)
    dst = _ours(OURS_D2, *R18, "MODEL.ROI_HEADS.NUM_CLASSES", 3)
    Checkpointer(dst, save_to_disk=False).load_weights(path, allow_partial=False)
    want = src.state_dict()
    preds = ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias")
    assert all(torch.equal(v, want[k]) for k, v in dst.state_dict().items() if k not in preds)
    for k in preds:
        assert torch.equal(dst.state_dict()[k][4:], want[k][4:]) and not dst.state_dict()[k][:4].any()
    with pytest.raises(CheckpointError, match=r"fixture\.pkl.*'roi_heads\.box_predictor\.cls_score\.weight'.*"
                                              r"\(4, 1024\).*\(6, 1024\).*MODEL\.ROI_HEADS\.NUM_CLASSES = 5"):
        Checkpointer(_ours(OURS_D2, *R18, "MODEL.ROI_HEADS.NUM_CLASSES", 5), save_to_disk=False).load_weights(path)
    # ours -> detectron2 -> ours is the identity on every used tensor
    back = convert_detector(ours_detector_to_detectron2(src.state_dict()))["model"]
    assert all(torch.equal(back[k], want[k]) for k in want if k not in preds)


def test_tool_sources_and_backbone_files(tv_v1, tmp_path, capsys):
    tv, path = tv_v1
    out = str(tmp_path / "frcnn.pth")
    assert CONVERT.main([path, out, "--source", "torchvision_detector"]) == 0
    assert "whole torchvision Faster R-CNN" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["source"] == "torchvision" and saved["num_classes"] == 80 and saved["format"] == "RGB"
    ours = _shared(OURS_TV)
    Checkpointer(ours, save_to_disk=False).load_weights(out, allow_partial=False)
    assert torch.equal(ours.state_dict()["backbone.fpn_lateral3.weight"],
                       tv.state_dict()["backbone.fpn.inner_blocks.1.0.weight"])
    # --source torchvision: the ResNet names only, as for backbone files (the other keys unchanged)
    assert CONVERT.main([path, out, "--source", "torchvision"]) == 0
    names = torch.load(out, weights_only=True)["model"]
    assert "stem.conv1.weight" in names and "backbone.fpn.inner_blocks.0.0.weight" in names
    assert CONVERT.main([path, out, "--source", "detectron2_detector"]) == 2
    assert "not a whole detectron2 Faster R-CNN (a Faster R-CNN in torchvision names)" in capsys.readouterr().err
    # a backbone-only file is still converted as before
    resnet = str(tmp_path / "resnet18.pth")
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    assert CONVERT.main([resnet, out]) == 0
    assert "(torchvision names)" in capsys.readouterr().out
    assert CONVERT.main([resnet, out, "--source", "torchvision_detector"]) == 2
    assert "no detector heads found" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="only a Faster / Mask R-CNN converts whole"):
        convert_to_detectron2(_with_keypoint_head(tv.state_dict()), source="torchvision_detector")


def _with_keypoint_head(state: dict) -> dict:
    state = dict(state)
    state["roi_heads.keypoint_predictor.kps_score_lowres.weight"] = torch.zeros(512, 17, 4, 4)
    return state
