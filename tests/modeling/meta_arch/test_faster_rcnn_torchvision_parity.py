"""Whole-detector parity with torchvision's own fasterrcnn_resnet50_fpn and fasterrcnn_resnet50_fpn_v2.

torchvision builds the reference with random weights and random BN statistics and saves it with
`torch.save(model.state_dict())`; our FasterRCNN, built from configs/COCO-Detection/faster_rcnn_R_50_FPN_torchvision
{,_v2}.yaml, loads that file through MODEL.WEIGHTS (the Checkpointer, every tensor required). Both then get the
same pixels at the model's input: the images' short side is torchvision's min_size, so its transform keeps them as
they are (scale 1), and the batch is padded to 32 in both. Resizing is compared on its own in
tests/data/test_resize_methods.py.
"""
import pytest
import torch
from _parity import assert_same_detections, frozen_bn, ours_from_weights, random_images, randomize_bn  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.structures import Instances

CONFIGS = {"v1": "configs/COCO-Detection/faster_rcnn_R_50_FPN_torchvision.yaml",
           "v2": "configs/COCO-Detection/faster_rcnn_R_50_FPN_torchvision_v2.yaml"}
SIZES = ((224, 320), (224, 288))  # (h, w): two sizes, one short side (torchvision's min_size -> scale 1)
NOT_COCO = sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))  # the 10 ids torchvision's 91-way head leaves unused


def _torchvision_model(version: str, min_size: int, build=None):
    """The reference with random weights and BN statistics, scaled so that nothing saturates: each FPN level's
    output is brought to unit spread on the test images (a random ResNet's features reach the hundreds, which
    would saturate every sigmoid and softmax into ties), then the RPN and class logits are spread out so that
    proposals are ranked by distinct scores and detections pass the 0.05 threshold. `build`: another torchvision
    builder of the version's layout (maskrcnn_resnet50_fpn for v1)."""
    torch.manual_seed(0)
    build = build or (fasterrcnn_resnet50_fpn if version == "v1" else fasterrcnn_resnet50_fpn_v2)
    model = build(weights=None, weights_backbone=None, min_size=min_size, max_size=1333).eval()
    with torch.no_grad():
        randomize_bn(model)
        batch, _ = model.transform([im / 255 for im in _images()])
        features = model.backbone(batch.tensors)
        for block, level in zip(model.backbone.fpn.layer_blocks, features.values()):
            last = [m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))][-1]
            spread = float(level.std())
            last.weight.div_(spread)
            last.bias.div_(spread)
        model.rpn.head.cls_logits.weight.mul_(20.0)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.mul_(10.0 if version == "v1" else 3.0)
        predictor.cls_score.weight[NOT_COCO] = 0.0  # ids no COCO class has: never predicted (ours has no row)
        predictor.cls_score.bias[NOT_COCO] = -1e4
    if version == "v1":
        frozen_bn(model.backbone)  # torchvision's v1 backbone with pretrained weights uses FrozenBatchNorm2d
    return model


def _ours(version: str, weights: str, *overrides):
    return ours_from_weights(CONFIGS[version], weights, *overrides)


def _images():
    return random_images(SIZES)


def _targets():
    boxes = [torch.tensor([[20.0, 30.0, 180.0, 200.0], [200.0, 50.0, 310.0, 210.0], [40.0, 150.0, 90.0, 220.0]]),
             torch.tensor([[10.0, 10.0, 270.0, 200.0]])]
    classes = [torch.tensor([0, 17, 79]), torch.tensor([3])]  # contiguous ids
    return boxes, classes


@pytest.fixture(scope="module", params=["v1", "v2"])
def pair(request, tmp_path_factory):
    version = request.param
    tv = _torchvision_model(version, min_size=SIZES[0][0])
    path = tmp_path_factory.mktemp(f"tv_{version}") / f"fasterrcnn_{version}.pth"
    torch.save(tv.state_dict(), path)
    return version, tv, str(path)


def test_same_detections(pair):
    version, tv, path = pair
    ours = _ours(version, path).eval()
    tv.eval()
    images = _images()
    with torch.no_grad():
        ref = tv([im / 255 for im in images])
        out = ours([{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images])
    coco_to_ours = {cid: c for c, cid in enumerate(COCO_CATEGORY_IDS)}
    for o, r in zip(out, ref):
        assert len(r["boxes"]) >= 5, "the reference must detect something for the comparison to mean anything"
        ref_labels = torch.tensor([coco_to_ours[int(c)] for c in r["labels"]])
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r["boxes"], r["scores"], ref_labels)


def test_same_losses_with_every_candidate_sampled(pair):
    """Sampling made deterministic: batch sizes above every anchor / proposal count and positive fraction 1, so
    both libraries use every candidate (their random draws then only reorder a sum). 300 proposals per image
    (both sides) keep the RoI heads' share of the run small."""
    version, tv, path = pair
    overrides = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.RPN.POSITIVE_FRACTION", 1.0,
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0,
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", 300]
    tv.rpn._post_nms_top_n["training"] = 300
    if version == "v2":
        overrides += ["MODEL.BACKBONE.FREEZE_AT", 0]  # torchvision without weights trains every layer's BN
    ours = _ours(version, path, *overrides).train()
    tv.train()
    for sampler in (tv.rpn.fg_bg_sampler, tv.roi_heads.fg_bg_sampler):
        sampler.batch_size_per_image, sampler.positive_fraction = 10 ** 6, 1.0
    images = _images()
    boxes, classes = _targets()
    ref = tv([im / 255 for im in images],
             [{"boxes": b, "labels": torch.tensor([COCO_CATEGORY_IDS[int(c)] for c in k])}
              for b, k in zip(boxes, classes)])
    losses = ours([{"image": im, "height": im.shape[1], "width": im.shape[2],
                    "instances": Instances(tuple(im.shape[1:]), gt_boxes=b, gt_classes=k)}
                   for im, b, k in zip(images, boxes, classes)])
    assert set(losses) == set(ref)
    for k in ref:
        assert float(ref[k]) > 0, k
        torch.testing.assert_close(losses[k], ref[k], rtol=2e-5, atol=1e-6, msg=k)
