"""rcnn.RPN / RPNHead against the references, rule by rule:

- the proposal filter under RCNN_EDGE_RULES "detectron2" == detectron2's find_top_rpn_proposals, under
  "torchvision" == torchvision's RegionProposalNetwork.filter_proposals, on crafted logits and boxes (logits
  past 17 where sigmoid is 1.0 in float32, a box narrower than 1e-3 px, a box exactly MIN_SIZE wide, boxes from
  non-finite deltas);
- the losses under LOSS_NORMALIZER "sampled" == torchvision's compute_loss, under "batch_size" == detectron2's
  RPN.losses (every BBOX_REG_LOSS_TYPE, SMOOTH_L1_BETA 0 and > 0, loss weights), with images that have fewer
  labelled anchors than BATCH_SIZE_PER_IMAGE (where the two normalisers differ), and BOUNDARY_THRESH >= 0;
- the head with CONV_DIMS of several widths == detectron2's StandardRPNHead with the same weights.
"""
import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from resnet_backbone.modeling.rcnn import RPN, AnchorGenerator, RPNHead

D2_REASON = "detectron2 is not installed (run with PYTHONPATH=/tmp/d2/src:/tmp/d2/site for the detectron2 checks)"
IMAGE = (64, 80)  # padded batch (h, w)
IMAGE_SIZES = [(64, 80), (50, 66)]
STRIDES = [8, 16]
SIZES = ((16,), (32,))
RATIOS = ((0.5, 1.0, 2.0),) * 2
PER_LEVEL = [8 * 10 * 3, 4 * 5 * 3]  # anchors per image on each level


def _rpn(edge_rules="detectron2", *, min_size=0.0, pre_nms=40, post_nms=30, nms=0.7, batch_size=256,
         loss_normalizer="batch_size", box_loss_type="smooth_l1", beta=0.0, loss_weight=1.0, bbox_reg_loss_weight=1.0,
         boundary_thresh=-1.0, offset=0.5):
    gen = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=offset, round_cell_anchors=edge_rules == "torchvision")
    return RPN(gen, RPNHead(4, 3), in_features=["p3", "p4"], min_size=min_size, edge_rules=edge_rules,
               loss_normalizer=loss_normalizer, box_loss_type=box_loss_type, smooth_l1_beta=beta,
               loss_weight=loss_weight, bbox_reg_loss_weight=bbox_reg_loss_weight, boundary_thresh=boundary_thresh,
               fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=batch_size, positive_fraction=0.5,
               pre_nms_top_n={"training": pre_nms, "testing": pre_nms},
               post_nms_top_n={"training": post_nms, "testing": post_nms}, nms_thresh=nms)


def _tv_rpn(pre_nms=40, post_nms=30, nms=0.7, batch_size=256):
    gen = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, round_cell_anchors=True)
    return RegionProposalNetwork(gen, TVRPNHead(4, 3), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                                 batch_size_per_image=batch_size, positive_fraction=0.5,
                                 pre_nms_top_n={"training": pre_nms, "testing": pre_nms},
                                 post_nms_top_n={"training": post_nms, "testing": post_nms}, nms_thresh=nms)


def _crafted(nonfinite_deltas=True):
    """(proposals [N, R, 4], logits [N, R]) decoded from random deltas on real anchors, then edited:

    image 0, level 0: two overlapping boxes with logits 18 and 25 (sigmoid: both 1.0), the lower one first;
    a box 5e-4 px wide (kept by detectron2's `> 0`, dropped by torchvision's `>= 1e-3`), a box exactly 2 px
    wide after clipping (MIN_SIZE 2: dropped by `> 2`, kept by `>= 2`); with `nonfinite_deltas`, a NaN delta and
    an infinite centre delta (NaN box; a box clipped to zero width) on high logits.
    image 1: random, with logits past 17 on a few boxes."""
    g = torch.Generator().manual_seed(3)
    anchors = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=0.5)(
        ImageList(torch.zeros(2, 3, *IMAGE), IMAGE_SIZES), [torch.zeros(2, 4, 8, 10), torch.zeros(2, 4, 4, 5)])[0]
    deltas = torch.randn(2, anchors.shape[0], 4, generator=g) * 0.3
    logits = torch.randn(2, anchors.shape[0], generator=g) * 3
    if nonfinite_deltas:
        deltas[0, 7] = torch.tensor([float("nan"), 0.0, 0.0, 0.0])
        deltas[0, 8] = torch.tensor([float("inf"), 0.0, 0.0, 0.0])
        logits[0, 7], logits[0, 8] = 30.0, 29.0
    coder = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes = torch.stack([coder.decode_single(d, anchors) for d in deltas])
    boxes[0, 3] = torch.tensor([10.0, 10.0, 30.0, 30.0])
    boxes[0, 4] = torch.tensor([11.0, 10.0, 31.0, 30.0])
    logits[0, 3], logits[0, 4] = 18.0, 25.0
    boxes[0, 5] = torch.tensor([40.0, 20.0, 40.0005, 35.0])
    logits[0, 5] = 12.0
    boxes[0, 6] = torch.tensor([78.0, 20.0, 95.0, 35.0])  # clipped to 78..80
    logits[0, 6] = 11.0
    logits[1, [0, 50, 100, 250]] = torch.tensor([17.5, 19.0, 40.0, 21.0])
    assert torch.sigmoid(logits[0, 3]) == torch.sigmoid(logits[0, 4]) == 1.0
    return boxes, logits


def _d2_filter(boxes, logits, min_size, pre_nms=40, post_nms=30, nms=0.7):
    from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals

    out = find_top_rpn_proposals(list(boxes.split(PER_LEVEL, dim=1)), list(logits.split(PER_LEVEL, dim=1)),
                                 IMAGE_SIZES, nms, pre_nms, post_nms, min_size, training=False)
    return [r.proposal_boxes.tensor for r in out], [r.objectness_logits for r in out]


def _assert_same(ours, ref):
    for (b, s), (rb, rs) in zip(zip(*ours), zip(*ref)):
        assert torch.equal(b, rb)
        assert torch.equal(s, rs)


@pytest.mark.parametrize("min_size", [0.0, 2.0])
def test_detectron2_filter_equals_find_top_rpn_proposals(min_size):
    pytest.importorskip("detectron2", reason=D2_REASON)
    boxes, logits = _crafted()
    rpn = _rpn("detectron2", min_size=min_size).eval()
    ours = rpn.filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    _assert_same(ours, _d2_filter(boxes, logits, min_size))
    kept = ours[0][0]
    assert torch.equal(kept[0], boxes[0, 4])  # logit 25 beats 18 although both sigmoids are 1.0
    assert not (kept == boxes[0, 3]).all(1).any()
    assert ((kept == boxes[0, 5]).all(1).any()) == (min_size == 0)  # 5e-4 px wide: kept by `> 0`
    if min_size == 2:  # exactly 2 px wide after clipping: `> 2` drops it
        assert not ((kept[:, 0] == 78.0) & (kept[:, 2] == 80.0)).any()
    assert torch.isfinite(kept).all()


@pytest.mark.parametrize("min_size", [0.0, 2.0])
def test_torchvision_filter_equals_region_proposal_network(min_size):
    """Non-finite deltas included: torchvision's own checks drop those boxes too (a NaN box fails the size
    test, an infinite centre clips to zero width)."""
    boxes, logits = _crafted()
    rpn = _rpn("torchvision", min_size=min_size).eval()
    ref_rpn = _tv_rpn().eval()
    ref_rpn.min_size = max(min_size, 1e-3)  # torchvision's own 1e-3, or MIN_SIZE when larger
    ours = rpn.filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    ref = ref_rpn.filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    _assert_same(ours, ref)
    kept = ours[0][0]
    assert not (kept == boxes[0, 5]).all(1).any()  # 5e-4 px: under torchvision's floor of 1e-3
    assert ((kept[:, 0] == 78.0) & (kept[:, 2] == 80.0)).any() == (min_size <= 2)  # 2 px wide: `>= 2` keeps it
    assert ours[1][0].max() <= 1.0  # sigmoid scores


def test_the_two_rules_differ_on_the_crafted_boxes():
    boxes, logits = _crafted()
    d2 = _rpn("detectron2").eval().filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    tv = _rpn("torchvision").eval().filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    assert not torch.equal(d2[0][0], tv[0][0])
    assert d2[1][0].max() > 17  # detectron2 returns the logits


def test_nonfinite_logits_are_dropped_under_both_rules():
    """detectron2 drops a proposal with a non-finite logit; torchvision does not check (sigmoid(inf) = 1 is
    kept, sigmoid(-inf) = 0 passes its `>= 0` score test). Ours drops them under both rules: torchvision's
    result on the same input without those rows."""
    boxes, logits = _crafted(nonfinite_deltas=False)
    logits[0, 10], logits[0, 11], logits[1, 20] = float("inf"), float("-inf"), float("nan")
    keep = [torch.ones(boxes.shape[1], dtype=torch.bool) for _ in range(2)]
    keep[0][[10, 11]] = False
    keep[1][20] = False
    everything = sum(PER_LEVEL)  # pre-NMS top-k takes every box: removing rows does not change which are ranked
    ours = _rpn("torchvision", pre_nms=everything).eval().filter_proposals(boxes, logits.reshape(-1, 1),
                                                                          IMAGE_SIZES, PER_LEVEL)
    ref_rpn = _tv_rpn(pre_nms=everything).eval()
    for i in range(2):
        per_level = [int(k.sum()) for k in keep[i].split(PER_LEVEL)]
        ref = ref_rpn.filter_proposals(boxes[i:i + 1, keep[i]], logits[i:i + 1, keep[i]].reshape(-1, 1),
                                       IMAGE_SIZES[i:i + 1], per_level)
        assert torch.equal(ours[0][i], ref[0][0]) and torch.equal(ours[1][i], ref[1][0])
    unchecked = ref_rpn.filter_proposals(boxes, logits.reshape(-1, 1), IMAGE_SIZES, PER_LEVEL)
    assert len(unchecked[0][0]) > len(ours[0][0]) or not torch.equal(unchecked[0][0], ours[0][0])


# ---------------------------------------------------------------------------------------------------- losses
def _loss_inputs(gt=((5.0, 6.0, 40.0, 44.0), (30.0, 10.0, 75.0, 38.0))):
    """Anchors, targets (image 1 has no boxes) and predictions with gradients."""
    g = torch.Generator().manual_seed(7)
    images = ImageList(torch.zeros(2, 3, *IMAGE), IMAGE_SIZES)
    anchors = AnchorGenerator(SIZES, RATIOS, strides=STRIDES, offset=0.5)(
        images, [torch.zeros(2, 4, 8, 10), torch.zeros(2, 4, 4, 5)])
    targets = [{"boxes": torch.tensor(gt)}, {"boxes": torch.zeros(0, 4)}]
    total = 2 * sum(PER_LEVEL)
    objectness = (torch.randn(total, 1, generator=g) * 2).requires_grad_(True)
    deltas = (torch.randn(total, 4, generator=g) * 0.2).requires_grad_(True)
    return anchors, targets, objectness, deltas


def _ours_losses(rpn, anchors, targets, objectness, deltas, seed=11):
    torch.manual_seed(seed)
    labels, matched = rpn.assign_targets_to_anchors(anchors, targets)
    return rpn.losses(objectness, deltas, labels, matched, anchors), labels


def test_sampled_normaliser_equals_torchvision_compute_loss():
    """LOSS_NORMALIZER sampled + SMOOTH_L1_BETA 1/9: torchvision's compute_loss, with the same samples (both
    draw them with torchvision's sampler); BATCH_SIZE_PER_IMAGE 512 is more than either image has labelled."""
    anchors, targets, objectness, deltas = _loss_inputs()
    rpn = _rpn("torchvision", batch_size=512, loss_normalizer="sampled", beta=1 / 9)
    ours, labels = _ours_losses(rpn, anchors, targets, objectness, deltas)
    assert all(int((lab >= 0).sum()) < 512 for lab in labels)
    ref_rpn = _tv_rpn(batch_size=512)
    torch.manual_seed(11)
    labels, matched = ref_rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = ref_rpn.box_coder.encode(matched, anchors)
    ref_obj, ref_box = ref_rpn.compute_loss(objectness, deltas, labels, regression_targets)
    torch.testing.assert_close(ours["loss_objectness"], ref_obj, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours["loss_rpn_box_reg"], ref_box, rtol=1e-6, atol=0)
    assert ref_box > 0
    # gradients reach both predictions
    (ours["loss_objectness"] + ours["loss_rpn_box_reg"]).backward()
    assert objectness.grad.abs().sum() > 0 and deltas.grad.abs().sum() > 0


def test_the_normalisers_differ_when_images_have_few_labelled_anchors():
    anchors, targets, objectness, deltas = _loss_inputs()
    sampled, labels = _ours_losses(_rpn(batch_size=512, loss_normalizer="sampled"), anchors, targets, objectness,
                                   deltas)
    batch, _ = _ours_losses(_rpn(batch_size=512, loss_normalizer="batch_size"), anchors, targets, objectness, deltas)
    n_sampled = sum(int((lab >= 0).sum()) for lab in labels)  # every labelled anchor is sampled here
    assert n_sampled < 2 * 512
    for key in ("loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(batch[key] * (2 * 512), sampled[key] * n_sampled, rtol=1e-5, atol=0)


def _d2_rpn(ours: RPN, batch_size, box_loss_type, beta, loss_weight, bbox_reg_loss_weight, boundary_thresh):
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.matcher import Matcher
    from detectron2.modeling.proposal_generator.rpn import RPN as D2RPN
    from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

    head = StandardRPNHead(in_channels=4, num_anchors=3, conv_dims=[-1])
    head.load_state_dict(_to_d2_head(ours.head.state_dict(), 1))
    return D2RPN(in_features=["p3", "p4"], head=head,
                 anchor_generator=DefaultAnchorGenerator(sizes=[list(s) for s in SIZES],
                                                         aspect_ratios=[list(r) for r in RATIOS], strides=STRIDES,
                                                         offset=0.5),
                 anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
                 box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), batch_size_per_image=batch_size,
                 positive_fraction=0.5, pre_nms_topk=(40, 40), post_nms_topk=(30, 30), nms_thresh=0.7,
                 anchor_boundary_thresh=boundary_thresh,
                 loss_weight={"loss_rpn_cls": loss_weight, "loss_rpn_loc": loss_weight * bbox_reg_loss_weight},
                 box_reg_loss_type=box_loss_type, smooth_l1_beta=beta)


@pytest.mark.parametrize("box_loss_type,beta", [("smooth_l1", 0.0), ("smooth_l1", 0.25), ("giou", 0.0),
                                                ("diou", 0.0), ("ciou", 0.0)])
@pytest.mark.parametrize("batch_size", [512, 32])
def test_batch_size_normaliser_equals_detectron2_losses(box_loss_type, beta, batch_size):
    """LOSS_NORMALIZER batch_size: detectron2's RPN.losses on detectron2's own labels and samples (drawn with the
    same torch.randperm calls), with LOSS_WEIGHT / BBOX_REG_LOSS_WEIGHT; batch 512: fewer labelled anchors than
    that, batch 32: the sampler drops some."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    anchors, targets, objectness, deltas = _loss_inputs()
    kw = dict(batch_size=batch_size, box_loss_type=box_loss_type, beta=beta, loss_weight=0.7,
              bbox_reg_loss_weight=1.3, boundary_thresh=-1.0)
    rpn = _rpn("detectron2", **kw)
    ours, _ = _ours_losses(rpn, anchors, targets, objectness, deltas)
    ref_rpn = _d2_rpn(rpn, **kw)
    gt = [Instances(size, gt_boxes=Boxes(t["boxes"])) for size, t in zip(IMAGE_SIZES, targets)]
    with EventStorage(0):
        torch.manual_seed(11)
        labels, matched = ref_rpn.label_and_sample_anchors([Boxes(anchors[0])], gt)
        ref = ref_rpn.losses([Boxes(anchors[0])], [objectness.reshape(2, -1)], labels, [deltas.reshape(2, -1, 4)],
                             matched)
    torch.testing.assert_close(ours["loss_objectness"], ref["loss_rpn_cls"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["loss_rpn_box_reg"], ref["loss_rpn_loc"], rtol=1e-5, atol=1e-7)
    assert ref["loss_rpn_loc"] > 0


@pytest.mark.parametrize("boundary_thresh", [0.0, 6.0])
def test_boundary_thresh_equals_detectron2(boundary_thresh):
    """BOUNDARY_THRESH >= 0 (detectron2's legacy option): anchors reaching further outside the image (its own
    size, not the padded batch's) are ignored. The whole RPN forward in training, ours against detectron2's
    with the same head weights: proposals and losses."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.structures import Boxes, Instances
    from detectron2.structures import ImageList as D2ImageList
    from detectron2.utils.events import EventStorage

    g = torch.Generator().manual_seed(2)
    feats = {"p3": torch.randn(2, 4, 8, 10, generator=g), "p4": torch.randn(2, 4, 4, 5, generator=g)}
    anchors, targets, _, _ = _loss_inputs()
    rpn = _rpn("detectron2", batch_size=128, boundary_thresh=boundary_thresh).train()
    torch.nn.init.normal_(rpn.head.cls_logits.weight, std=0.5)  # spread the logits: a meaningful NMS order
    ref_rpn = _d2_rpn(rpn, 128, "smooth_l1", 0.0, 1.0, 1.0, boundary_thresh).train()
    torch.manual_seed(11)
    boxes, ours = rpn(ImageList(torch.zeros(2, 3, *IMAGE), IMAGE_SIZES), feats, targets)
    gt = [Instances(size, gt_boxes=Boxes(t["boxes"])) for size, t in zip(IMAGE_SIZES, targets)]
    with EventStorage(0):
        torch.manual_seed(11)
        proposals, ref = ref_rpn(D2ImageList(torch.zeros(2, 3, *IMAGE), IMAGE_SIZES), feats, gt)
    torch.testing.assert_close(ours["loss_objectness"], ref["loss_rpn_cls"], rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["loss_rpn_box_reg"], ref["loss_rpn_loc"], rtol=1e-5, atol=1e-7)
    for b, p in zip(boxes, proposals):
        torch.testing.assert_close(b, p.proposal_boxes.tensor, rtol=0, atol=1e-4)
    # the option bites: without it, anchors beyond the edge are labelled and the losses change
    torch.manual_seed(11)
    off = _rpn("detectron2", batch_size=128).train()
    off.load_state_dict(rpn.state_dict())
    _, without = off(ImageList(torch.zeros(2, 3, *IMAGE), IMAGE_SIZES), feats, targets)
    assert not torch.isclose(without["loss_objectness"], ours["loss_objectness"])
    # and the ignored anchors are those detectron2's inside_box rejects
    labels, _ = rpn.assign_targets_to_anchors(anchors, targets)
    for lab, anc, size in zip(labels, anchors, IMAGE_SIZES):
        ignored = rpn._ignore_outside(lab, anc, size) == -1
        assert torch.equal(ignored & (lab != -1), ~Boxes(anc).inside_box(size, boundary_thresh) & (lab != -1))


# ---------------------------------------------------------------------------------------------------- head
def _to_d2_head(state: dict, num_convs: int) -> dict:
    """Our (torchvision's) RPN head names -> detectron2's StandardRPNHead names."""
    out = {}
    for k, v in state.items():
        if k.startswith("conv."):
            i, rest = k.split(".")[1], k.split(".", 3)[3]
            out[f"conv.{rest}" if num_convs == 1 else f"conv.conv{i}.{rest}"] = v
        else:
            out[k.replace("cls_logits", "objectness_logits").replace("bbox_pred", "anchor_deltas")] = v
    return out


@pytest.mark.parametrize("conv_dims", [[-1], [6], [-1, -1], [6, 10], [8, -1, 5]])
def test_head_with_conv_dims_equals_detectron2(conv_dims):
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.modeling.proposal_generator.rpn import StandardRPNHead

    ours = RPNHead(4, 3, conv_dims=conv_dims)
    ref = StandardRPNHead(in_channels=4, num_anchors=3, conv_dims=conv_dims)
    mapped = _to_d2_head(ours.state_dict(), len(conv_dims))
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    mapped = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in mapped.items()}  # not the zero biases
    ref.load_state_dict(mapped)
    names = dict(zip(ours.state_dict(), _to_d2_head(ours.state_dict(), len(conv_dims))))  # ours -> detectron2's
    ours.load_state_dict({k: mapped[names[k]] for k in names})
    feats = [torch.randn(2, 4, 6, 7, generator=g), torch.randn(2, 4, 3, 4, generator=g)]
    for a, b in zip(ours(feats), ref(feats)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv_dims", [[-1, -1], [24, 40]])
def test_head_init_is_detectron2s(conv_dims):
    """Every conv N(0, 0.01), biases 0, in the rebuilt stacks too; torchvision's module names."""
    head = RPNHead(32, 3, conv_dims=conv_dims)
    names = [k for k, _ in head.named_parameters()]
    assert names == [f"conv.{i}.0.{p}" for i in range(len(conv_dims)) for p in ("weight", "bias")] + [
        "cls_logits.weight", "cls_logits.bias", "bbox_pred.weight", "bbox_pred.bias"]
    for m in head.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert torch.count_nonzero(m.bias) == 0
            if m.weight.numel() > 2000:
                assert math.isclose(float(m.weight.detach().std()), 0.01, rel_tol=0.1)


def test_head_refuses_non_positive_widths():
    with pytest.raises(ValueError, match="MODEL.RPN.CONV_DIMS"):
        RPNHead(4, 3, conv_dims=[0])
    with pytest.raises(ValueError, match="MODEL.RPN.CONV_DIMS"):
        RPNHead(4, 3, conv_dims=[])
