"""Whole-detector parity with detectron2's own RetinaNet (COCO-Detection/retinanet_R_50_FPN_1x.yaml).

detectron2 builds the reference from its own config with random weights and random FrozenBN statistics and saves
it with its DetectionCheckpointer (and in the model-zoo .pkl layout); our RetinaNet, built from
configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml, loads it through MODEL.WEIGHTS. Same pixels in (BGR, 0-255, two
sizes batched), the same detections out, and the same losses (no sampling: every anchor counts; the EMA
normaliser's first step, 0.9 x 100 + 0.1 x positives, on both sides).

detectron2 is not a dependency: these tests skip unless it imports (PYTHONPATH=/tmp/d2/src:/tmp/d2/site here).
"""

import pytest
import torch
from _parity import (  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
    assert_same_detections,
    detectron2_config_file,
    ours_from_weights,
    random_images,
    save_detectron2_files,
)

from resnet_backbone.structures import Instances

d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (build it beside the project to run "
                                               "the detectron2 parity tests)")
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

CONFIG = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
SIZES = ((224, 320), (256, 224))  # (h, w), batched: padded to 256 x 320


def _images():
    return random_images(SIZES, torch.uint8)


def _targets():
    boxes = [torch.tensor([[20.0, 30.0, 180.0, 200.0], [200.0, 50.0, 310.0, 210.0], [40.0, 150.0, 90.0, 220.0]]),
             torch.tensor([[10.0, 10.0, 200.0, 240.0]])]
    return boxes, [torch.tensor([0, 17, 79]), torch.tensor([3])]


def _detectron2_model():
    """detectron2's RetinaNet with random weights and FrozenBN statistics, scaled so that nothing saturates:
    P3-P6 brought to unit spread on the test images, the head's convs given unit gain and the class logits a
    spread of a few units (detections then pass the 0.05 threshold with distinct scores)."""
    cfg = d2_get_cfg()
    cfg.merge_from_file(detectron2_config_file(d2, CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = d2_build_model(cfg).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if ".norm." in name and name.rsplit(".", 1)[1] in ("weight", "running_var"):
                buf.uniform_(0.5, 1.5)
            elif ".norm." in name and name.rsplit(".", 1)[1] in ("bias", "running_mean"):
                buf.uniform_(-0.2, 0.2)
        features = model.backbone(model.preprocess_image([{"image": im} for im in _images()]).tensor)
        convs = {f"p{lv}": getattr(model.backbone, f"fpn_output{lv}") for lv in (3, 4, 5)}
        convs["p6"] = model.backbone.top_block.p6
        for level, conv in convs.items():
            spread = float(features[level].std())
            conv.weight.div_(spread)
            conv.bias.div_(spread)
        for subnet in (model.head.cls_subnet, model.head.bbox_subnet):
            for m in subnet.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.mul_(3.0)
        model.head.cls_score.weight.mul_(2.5)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = _detectron2_model()
    out = tmp_path_factory.mktemp("d2_retinanet")
    return (model, *save_detectron2_files(model, out))


def _ours(weights: str):
    return ours_from_weights(f"configs/{CONFIG}", weights)


def test_model_zoo_pkl_and_checkpointer_pth_load_the_same_weights(reference):
    _, pth, pkl = reference
    a, b = _ours(pth).state_dict(), _ours(pkl).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_same_detections(reference):
    model, pth, _ = reference
    ours = _ours(pth).eval()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in _images()]
    with torch.no_grad():
        ref = [r["instances"] for r in model(inputs)]
        out = ours(inputs)
    for o, r in zip(out, ref):
        assert len(r) == 100  # TEST.DETECTIONS_PER_IMAGE filled
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r.pred_boxes.tensor, r.scores, r.pred_classes)


def test_same_losses(reference):
    model, pth, _ = reference
    ours = _ours(pth).train()
    images = _images()
    boxes, classes = _targets()
    model.train()
    try:
        with EventStorage(0):
            ref = model([{"image": im, "instances": D2Instances(tuple(im.shape[1:]), gt_boxes=Boxes(b), gt_classes=k)}
                         for im, b, k in zip(images, boxes, classes)])
    finally:
        model.eval()
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer  # detectron2's EMA, back to its start for the other tests
    losses = ours([{"image": im, "instances": Instances(tuple(im.shape[1:]), gt_boxes=b, gt_classes=k)}
                   for im, b, k in zip(images, boxes, classes)])
    assert set(losses) == set(ref) == {"loss_cls", "loss_box_reg"}
    for k in ref:
        assert float(ref[k].detach()) > 0, k
        torch.testing.assert_close(losses[k], ref[k], rtol=2e-5, atol=1e-6, msg=k)
