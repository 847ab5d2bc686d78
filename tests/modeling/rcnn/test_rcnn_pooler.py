"""The box pooler of rcnn.build_box_pooler: the level rule of each RCNN_EDGE_RULES value against its reference
(detectron2's assign_boxes_to_levels, torchvision's LevelMapper), a box on which the two rules disagree, and
aligned (ROIAlignV2) pooling against torchvision's roi_align(aligned=True) and detectron2's ROIPooler, on the
threaded and the serial path."""
import math

import pytest
import torch
from _threads import num_threads
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

from resnet_backbone.layers import roi_align as roi_align_module
from resnet_backbone.modeling.rcnn.roi_heads import Detectron2LevelMapper, build_box_pooler

D2_REASON = "detectron2 is not installed (run with PYTHONPATH=/tmp/d2/src:/tmp/d2/site for the detectron2 checks)"
NAMES = ["p2", "p3", "p4", "p5"]
STRIDES = [4, 8, 16, 32]
# sqrt(area) 223.99995: log2(s / 224) = -3.2e-7. detectron2: floor(4 + log2(s / 224 + 1e-8)) = 3;
# torchvision: floor(4 + log2(s / 224) + 1e-6) = 4
EDGE_SIDE = 223.99995


def _boxes(num_images=2, per_image=40, size=256, seed=0):
    """Log-uniform sides from 2 px to 1.5 x the image, so every level gets RoIs; plus the sides at each level
    boundary (112, 224, 448) and the edge box."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_images):
        xy = torch.rand(per_image, 2, generator=g) * size * 0.5
        side = torch.exp(math.log(2) + torch.rand(per_image, 1, generator=g) * math.log(size * 1.5 / 2))
        wh = side * torch.exp((torch.rand(per_image, 2, generator=g) - 0.5) * 0.6)
        out.append(torch.cat([xy, xy + wh], 1))
    special = torch.tensor([[0.0, 0.0, 112.0, 112.0], [3.0, 5.0, 227.0, 229.0], [0.0, 0.0, 448.0, 448.0],
                            [10.0, 10.0, 10.0 + EDGE_SIDE, 10.0 + EDGE_SIDE], [1.0, 1.0, 1.5, 1.25]])
    out[0] = torch.cat([out[0], special])
    return out


def _features(num_images=2, size=256, channels=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = {n: torch.randn(num_images, channels, size // s, size // s, generator=g) for n, s in zip(NAMES, STRIDES)}
    feats["p6"] = torch.randn(num_images, channels, size // 64, size // 64, generator=g)  # not pooled
    return feats


def test_edge_box_lands_on_different_levels():
    """The rules differ only in where the epsilon goes; the edge box is where that shows."""
    box = [torch.tensor([[10.0, 10.0, 10.0 + EDGE_SIDE, 10.0 + EDGE_SIDE]])]
    assert 223.9999 < float(torch.sqrt((box[0][:, 2:] - box[0][:, :2]).prod(1))) < 224.0
    d2_rule = build_box_pooler(NAMES, STRIDES, 7, 0, aligned=True, edge_rules="detectron2").map_levels
    tv_rule = build_box_pooler(NAMES, STRIDES, 7, 0, aligned=False, edge_rules="torchvision").map_levels
    assert d2_rule(box).tolist() == [1]  # p3
    assert tv_rule(box).tolist() == [2]  # p4
    assert LevelMapper(2, 5)(box).tolist() == [2]


def test_torchvision_rule_equals_level_mapper():
    boxes = _boxes()
    pooler = build_box_pooler(NAMES, STRIDES, 7, 2, aligned=False, edge_rules="torchvision")
    ref = LevelMapper(2, 5, canonical_scale=224, canonical_level=4)(boxes)
    ours = pooler.map_levels(boxes)
    assert torch.equal(ours.to(torch.int64), ref.to(torch.int64))
    assert set(ours.tolist()) == {0, 1, 2, 3}
    assert pooler.scales == [0.25, 0.125, 0.0625, 0.03125]


def test_torchvision_rules_pool_as_multiscale_roi_align():
    """RCNN_EDGE_RULES torchvision + POOLER_TYPE ROIAlign: torchvision's MultiScaleRoIAlign itself."""
    feats, boxes, shapes = _features(), _boxes(), [(256, 256)] * 2
    ours = build_box_pooler(NAMES, STRIDES, 7, 2, aligned=False, edge_rules="torchvision")
    ref = MultiScaleRoIAlign(NAMES, output_size=7, sampling_ratio=2)
    with torch.no_grad():
        assert torch.equal(ours(feats, boxes, shapes), ref(feats, boxes, shapes))


def test_detectron2_rule_equals_assign_boxes_to_levels():
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    boxes = _boxes()
    ref = assign_boxes_to_levels([Boxes(b) for b in boxes], 2, 5, 224, 4)
    ours = build_box_pooler(NAMES, STRIDES, 7, 0, aligned=True, edge_rules="detectron2").map_levels(boxes)
    assert torch.equal(ours, ref)
    assert set(ours.tolist()) == {0, 1, 2, 3}
    # and on other pyramids (min / max level from the strides)
    ref = assign_boxes_to_levels([Boxes(b) for b in boxes], 3, 6, 224, 4)
    assert torch.equal(Detectron2LevelMapper(3, 6)(boxes), ref)


def _aligned_reference(feats, boxes, sampling_ratio):
    """torchvision's roi_align(aligned=True), level by level, with detectron2's level rule (written out here:
    the test above pins it to detectron2's function)."""
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    sizes = torch.sqrt(torch.cat([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes]))
    levels = (torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(2, 5) - 2).to(torch.int64)
    out = torch.zeros(len(rois), feats["p2"].shape[1], 7, 7)
    for lvl, (name, stride) in enumerate(zip(NAMES, STRIDES)):
        idx = torch.where(levels == lvl)[0]
        out[idx] = roi_align(feats[name], rois[idx], 7, 1.0 / stride, sampling_ratio, aligned=True)
    return out


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_aligned_pooling_equals_roi_align_aligned(threads, sampling_ratio, monkeypatch):
    """POOLER_TYPE ROIAlignV2: the half-pixel shift reaches the kernel on both paths (threads 1: serial,
    torchvision's own loop; threads 2: the RoIs shared over the pool)."""
    used = []
    real = roi_align_module._executor
    monkeypatch.setattr(roi_align_module, "_executor", lambda n: used.append(n) or real(n))
    feats, boxes = _features(), _boxes()
    pooler = build_box_pooler(NAMES, STRIDES, 7, sampling_ratio, aligned=True, edge_rules="detectron2")
    with num_threads(threads), torch.inference_mode():
        ours = pooler(feats, boxes, [(256, 256)] * 2)
    assert used == ([2] if threads == 2 else [])
    expected = _aligned_reference(feats, boxes, sampling_ratio)
    assert torch.equal(ours, expected)
    # not a vacuous match: aligned=False pools other values
    assert not torch.allclose(ours, build_box_pooler(NAMES, STRIDES, 7, sampling_ratio, aligned=False,
                                                     edge_rules="detectron2")(feats, boxes, [(256, 256)] * 2))


@pytest.mark.parametrize("threads", [1, 2])
def test_aligned_pooling_gradients_equal_roi_align_aligned(threads, monkeypatch):
    """Training: the sparse-product backward with the half-pixel shift == autograd through roi_align."""
    calls = []
    real = roi_align_module.roi_align_backward
    monkeypatch.setattr(roi_align_module, "roi_align_backward", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    feats, boxes = _features(), _boxes()
    ours_in = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    ref_in = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    grad = torch.randn(sum(len(b) for b in boxes), 3, 7, 7, generator=torch.Generator().manual_seed(5))
    pooler = build_box_pooler(NAMES, STRIDES, 7, 0, aligned=True, edge_rules="detectron2")
    with num_threads(threads):
        ours = pooler(ours_in, boxes, [(256, 256)] * 2)
        (ours * grad).sum().backward()
    assert calls == [True]  # the sparse backward ran, with aligned=True
    ref = _aligned_reference(ref_in, boxes, 0)
    (ref * grad).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for name in NAMES:
        torch.testing.assert_close(ours_in[name].grad, ref_in[name].grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_aligned_pooling_equals_detectron2_roi_pooler(threads):
    pytest.importorskip("detectron2", reason=D2_REASON)
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    feats, boxes = _features(), _boxes()
    ref = ROIPooler(7, [1.0 / s for s in STRIDES], 0, "ROIAlignV2")([feats[n] for n in NAMES],
                                                                    [Boxes(b) for b in boxes])
    pooler = build_box_pooler(NAMES, STRIDES, 7, 0, aligned=True, edge_rules="detectron2")
    with num_threads(threads), torch.inference_mode():
        ours = pooler(feats, boxes, [(256, 256)] * 2)
    assert torch.equal(ours, ref)
