"""Whole-detector parity with detectron2's own GeneralizedRCNN (faster_rcnn_R_50_FPN_1x.yaml).

detectron2 builds the reference from its own config with random weights and random FrozenBN statistics and saves
it with its DetectionCheckpointer; our FasterRCNN, built from configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml,
loads that .pth (and the same weights in the model-zoo .pkl layout) through MODEL.WEIGHTS. Same pixels in (BGR,
0-255, two sizes batched), same detections out at SCORE_THRESH_TEST 0, and the same losses for the same sampled
anchors and proposals: both libraries draw their samples with the same torch.randperm calls in the same order,
so one seed gives both the same samples.

detectron2 is not a dependency: these tests skip unless it imports (build it beside the project to run them).
"""
from pathlib import Path

import pytest
import torch
from _parity import assert_same_detections, ours_from_weights, random_images, save_detectron2_files  # noqa: E402  (tests/modeling/meta_arch/_parity.py)

from resnet_backbone.structures import Instances

d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (build it beside the project to run "
                                               "the detectron2 parity tests)")
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
SIZES = ((224, 320), (256, 224))  # (h, w), batched: padded to 256 x 320 (both pad to 32)
LOSS_NAMES = {"loss_rpn_cls": "loss_objectness", "loss_rpn_loc": "loss_rpn_box_reg", "loss_cls": "loss_classifier",
              "loss_box_reg": "loss_box_reg"}


def _d2_config_file(config: str = CONFIG) -> str:
    """detectron2's own config file: in an installed package (model_zoo/configs) or a source checkout (configs/)."""
    package = Path(d2.__file__).resolve().parent
    for path in (package / "model_zoo" / "configs" / config, package.parent / "configs" / config):
        if path.is_file():
            return str(path)
    pytest.skip(f"detectron2's {config} not found next to {package}")


def _images():
    return random_images(SIZES, torch.uint8)


def _targets():
    boxes = [torch.tensor([[20.0, 30.0, 180.0, 200.0], [200.0, 50.0, 310.0, 210.0], [40.0, 150.0, 90.0, 220.0]]),
             torch.tensor([[10.0, 10.0, 200.0, 240.0]])]
    return boxes, [torch.tensor([0, 17, 79]), torch.tensor([3])]


def _detectron2_model(config: str = CONFIG):
    """detectron2's model, random weights and FrozenBN statistics, scaled so that nothing saturates (a random
    ResNet's features reach the hundreds): each FPN output brought to unit spread on the test images, the RPN
    and class logits spread out so proposals and detections are ranked by distinct scores."""
    cfg = d2_get_cfg()
    cfg.merge_from_file(_d2_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = d2_build_model(cfg).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if ".norm." in name and name.rsplit(".", 1)[1] in ("weight", "running_var"):
                buf.uniform_(0.5, 1.5)
            elif ".norm." in name and name.rsplit(".", 1)[1] in ("bias", "running_mean"):
                buf.uniform_(-0.2, 0.2)
        images = model.preprocess_image([{"image": im} for im in _images()])
        features = model.backbone(images.tensor)
        for level in (2, 3, 4, 5):
            conv = getattr(model.backbone, f"fpn_output{level}")
            spread = float(features[f"p{level}"].std())
            conv.weight.div_(spread)
            conv.bias.div_(spread)
        model.proposal_generator.rpn_head.objectness_logits.weight.mul_(20.0)
        model.roi_heads.box_predictor.cls_score.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _detectron2_model()
    out = tmp_path_factory.mktemp("d2")
    return (model, *save_detectron2_files(model, out))


def _ours(weights: str, *overrides):
    return ours_from_weights(f"configs/{CONFIG}", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *overrides)


def test_model_zoo_pkl_and_checkpointer_pth_load_the_same_weights(reference):
    _, pth, pkl = reference
    a, b = _ours(pth).state_dict(), _ours(pkl).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_detections(reference):
    model, pth, _ = reference
    ours = _ours(pth).eval()
    images = _images()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    with torch.no_grad():
        ref = [r["instances"] for r in model(inputs)]
        out = ours(inputs)
    for o, r in zip(out, ref):
        assert len(r) == 100  # TEST.DETECTIONS_PER_IMAGE: at threshold 0 every image fills its quota
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r.pred_boxes.tensor, r.scores, r.pred_classes)


def test_same_losses_for_the_same_samples(reference):
    """The RPN samples its anchors with detectron2's defaults (256 per image, half positive) under one seed: the
    same draws on both sides. The RoI heads take every proposal (batch size above the proposal count, positive
    fraction 1): their proposals come out of NMS in score order, and where two scores tie to ~1e-6 the float
    noise between the two backbones (~1e-5 on features of ~4) can swap their places, which would change what a
    seeded draw picks; taking all of them leaves only the order of a sum."""
    model, pth, _ = reference
    ours = _ours(pth, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)
    compare_losses(model, ours, LOSS_NAMES)


def compare_losses(model, ours, loss_names: dict, masks=None) -> None:
    """detectron2's `model` and `ours` trained one step on _images() / _targets() (+ `masks`, one (N, H, W) uint8
    tensor per image: detectron2 gets them as BitMasks) under the same seed, every proposal taken by the RoI heads:
    each of `loss_names` (detectron2's -> ours) equal."""
    from detectron2.structures import BitMasks

    ours.train()
    saved = model.roi_heads.batch_size_per_image, model.roi_heads.positive_fraction
    model.roi_heads.batch_size_per_image, model.roi_heads.positive_fraction = 10 ** 6, 1.0
    model.train()
    images = _images()
    boxes, classes = _targets()
    masks = masks or [None] * len(images)
    d2_inputs = [{"image": im, "instances": D2Instances(tuple(im.shape[1:]), gt_boxes=Boxes(b), gt_classes=k,
                                                        **({} if m is None else {"gt_masks": BitMasks(m.bool())}))}
                 for im, b, k, m in zip(images, boxes, classes, masks)]
    our_inputs = [{"image": im, "instances": Instances(tuple(im.shape[1:]), gt_boxes=b, gt_classes=k,
                                                       **({} if m is None else {"gt_masks": m}))}
                  for im, b, k, m in zip(images, boxes, classes, masks)]
    try:
        torch.manual_seed(5)
        with EventStorage(0):
            ref = model(d2_inputs)
    finally:
        model.eval()
        model.roi_heads.batch_size_per_image, model.roi_heads.positive_fraction = saved
    torch.manual_seed(5)
    losses = ours(our_inputs)
    assert set(losses) == set(loss_names.values())
    for d2_name, name in loss_names.items():
        ref_value = ref[d2_name].detach()
        assert float(ref_value) > 0, d2_name
        assert torch.allclose(losses[name].detach(), ref_value, rtol=2e-5, atol=1e-6), \
            f"{name}: ours {float(losses[name]):.8g}, detectron2 {float(ref_value):.8g}"
