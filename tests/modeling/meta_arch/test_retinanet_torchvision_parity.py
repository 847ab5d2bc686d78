"""Whole-detector parity with torchvision's own retinanet_resnet50_fpn (v1).

torchvision builds the reference with random weights and random BN statistics and saves it with
`torch.save(model.state_dict())`; our RetinaNet, built from configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml,
loads that file through MODEL.WEIGHTS (checkpoint/retinanet_converter.py, every tensor required; its 91-way COCO
classifier becomes our 80 classes). Both then get the same pixels at the model's input: the images' short side is
torchvision's min_size (scale 1) and the batch pads to 256 x 384, a multiple of 128, where torchvision's anchor
strides (padded size // feature size) are the backbone's (ours, always: modeling/rcnn/anchors.py).
"""
import pytest
import torch
from _parity import assert_same_detections, frozen_bn, ours_from_weights, random_images, randomize_bn  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
from torchvision.models.detection import retinanet_resnet50_fpn

from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.structures import Instances

CONFIG = "configs/COCO-Detection/retinanet_R_50_FPN_torchvision.yaml"
SIZES = ((256, 384), (256, 320))  # (h, w): one short side (torchvision's min_size -> scale 1), batch 256 x 384
NOT_COCO = [0] + sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))  # columns no COCO class has (0: background)


def _images():
    return random_images(SIZES)


def _targets():
    boxes = [torch.tensor([[20.0, 30.0, 180.0, 200.0], [200.0, 50.0, 370.0, 250.0], [40.0, 150.0, 90.0, 220.0]]),
             torch.tensor([[10.0, 10.0, 300.0, 240.0]])]
    return boxes, [torch.tensor([0, 17, 79]), torch.tensor([3])]  # contiguous ids


def _torchvision_model():
    """The reference with random weights and BN statistics, scaled so that nothing saturates: the FPN's P3-P5
    brought to unit spread on the test images (a random ResNet's features reach the hundreds), the head's convs
    given unit gain and its class logits a spread of a few units, so detections pass the 0.05 threshold with
    distinct scores; the columns of ids no COCO class has never fire (ours has no row for them)."""
    torch.manual_seed(0)
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, min_size=SIZES[0][0], max_size=1333).eval()
    with torch.no_grad():
        randomize_bn(model)
        batch, _ = model.transform([im / 255 for im in _images()])
        features = model.backbone(batch.tensors)
        for block, level in zip(model.backbone.fpn.layer_blocks, features.values()):
            conv = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            spread = float(level.std())
            conv.weight.div_(spread)
            conv.bias.div_(spread)
        for head in (model.head.classification_head, model.head.regression_head):
            for m in head.conv.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.mul_(3.0)
        logits = model.head.classification_head.cls_logits
        logits.weight.mul_(2.5)
        logits.weight.view(9, 91, -1)[:, NOT_COCO] = 0.0
        logits.bias.view(9, 91)[:, NOT_COCO] = -1e4
    frozen_bn(model.backbone)  # torchvision's backbone with pretrained weights uses FrozenBatchNorm2d
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tv = _torchvision_model()
    path = tmp_path_factory.mktemp("tv_retinanet") / "retinanet_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    return tv, str(path)


def _ours(weights: str, *overrides):
    return ours_from_weights(CONFIG, weights, *overrides)


def test_same_detections(pair):
    tv, path = pair
    ours = _ours(path).eval()
    images = _images()
    with torch.no_grad():
        ref = tv([im / 255 for im in images])
        out = ours([{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images])
    coco_to_ours = {cid: c for c, cid in enumerate(COCO_CATEGORY_IDS)}
    for o, r in zip(out, ref):
        assert len(r["boxes"]) == 300, "the reference must fill its 300 detections for the comparison to mean much"
        ref_labels = torch.tensor([coco_to_ours[int(c)] for c in r["labels"]])
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r["boxes"], r["scores"], ref_labels)


def test_same_losses(pair):
    """No sampling in RetinaNet: every anchor counts in both libraries, so the losses are the same sums."""
    tv, path = pair
    ours = _ours(path).train()
    tv.train()
    images = _images()
    boxes, classes = _targets()
    try:
        ref = tv([im / 255 for im in images],
                 [{"boxes": b, "labels": torch.tensor([COCO_CATEGORY_IDS[int(c)] for c in k])}
                  for b, k in zip(boxes, classes)])
    finally:
        tv.eval()
    losses = ours([{"image": im, "instances": Instances(tuple(im.shape[1:]), gt_boxes=b, gt_classes=k)}
                   for im, b, k in zip(images, boxes, classes)])
    names = {"classification": "loss_cls", "bbox_regression": "loss_box_reg"}
    assert set(losses) == set(names.values())
    for theirs, name in names.items():
        assert float(ref[theirs].detach()) > 0, theirs
        torch.testing.assert_close(losses[name], ref[theirs], rtol=2e-5, atol=1e-6, msg=name)
