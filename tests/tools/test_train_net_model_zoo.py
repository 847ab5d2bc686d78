"""tools/train_net.py --eval-only --config-file configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml MODEL.WEIGHTS
<a detectron2 model-zoo .pkl>: the detectron2 file is evaluated directly, no conversion step.

The model-zoo file (model_final_b275ba.pkl) is not reachable here: the test writes one in the same layout
({"model": {detectron2 name: numpy array}, "__author__": ...}, detectron2 names, background class last) from a
tiny Faster R-CNN, and checks that evaluating it gives exactly what evaluating the same weights as our own
checkpoint gives. (tests/checkpoint/test_detector_converters.py checks the layout against detectron2 itself.)
"""
import json
import os
import pickle

import pytest
import torch
from _tools import load_tool
from test_train_net import ROOT, TINY

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.detectron2_names import ours_detector_to_detectron2
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.meta_arch import build_model

train_net = load_tool("train_net")
CONFIG = os.path.join(ROOT, "configs", "COCO-Detection", "faster_rcnn_R_50_FPN_1x.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny detector's weights twice: our checkpoint, and a detectron2 model-zoo .pkl; the datasets root."""
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    d = tmp_path_factory.mktemp("zoo")
    generate_shapes_dataset(str(d / "synthetic_shapes"), "val", 3, image_size=64, seed=1)
    cfg = get_cfg()
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*TINY, "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # a classifier that commits to classes, so the evaluation has detections to score
        model.roi_heads.box_predictor.cls_score.weight.mul_(300.0)
    ours = Checkpointer(model, str(d / "ours"), save_to_disk=True).save("model_final", iteration=1, seed=3)
    d2_state = ours_detector_to_detectron2(model.state_dict(), numpy=True)
    assert {"roi_heads.box_predictor.cls_score.weight", "proposal_generator.rpn_head.conv.weight"} <= set(d2_state)
    zoo = d / "model_final_b275ba.pkl"
    with open(zoo, "wb") as f:
        pickle.dump({"model": d2_state, "__author__": "Detectron2 Model Zoo"}, f)
    return d, ours, str(zoo), d2_state


def _eval(weights, out, *extra):
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out), *extra])
    return train_net.main(args)


def test_eval_only_on_a_model_zoo_pkl_equals_our_checkpoint(files, tmp_path, monkeypatch):
    root, ours, zoo, _ = files
    monkeypatch.setenv("RB_DATASETS", str(root))
    from_zoo = _eval(zoo, tmp_path / "zoo")
    from_ours = _eval(ours, tmp_path / "ours")
    assert "bbox" in from_zoo and from_zoo["bbox"].keys() == from_ours["bbox"].keys()
    # the detections themselves, as the evaluator wrote them: the same boxes, scores and categories
    written = [sorted(tmp_path.glob(f"{run}/**/coco_instances_results.json")) for run in ("zoo", "ours")]
    assert all(len(w) == 1 for w in written), written
    zoo_dets, our_dets = (json.loads(w[0].read_text()) for w in written)
    assert len(zoo_dets) > 10
    assert zoo_dets == our_dets


def test_a_model_zoo_pkl_with_another_class_count_is_refused(files, tmp_path, monkeypatch):
    root, _, _, d2_state = files
    monkeypatch.setenv("RB_DATASETS", str(root))
    state = dict(d2_state)
    for k in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"):
        state[k] = state[k][:3]  # 2 classes + background
    for k in ("roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"):
        state[k] = state[k][:8]
    bad = tmp_path / "two_classes.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    with pytest.raises(CheckpointError) as e:
        _eval(str(bad), tmp_path / "bad")
    msg = str(e.value)
    assert str(bad) in msg and "MODEL.ROI_HEADS.NUM_CLASSES" in msg and "cls_score" in msg
    assert not (tmp_path / "bad" / "inference").exists()
