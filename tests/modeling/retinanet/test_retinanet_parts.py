"""modeling/retinanet's parts against torchvision's own: the head (layout, init), the losses (torchvision's
RetinaNet.compute_loss under LOSS_NORMALIZER per_image; detectron2's EMA by its formula) and the detections
(torchvision's RetinaNet.postprocess_detections under RCNN_EDGE_RULES torchvision). Small inputs: milliseconds."""
import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead

from resnet_backbone.modeling.retinanet import (
    RetinaNetHead,
    RetinaNetLosses,
    decode_detections,
    rescale_detections,
)

C, A, K = 16, 3, 4  # channels, anchors per location, classes
SIZES = [(8, 10), (4, 5)]  # two levels


def _features(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, C, h, w, generator=g) for h, w in SIZES]


def _anchors(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    per = []
    for h, w in SIZES:
        xy = torch.rand(h * w * A, 2, generator=g) * 60
        wh = torch.rand(h * w * A, 2, generator=g) * 30 + 4
        per.append(torch.cat([xy, xy + wh], 1))
    return [torch.cat(per)] * n


def test_head_is_torchvisions_with_num_convs_and_prior():
    ours = RetinaNetHead(C, A, K, num_convs=4, prior_probability=0.01)
    tv = TVRetinaNetHead(C, A, K)
    assert ours.state_dict().keys() == tv.state_dict().keys()  # torchvision's names, so its files load by name
    tv.load_state_dict(ours.state_dict())
    feats = _features()
    with torch.no_grad():
        a, b = ours(feats), tv(feats)
    for k in ("cls_logits", "bbox_regression"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert a["cls_logits"].shape == (2, sum(h * w for h, w in SIZES) * A, K)
    assert torch.allclose(ours.classification_head.cls_logits.bias, torch.tensor(-math.log(99.0)))
    assert len(RetinaNetHead(C, A, K, num_convs=2).regression_head.conv) == 2


def _targets():
    return [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 28.0], [30.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an image without objects


def test_per_image_losses_are_torchvisions():
    head = RetinaNetHead(C, A, K)
    torch.nn.init.normal_(head.classification_head.cls_logits.weight, std=1.0)
    out = head(_features())
    anchors, targets = _anchors(), _targets()
    ours = RetinaNetLosses((0.4, 0.5), det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)), smooth_l1_beta=0.0,
                           normalizer="per_image")(out["cls_logits"], out["bbox_regression"], anchors, targets)
    tv = TVRetinaNet.compute_loss(_TVShim(head), targets, out, anchors)
    torch.testing.assert_close(ours["loss_cls"], tv["classification"], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours["loss_box_reg"], tv["bbox_regression"], rtol=1e-6, atol=0)
    assert float(tv["bbox_regression"].detach()) > 0


class _TVShim:
    """What torchvision's RetinaNet.compute_loss reads from `self`."""

    def __init__(self, head):
        self.head = head
        self.proposal_matcher = det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)


def test_ema_normaliser_is_detectron2s():
    """detectron2: n = 0.9 n + 0.1 max(1, positives of the batch) from n = 100, both sums divided by n."""
    head = RetinaNetHead(C, A, K)
    out = head(_features())
    anchors, targets = _anchors(), _targets()
    losses = RetinaNetLosses((0.4, 0.5), det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)), normalizer="ema")
    per_image = RetinaNetLosses((0.4, 0.5), det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)), normalizer="per_image")
    positives = int((losses.match(anchors[0], targets[0]["boxes"]) >= 0).sum())
    assert positives > 0
    sums = per_image(out["cls_logits"], out["bbox_regression"], anchors[:1], targets[:1])  # image 0: sum / positives
    empty = per_image(out["cls_logits"][1:], out["bbox_regression"][1:], anchors[1:], targets[1:])  # sum / 1
    first = losses(out["cls_logits"], out["bbox_regression"], anchors, targets)
    n1 = 0.9 * 100 + 0.1 * positives
    torch.testing.assert_close(first["loss_cls"], (sums["loss_cls"] * positives + empty["loss_cls"]) / n1)
    torch.testing.assert_close(first["loss_box_reg"], sums["loss_box_reg"] * positives / n1)
    losses(out["cls_logits"], out["bbox_regression"], anchors, targets)
    assert losses.loss_normalizer == pytest.approx(0.9 * n1 + 0.1 * positives)


@pytest.mark.parametrize("thresh", [0.05, 0.5])
def test_torchvision_rules_detections_are_torchvisions(thresh):
    head = RetinaNetHead(C, A, K, num_convs=1)
    for m in head.modules():  # unit-gain convs and logits around 0: many candidates pass the thresholds
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
            torch.nn.init.zeros_(m.bias)
    with torch.no_grad():
        out = head(_features())
    anchors = _anchors()
    per_level = [h * w * A for h, w in SIZES]
    image_sizes = [(64, 80), (56, 72)]
    ours = decode_detections(out["cls_logits"], out["bbox_regression"], anchors, per_level, image_sizes,
                             det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)), score_thresh=thresh, topk_candidates=50,
                             nms_thresh=0.5, detections_per_image=40, clip_before_nms=True)
    shim = _TVShim(head)
    shim.box_coder, shim.score_thresh, shim.nms_thresh = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0)), thresh, 0.5
    shim.detections_per_img, shim.topk_candidates = 40, 50
    split = {k: list(v.split(per_level, dim=1)) for k, v in out.items()}
    ref = TVRetinaNet.postprocess_detections(shim, split, [list(a.split(per_level)) for a in anchors], image_sizes)
    for o, r in zip(ours, ref):
        assert len(r["boxes"]) > 5
        for k in ("boxes", "scores", "labels"):
            torch.testing.assert_close(o[k], r[k], rtol=0, atol=0)


def test_detectron2_rules_clip_after_and_drop_empty_boxes():
    det = [{"boxes": torch.tensor([[-10.0, 5.0, 30.0, 20.0], [90.0, 10.0, 120.0, 30.0], [10.0, 10.0, 20.0, 20.0]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2])}]
    inputs = [{"height": 100, "width": 160}]  # input 50 x 80: boxes scale by 2
    out = rescale_detections(det, inputs, [(50, 80)], drop_empty=True)[0]
    assert out["boxes"].tolist() == [[0.0, 10.0, 60.0, 40.0], [20.0, 20.0, 40.0, 40.0]]  # x1 180 > 160: empty
    assert out["labels"].tolist() == [0, 2]
    kept = rescale_detections(det, inputs, [(50, 80)], drop_empty=False)[0]
    assert len(kept["boxes"]) == 3
