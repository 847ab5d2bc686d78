"""Whole-detector parity with torchvision's own maskrcnn_resnet50_fpn (MODEL.MASK_ON, torchvision semantics).

torchvision builds the reference with random weights and random BN statistics and saves it with
`torch.save(model.state_dict())`; our FasterRCNN with a mask head, built from
configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_torchvision.yaml, loads that file through MODEL.WEIGHTS (the
Checkpointer, every tensor required: its 91 COCO mask channels become our 80 classes as the box rows do). Same
pixels at the model's input (short side = torchvision's min_size: scale 1), then: the same detections, the same
pasted mask probabilities (torchvision's paste_masks_in_image) and the same bool masks at 0.5, and the same
training losses, loss_mask included, for the same gt masks with every candidate sampled.
"""
import pytest
import torch
from _parity import assert_same_detections, ours_from_weights  # noqa: E402  (tests/modeling/meta_arch/_parity.py)
from test_faster_rcnn_torchvision_parity import SIZES, _images, _targets
from test_faster_rcnn_torchvision_parity import _torchvision_model as _torchvision_model_of
from torchvision.models.detection import maskrcnn_resnet50_fpn

from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.structures import Instances

CONFIG = "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_torchvision.yaml"


def _torchvision_model():
    """The reference, random weights and BN statistics, scaled as the Faster R-CNN parity test's (FPN levels at
    unit spread, RPN and class logits spread out), and its mask logits brought to a spread of ~3 around 0 on two
    RoIs, so that the mask probabilities cross 0.5 inside the boxes (neither all 0 nor all 1)."""
    model = _torchvision_model_of("v1", SIZES[0][0], build=maskrcnn_resnet50_fpn)
    with torch.no_grad():
        batch, _ = model.transform([im / 255 for im in _images()])
        features = model.backbone(batch.tensors)
        rois = [torch.tensor([[20.0, 30.0, 180.0, 200.0], [40.0, 50.0, 120.0, 210.0]])] * 2
        pooled = model.roi_heads.mask_roi_pool(features, rois, batch.image_sizes)
        spread_logits(model.roi_heads.mask_predictor.mask_fcn_logits,
                      model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled)))
    return model


def spread_logits(conv: torch.nn.Conv2d, logits: torch.Tensor, spread: float = 3.0) -> None:
    """Scale the 1x1 mask-logit conv that gave `logits` so that they spread by `spread` around about 0."""
    scale = spread / float(logits.std())
    conv.weight.mul_(scale)
    conv.bias.fill_(-float(logits.mean()) * scale)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tv = _torchvision_model()
    path = tmp_path_factory.mktemp("tv_mask") / "maskrcnn.pth"
    torch.save(tv.state_dict(), path)
    return tv, str(path)


def _ours(weights: str, *overrides):
    return ours_from_weights(CONFIG, weights, *overrides)


def _gt_masks(boxes, size):
    """One mask per gt box: an ellipse inscribed in it (soft edges under RoIAlign, unlike a filled box)."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    out = []
    for x0, y0, x1, y1 in boxes.tolist():
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        out.append((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).to(torch.uint8))
    return torch.stack(out)


def test_same_detections_and_masks(pair):
    tv, path = pair
    ours = _ours(path).eval()
    tv.eval()
    images = _images()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    with torch.no_grad():
        ref = tv([im / 255 for im in images])
        probs = ours._run(inputs, mask_threshold=None)
        out = ours(inputs)
    coco_to_ours = {cid: c for c, cid in enumerate(COCO_CATEGORY_IDS)}
    for o, p, r in zip(out, probs, ref):
        assert len(r["boxes"]) >= 5, "the reference must detect something for the comparison to mean anything"
        ref_labels = torch.tensor([coco_to_ours[int(c)] for c in r["labels"]])
        assert_same_detections(o["boxes"], o["scores"], o["labels"], r["boxes"], r["scores"], ref_labels)
        ref_probs = r["masks"][:, 0]
        assert o["masks"].dtype == torch.bool and o["masks"].shape == ref_probs.shape
        assert 0.05 < float((ref_probs >= 0.5).float().mean() / (ref_probs > 0).float().mean()) < 0.95
        torch.testing.assert_close(p["masks"], ref_probs, atol=1e-4, rtol=0)
        undecided = (ref_probs - 0.5).abs() < 1e-4  # float noise may put these on either side of the threshold
        assert torch.equal(o["masks"][~undecided], (ref_probs >= 0.5)[~undecided])


def test_same_losses_with_every_candidate_sampled(pair):
    """As the Faster R-CNN parity test: every anchor and proposal used (batch sizes above their counts, positive
    fraction 1), so the random draws only reorder sums; loss_mask over the same foreground RoIs, torchvision's
    soft RoIAlign targets of the same gt masks."""
    tv, path = pair
    overrides = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.RPN.POSITIVE_FRACTION", 1.0,
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 10 ** 6, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0,
                 "MODEL.RPN.POST_NMS_TOPK_TRAIN", 300]
    saved = tv.rpn._post_nms_top_n["training"]
    tv.rpn._post_nms_top_n["training"] = 300
    ours = _ours(path, *overrides).train()
    tv.train()
    samplers = (tv.rpn.fg_bg_sampler, tv.roi_heads.fg_bg_sampler)
    saved_samplers = [(s.batch_size_per_image, s.positive_fraction) for s in samplers]
    for sampler in samplers:
        sampler.batch_size_per_image, sampler.positive_fraction = 10 ** 6, 1.0
    images = _images()
    boxes, classes = _targets()
    masks = [_gt_masks(b, im.shape[1:]) for b, im in zip(boxes, images)]
    try:
        ref = tv([im / 255 for im in images],
                 [{"boxes": b, "labels": torch.tensor([COCO_CATEGORY_IDS[int(c)] for c in k]), "masks": m}
                  for b, k, m in zip(boxes, classes, masks)])
    finally:
        tv.eval()
        tv.rpn._post_nms_top_n["training"] = saved
        for s, (b, f) in zip(samplers, saved_samplers):
            s.batch_size_per_image, s.positive_fraction = b, f
    losses = ours([{"image": im, "instances": Instances(tuple(im.shape[1:]), gt_boxes=b, gt_classes=k, gt_masks=m)}
                   for im, b, k, m in zip(images, boxes, classes, masks)])
    assert set(losses) == set(ref) and "loss_mask" in losses
    for k in ref:
        assert float(ref[k].detach()) > 0, k
        torch.testing.assert_close(losses[k].detach(), ref[k].detach(), rtol=2e-5, atol=1e-6, msg=k)
