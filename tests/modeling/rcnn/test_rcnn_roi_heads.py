"""rcnn.RoIHeads and its box head against the references, rule by rule:

- inference under RCNN_EDGE_RULES "detectron2" == detectron2's FastRCNNOutputLayers.inference
  (fast_rcnn_inference_single_image), under "torchvision" == torchvision's RoIHeads.postprocess_detections,
  with a detection thinner than 1e-2 px (kept by detectron2, dropped by torchvision) and a non-finite row;
- training samples with PROPOSAL_APPEND_GT True / False == detectron2's label_and_sample_proposals;
- the losses for smooth_l1 (beta 0, 1/9) and giou / diou / ciou == detectron2's FastRCNNOutputLayers.losses,
  beta 1/9 == torchvision's fastrcnn_loss, and the empty-sample case;
- the box head for NUM_CONV / NUM_FC / NORM == detectron2's FastRCNNConvFCHead (same init, same outputs) with
  its parameters renamed to torchvision's module names (test_rcnn_build.py pins those names).

Class layout: ours has background at 0 and class c at c + 1 (torchvision); detectron2 has class c at c and
background last, and K deltas (no background row). The tests move the columns to compare.
"""
import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import fastrcnn_loss

from resnet_backbone.config import get_cfg
from resnet_backbone.layers import ShapeSpec
from resnet_backbone.modeling.rcnn import build_roi_heads
from resnet_backbone.modeling.rcnn.roi_heads import build_box_head, init_box_head

D2_REASON = "detectron2 is not installed (run with PYTHONPATH=/tmp/d2/src:/tmp/d2/site for the detectron2 checks)"
K = 3  # foreground classes
CHANNELS = 4
IMAGE_SIZES = [(96, 128), (80, 100)]
SHAPES = {f"p{i}": ShapeSpec(channels=CHANNELS, stride=2 ** i) for i in range(2, 7)}
TO_D2 = [*range(1, K + 1), 0]  # our score columns in detectron2's order (background last)


def _cfg(**overrides):
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", K, "MODEL.ROI_BOX_HEAD.FC_DIM", 16,
                         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 24])
    cfg.merge_from_list([v for kv in overrides.items() for v in kv])
    return cfg


def _heads(**overrides):
    return build_roi_heads(_cfg(**overrides), SHAPES)


# ------------------------------------------------------------------------------------------------ inference
def _predictions(seed=0, per_image=(30, 25)):
    """Proposals, logits (R, K + 1) and deltas (R, 4 (K + 1)), with a proposal 0.004 px wide, zero deltas and a
    confident class 1 (a detection 0.004 px wide), and a row of NaN deltas (image 0, row 1)."""
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for n, (h, w) in zip(per_image, IMAGE_SIZES):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 4 + torch.rand(n, 2, generator=g) * 40
        proposals.append(torch.cat([xy, xy + wh], 1))
    proposals[0][0] = torch.tensor([50.0, 20.0, 50.004, 60.0])
    total = sum(per_image)
    logits = torch.randn(total, K + 1, generator=g) * 2
    deltas = torch.randn(total, 4 * (K + 1), generator=g) * 0.5
    logits[0] = torch.tensor([0.0, 9.0, 0.0, 0.0])
    deltas[0] = 0.0
    deltas[1] = float("nan")
    return proposals, logits, deltas


def _thin(boxes):
    return ((boxes[:, 2] - boxes[:, 0]) < 1e-2).any()


@pytest.mark.parametrize("topk", [20, 200])
def test_detectron2_inference_equals_fast_rcnn_inference(topk):
    """topk 20: the cut after NMS; 200: every detection above SCORE_THRESH_TEST shows."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.structures import Boxes, Instances

    heads = _heads(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05, "TEST.DETECTIONS_PER_IMAGE": topk})
    proposals, logits, deltas = _predictions()
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, IMAGE_SIZES)
    ref_layers = FastRCNNOutputLayers(D2ShapeSpec(channels=16), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                                      num_classes=K, test_score_thresh=0.05, test_nms_thresh=0.5,
                                      test_topk_per_image=topk)
    ref, _ = ref_layers.inference((logits[:, TO_D2], deltas[:, 4:]),
                                  [Instances(s, proposal_boxes=Boxes(p)) for s, p in zip(IMAGE_SIZES, proposals)])
    for b, s, c, r in zip(boxes, scores, labels, ref):
        assert len(b) == len(r) > 0
        torch.testing.assert_close(b, r.pred_boxes.tensor, rtol=0, atol=1e-4)
        torch.testing.assert_close(s, r.scores, rtol=1e-6, atol=1e-7)
        assert torch.equal(c - 1, r.pred_classes)
    assert _thin(boxes[0])  # detectron2 keeps the 0.004 px detection
    assert torch.isfinite(boxes[0]).all()


@pytest.mark.parametrize("topk", [20, 200])
def test_torchvision_inference_equals_postprocess_detections(topk):
    """Under torchvision's rules: its postprocess_detections itself; the 0.004 px detection is dropped (its
    remove_small_boxes(1e-2)), and so is the NaN row (it fails that size test too)."""
    overrides = {"MODEL.RCNN_EDGE_RULES": "torchvision", "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
                 "TEST.DETECTIONS_PER_IMAGE": topk}
    heads = _heads(**overrides)
    ref_heads = TVRoIHeads(None, None, None, 0.5, 0.5, 24, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, topk)
    proposals, logits, deltas = _predictions()
    ours = heads.postprocess_detections(logits, deltas, proposals, IMAGE_SIZES)
    ref = ref_heads.postprocess_detections(logits, deltas, proposals, IMAGE_SIZES)
    for a, b in zip(ours, ref):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert not _thin(ours[0][0])
    detectron2_rules = _heads(**dict(overrides, **{"MODEL.RCNN_EDGE_RULES": "detectron2"}))
    assert _thin(detectron2_rules.postprocess_detections(logits, deltas, proposals, IMAGE_SIZES)[0][0])


# ------------------------------------------------------------------------------------------------ training
def _training_inputs(seed=1):
    """Proposals jittered around the gt boxes (some >= 0.5 IoU, some not) plus random ones."""
    g = torch.Generator().manual_seed(seed)
    gts = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 30.0, 120.0, 90.0]]), torch.tensor([[5.0, 5.0, 70.0, 60.0]])]
    classes = [torch.tensor([0, 2]), torch.tensor([1])]
    proposals = []
    for gt, (h, w) in zip(gts, IMAGE_SIZES):
        jitter = gt.repeat(8, 1) + torch.randn(8 * len(gt), 4, generator=g) * 8
        xy = torch.rand(20, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        rand = torch.cat([xy, xy + 5 + torch.rand(20, 2, generator=g) * 40], 1)
        p = torch.cat([jitter, rand])
        p = torch.stack([p[:, 0], p[:, 1], torch.maximum(p[:, 2], p[:, 0] + 1), torch.maximum(p[:, 3], p[:, 1] + 1)], 1)
        proposals.append(p)
    targets = [{"boxes": b, "labels": c + 1} for b, c in zip(gts, classes)]
    return proposals, targets, gts, classes


def _rows(boxes, labels):
    """(box, label) rows in a canonical order: the two libraries return their samples in different orders."""
    rows = torch.cat([boxes, labels.to(boxes.dtype)[:, None]], 1)
    return rows[torch.argsort(rows[:, 0] * 1e6 + rows[:, 1] * 1e3 + rows[:, 4])]


def _d2_roi_heads(append_gt: bool, batch_size: int):
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.roi_heads import build_roi_heads as d2_build_roi_heads

    cfg = d2_get_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = batch_size
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = append_gt
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    return d2_build_roi_heads(cfg, {k: D2ShapeSpec(channels=v.channels, stride=v.stride) for k, v in SHAPES.items()})


@pytest.mark.parametrize("batch_size", [24, 512])
@pytest.mark.parametrize("append_gt", [True, False])
def test_training_samples_equal_detectron2(append_gt, batch_size):
    """PROPOSAL_APPEND_GT: the gt boxes join the candidates (both libraries) or not (detectron2 only; torchvision
    always appends). Same matcher, same sampler draws: the same sampled (box, class) set, whether the sampler
    drops candidates (24 per image) or takes them all (512)."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    proposals, targets, gts, classes = _training_inputs()
    heads = _heads(**{"MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": append_gt,
                      "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": batch_size})
    torch.manual_seed(5)
    ours_props, _, ours_labels, _ = heads.select_training_samples([p.clone() for p in proposals], targets)
    ref_heads = _d2_roi_heads(append_gt, batch_size)
    d2_props = [Instances(s, proposal_boxes=Boxes(p.clone()), objectness_logits=torch.zeros(len(p)))
                for s, p in zip(IMAGE_SIZES, proposals)]
    d2_gt = [Instances(s, gt_boxes=Boxes(b), gt_classes=c) for s, b, c in zip(IMAGE_SIZES, gts, classes)]
    with EventStorage(0):
        torch.manual_seed(5)
        ref = ref_heads.label_and_sample_proposals(d2_props, d2_gt)
    for boxes, labels, r, gt, candidates in zip(ours_props, ours_labels, ref, gts, proposals):
        ref_labels = torch.where(r.gt_classes == K, 0, r.gt_classes + 1)
        assert torch.equal(_rows(boxes, labels), _rows(r.proposal_boxes.tensor, ref_labels))
        assert (labels > 0).any()
        if batch_size == 512:  # every candidate sampled: the gt boxes are there iff appended
            assert len(boxes) == len(candidates) + (len(gt) if append_gt else 0)
            assert bool((boxes[:, None, :] == gt[None]).all(-1).any(0).all()) == append_gt


def _d2_losses(logits, deltas, proposals, matched_idxs, labels, gts, box_loss_type, beta, weight):
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    layers = FastRCNNOutputLayers(D2ShapeSpec(channels=16), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                                  num_classes=K, smooth_l1_beta=beta, box_reg_loss_type=box_loss_type,
                                  loss_weight={"loss_box_reg": weight})
    instances = []
    for size, p, m, lab, gt in zip(IMAGE_SIZES, proposals, matched_idxs, labels, gts):
        gt_boxes = gt[m] if len(gt) else torch.zeros(len(p), 4)
        instances.append(Instances(size, proposal_boxes=Boxes(p), gt_boxes=Boxes(gt_boxes),
                                   gt_classes=torch.where(lab == 0, K, lab - 1)))
    with EventStorage(0):
        return layers.losses((logits[:, TO_D2], deltas[:, 4:]), instances)


def _sampled(heads, seed=5):
    proposals, targets, gts, _ = _training_inputs()
    torch.manual_seed(seed)
    props, matched, labels, regression_targets = heads.select_training_samples(proposals, targets)
    g = torch.Generator().manual_seed(9)
    total = sum(len(p) for p in props)
    logits = (torch.randn(total, K + 1, generator=g) * 2).requires_grad_(True)
    deltas = (torch.randn(total, 4 * (K + 1), generator=g) * 0.3).requires_grad_(True)
    return props, matched, labels, regression_targets, targets, gts, logits, deltas


@pytest.mark.parametrize("box_loss_type,beta", [("smooth_l1", 0.0), ("smooth_l1", 1 / 9), ("giou", 0.0),
                                                ("diou", 0.0), ("ciou", 0.0)])
def test_losses_equal_detectron2(box_loss_type, beta):
    pytest.importorskip("detectron2", reason=D2_REASON)
    heads = _heads(**{"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": box_loss_type,
                      "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": beta, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT": 1.5})
    props, matched, labels, _, targets, gts, logits, deltas = _sampled(heads)
    ours = heads.losses(logits, deltas, props, matched, labels, targets)
    ref = _d2_losses(logits, deltas, props, matched, labels, gts, box_loss_type, beta, 1.5)
    torch.testing.assert_close(ours["loss_classifier"], ref["loss_cls"], rtol=1e-6, atol=0)
    torch.testing.assert_close(ours["loss_box_reg"], ref["loss_box_reg"], rtol=1e-5, atol=1e-7)
    assert ref["loss_box_reg"] > 0
    ours_grad = torch.autograd.grad(ours["loss_box_reg"], deltas, retain_graph=True)[0]
    ref_grad = torch.autograd.grad(ref["loss_box_reg"], deltas)[0]
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_beta_one_ninth_equals_torchvision_fastrcnn_loss():
    heads = _heads(**{"MODEL.RCNN_EDGE_RULES": "torchvision", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 1 / 9})
    props, matched, labels, regression_targets, targets, _, logits, deltas = _sampled(heads)
    ours = heads.losses(logits, deltas, props, matched, labels, targets)
    ref_cls, ref_box = fastrcnn_loss(logits, deltas, labels, regression_targets)
    torch.testing.assert_close(ours["loss_classifier"], ref_cls, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours["loss_box_reg"], ref_box, rtol=1e-5, atol=0)
    # and beta 0 (detectron2's default, plain L1) is another loss
    l1 = _heads().losses(logits, deltas, props, matched, labels, targets)["loss_box_reg"]
    assert not torch.isclose(l1, ref_box)


def test_empty_sample_gives_zero_losses_that_backpropagate():
    """No proposals and no gt boxes (nothing to sample): zero losses that still reach the predictor, as
    detectron2's (its cross_entropy returns input.sum() * 0 on empty targets)."""
    heads = _heads(**{"MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": False}).train()
    g = torch.Generator().manual_seed(0)
    feats = {f"p{i}": torch.randn(1, CHANNELS, 128 // 2 ** i, 128 // 2 ** i, generator=g, requires_grad=True)
             for i in range(2, 7)}
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    _, losses = heads(feats, [torch.zeros(0, 4)], [(128, 128)], targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    for v in losses.values():
        assert v.item() == 0.0 and v.requires_grad
    sum(losses.values()).backward()
    assert heads.box_predictor.cls_score.weight.grad is not None


def test_empty_sample_detectron2_losses_are_zero_too():
    pytest.importorskip("detectron2", reason=D2_REASON)
    ref = _d2_losses(torch.zeros(0, K + 1, requires_grad=True), torch.zeros(0, 4 * (K + 1), requires_grad=True),
                     [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)],
                     [torch.zeros(0, 4)], "smooth_l1", 0.0, 1.0)
    assert ref["loss_cls"].item() == 0.0 and ref["loss_box_reg"].item() == 0.0


# ------------------------------------------------------------------------------------------------ box head
def _head_names(num_conv: int, num_fc: int, norm: str) -> dict[str, str]:
    """detectron2's FastRCNNConvFCHead parameter / buffer prefixes -> ours (torchvision's names)."""
    names = {}
    for i in range(num_conv):
        names[f"conv{i + 1}."] = f"{i}.0."
        if norm:
            names[f"conv{i + 1}.norm."] = f"{i}.1."
    for j in range(num_fc):
        names[f"fc{j + 1}."] = f"fc{6 + j}." if (num_conv, num_fc) == (0, 2) else f"{num_conv + 1 + 2 * j}."
    return names


def _rename(state: dict, names: dict) -> dict:
    out = {}
    for k, v in state.items():
        prefix = max((p for p in names if k.startswith(p)), key=len)
        out[names[prefix] + k[len(prefix):]] = v
    return out


@pytest.mark.parametrize("num_conv,num_fc,norm", [(0, 2, ""), (4, 1, "BN"), (2, 1, "GN"), (1, 2, "FrozenBN"),
                                                  (2, 0, ""), (0, 1, "")])
def test_box_head_equals_detectron2(num_conv, num_fc, norm):
    """Same init under the same seed (convs kaiming-normal fan_out, fcs kaiming-uniform a=1), the same
    parameters under torchvision's names, the same outputs (BatchNorm in eval, with running statistics)."""
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead as D2Head

    torch.manual_seed(0)
    ours, out_dim = build_box_head(8, 7, num_conv, 32, num_fc, 24, norm)
    init_box_head(ours)
    torch.manual_seed(0)
    ref = D2Head(D2ShapeSpec(channels=8, height=7, width=7), conv_dims=[32] * num_conv, fc_dims=[24] * num_fc,
                 conv_norm=norm)
    ref_state = _rename(ref.state_dict(), _head_names(num_conv, num_fc, norm))
    ours_state = ours.state_dict()
    assert list(ref_state) == list(ours_state)
    for k in ours_state:
        if num_conv == 0 or ours_state[k].dim() < 2:  # fc-only heads draw the same numbers; biases / norms equal
            assert torch.equal(ours_state[k], ref_state[k]), k
        else:  # torchvision's conv head draws an init of its own first: compare the distributions
            ratio = float(ours_state[k].std() / ref_state[k].std())
            assert abs(ratio - 1) < 0.1, (k, ratio)
            assert abs(float(ours_state[k].mean())) < 0.2 * float(ref_state[k].std())
    # random statistics and affine terms, then the outputs
    g = torch.Generator().manual_seed(1)
    for name, t in ref.state_dict().items():
        if t.is_floating_point() and ("norm" in name or name.endswith("bias")):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "var" in name or "norm.weight" in name
                    else torch.randn(t.shape, generator=g) * 0.1)
    ours.load_state_dict(_rename(ref.state_dict(), _head_names(num_conv, num_fc, norm)))
    ours.eval()
    ref.eval()
    x = torch.randn(5, 8, 7, 7, generator=g)
    y = ours(x)
    assert y.shape == (5, out_dim)
    torch.testing.assert_close(y, ref(x).flatten(1), rtol=1e-5, atol=1e-6)

