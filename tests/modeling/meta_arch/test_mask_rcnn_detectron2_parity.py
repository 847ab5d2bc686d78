"""Whole-detector parity with detectron2's own Mask R-CNN (COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml).

detectron2 builds the reference from its own config with random weights and FrozenBN statistics and saves it with
its DetectionCheckpointer; our FasterRCNN with MODEL.MASK_ON, built from
configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml, loads that .pth through MODEL.WEIGHTS (its K-channel
mask predictor gets our background channel 0). Same pixels in, then: the same detections at SCORE_THRESH_TEST 0;
the same mask probabilities pasted into the image (detectron2's `_do_paste_mask`, per box as on CPU) and the same
bool masks as detectron2's own output; the same losses, loss_mask included, for the same gt masks (detectron2
gets them as BitMasks: its crop_and_resize targets, aligned RoIAlign then >= 0.5).

detectron2 is not a dependency: these tests skip unless it imports (PYTHONPATH=/tmp/d2/src:/tmp/d2/site here).
"""
import pytest
import torch
from _parity import assert_same_detections, ours_from_weights  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
from test_mask_rcnn_torchvision_parity import _gt_masks, spread_logits

pytest.importorskip("detectron2", reason="detectron2 is not installed (build it beside the project to run the "
                                          "detectron2 parity tests)")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers.mask_ops import _do_paste_mask  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from test_faster_rcnn_detectron2_parity import _detectron2_model as _scaled_detectron2_model  # noqa: E402
from test_faster_rcnn_detectron2_parity import _images, _targets, compare_losses  # noqa: E402

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
LOSS_NAMES = {"loss_rpn_cls": "loss_objectness", "loss_rpn_loc": "loss_rpn_box_reg", "loss_cls": "loss_classifier",
              "loss_box_reg": "loss_box_reg", "loss_mask": "loss_mask"}


def _detectron2_model():
    """Random weights and FrozenBN statistics, scaled as in the Faster R-CNN parity test; the mask logits brought
    to a spread of ~3 around 0 on two RoIs, so that the probabilities cross 0.5 inside the boxes."""
    model = _scaled_detectron2_model(CONFIG)
    with torch.no_grad():
        images = model.preprocess_image([{"image": im} for im in _images()])
        features = model.backbone(images.tensor)
        rois = [Boxes(torch.tensor([[20.0, 30.0, 180.0, 200.0], [40.0, 50.0, 120.0, 210.0]]))] * 2
        pooled = model.roi_heads.mask_pooler([features[f] for f in model.roi_heads.mask_in_features], rois)
        spread_logits(model.roi_heads.mask_head.predictor, model.roi_heads.mask_head.layers(pooled))
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _detectron2_model()
    out = tmp_path_factory.mktemp("d2_mask")
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    return model, str(out / "model_final.pth")


def _ours(weights: str, *overrides):
    return ours_from_weights(f"configs/{CONFIG}", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *overrides)


def _d2_pasted_probabilities(instances, height, width):
    """detectron2's paste without the threshold, box by box as its CPU path pastes (skip_empty: the box + 1 px)."""
    out = torch.zeros(len(instances), height, width)
    for i in range(len(instances)):
        region, where = _do_paste_mask(instances.pred_masks[i:i + 1], instances.pred_boxes.tensor[i:i + 1], height,
                                       width, skip_empty=True)
        out[(i, *where)] = region[0]
    return out


def test_same_detections_and_masks(reference):
    model, pth = reference
    ours = _ours(pth).eval()
    images = _images()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    with torch.no_grad():
        ref = [r["instances"] for r in model(inputs)]
        raw = model.inference(inputs, do_postprocess=False)  # 28 x 28 probabilities (scale 1: the same boxes)
        probs = ours._run(inputs, mask_threshold=None)
        out = ours(inputs)
    for o, p, r, w, im in zip(out, probs, ref, raw, images):
        assert len(r) == 100
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r.pred_boxes.tensor, r.scores, r.pred_classes)
        ref_probs = _d2_pasted_probabilities(w, *im.shape[1:])
        assert 0.05 < float(r.pred_masks.float().mean() / (ref_probs > 0).float().mean()) < 0.95
        torch.testing.assert_close(p["masks"], ref_probs, atol=1e-4, rtol=0)
        assert o["masks"].dtype == torch.bool and o["masks"].shape == r.pred_masks.shape
        undecided = (ref_probs - 0.5).abs() < 1e-4
        assert torch.equal(o["masks"][~undecided], r.pred_masks[~undecided])


def test_same_losses_for_the_same_samples(reference):
    """The RPN's seeded samples are the same draws on both sides; the RoI heads take every proposal (see the
    Faster R-CNN parity test); loss_mask over the same foreground RoIs with detectron2's BitMasks targets."""
    model, pth = reference
    ours = _ours(pth, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)
    boxes, _ = _targets()
    compare_losses(model, ours, LOSS_NAMES, [_gt_masks(b, im.shape[1:]) for b, im in zip(boxes, _images())])
