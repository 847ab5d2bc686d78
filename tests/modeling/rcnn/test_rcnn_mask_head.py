"""rcnn/mask_head.py and the mask branch of the RoI heads: the builders give detectron2's widths in torchvision's
modules; the targets and the paste are torchvision's / detectron2's own functions' under each MODEL.RCNN_EDGE_RULES
(compared with those functions; detectron2's skipped when it does not import); MASK_ON False builds the very
Faster R-CNN it built before (same seeded weights); bad gt masks, test-time augmentation and export are refused
naming the field or key."""
import pytest
import torch
from _tools import TINY_FRCNN_MODEL
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.modeling import build_model
from resnet_backbone.modeling.rcnn.mask_head import mask_loss, mask_targets, paste_masks
from resnet_backbone.structures import Instances

MASK = ["MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_HEADS.NUM_CLASSES", "3"]


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list([*TINY_FRCNN_MODEL, "MODEL.ROI_HEADS.NUM_CLASSES", "3", *opts])
    return cfg


def _gt(size=(64, 96)):
    masks = torch.zeros(2, *size, dtype=torch.uint8)
    masks[0, 10:30, 12:41] = 1
    masks[1, 31:60, 50:90] = 1
    masks[1, 40:50, 60:70] = 0  # a hole
    boxes = torch.tensor([[12.0, 10.0, 41.0, 30.0], [50.0, 31.0, 90.0, 60.0]])
    return masks, boxes


def _rois(g):
    xy = torch.rand(12, 2, generator=g) * torch.tensor([80.0, 50.0])
    wh = 2 + torch.rand(12, 2, generator=g) * 40
    return torch.cat([xy, xy + wh], 1)


def test_the_mask_branch_has_detectron2s_widths_in_torchvisions_modules():
    model = build_model(_cfg(*MASK, "MODEL.ROI_MASK_HEAD.NORM", "GN"))
    heads = model.roi_heads
    assert len(heads.mask_head) == 4 and heads.mask_roi_pool.output_size == (14, 14)
    conv = heads.mask_head[0][0]
    assert (conv.in_channels, conv.out_channels, conv.bias) == (32, 16, None)  # FPN width in; a norm: no bias
    assert isinstance(heads.mask_head[0][1], torch.nn.GroupNorm)
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 4  # K + 1 (background 0, unused)
    assert heads.mask_roi_pool.aligned and heads.mask_roi_pool.sampling_ratio == 0  # ROIAlignV2, adaptive
    agnostic = build_model(_cfg(*MASK, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True",
                                "MODEL.ROI_MASK_HEAD.NUM_CONV", "0", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign",
                                "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "7"))
    assert len(agnostic.roi_heads.mask_head) == 0 and agnostic.roi_heads.mask_roi_pool.output_size == (7, 7)
    assert not agnostic.roi_heads.mask_roi_pool.aligned
    assert agnostic.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    assert agnostic.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 1


def test_mask_on_false_builds_the_same_seeded_faster_rcnn():
    """The mask branch is built after the box head's init: every other weight draws the same numbers."""
    torch.manual_seed(0)
    plain = build_model(_cfg()).state_dict()
    torch.manual_seed(0)
    masked = build_model(_cfg(*MASK)).state_dict()
    assert not any("mask" in k for k in plain)
    assert all(torch.equal(plain[k], masked[k]) for k in plain)


def test_targets_are_torchvisions_and_detectron2s():
    masks, _ = _gt()
    g = torch.Generator().manual_seed(0)
    rois = _rois(g)
    idx = torch.randint(0, 2, (12,), generator=g)
    ours = mask_targets(masks, rois, idx, 28, "torchvision")
    torch.testing.assert_close(ours, project_masks_on_boxes(masks, rois, idx, 28), rtol=0, atol=0)
    assert ((ours > 0) & (ours < 1)).any()  # soft targets
    d2 = mask_targets(masks, rois, idx, 28, "detectron2")
    assert set(d2.unique().tolist()) <= {0.0, 1.0} and not torch.equal(d2, (ours >= 0.5).float())
    structures = pytest.importorskip("detectron2.structures", reason="detectron2 is not importable (PYTHONPATH)")
    ref = structures.BitMasks(masks[idx].bool()).crop_and_resize(rois, 28)
    assert torch.equal(d2, ref.float())


def test_loss_uses_the_gt_class_channel_or_the_agnostic_one():
    masks, boxes = _gt()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 28, 28, generator=g)
    target = mask_targets(masks, boxes, torch.tensor([0, 1]), 28, "torchvision")
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 1], [3, 1]], target)
    got = mask_loss(logits, [boxes], [masks], [torch.tensor([3, 1])], [torch.tensor([0, 1])], "torchvision")
    torch.testing.assert_close(got, want)
    agnostic = mask_loss(logits[:, :1], [boxes], [masks], [torch.tensor([3, 1])], [torch.tensor([0, 1])],
                         "torchvision")
    torch.testing.assert_close(agnostic, torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target))
    empty = mask_loss(logits[:0].requires_grad_(), [boxes[:0]], [masks], [torch.tensor([], dtype=torch.int64)],
                      [torch.tensor([], dtype=torch.int64)], "detectron2")
    assert float(empty.detach()) == 0 and empty.requires_grad


def test_paste_is_torchvisions_and_detectron2s():
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(12, 28, 28, generator=g)
    boxes = _rois(g).clamp(max=95)
    tv = paste_masks_in_image(probs[:, None], boxes, (64, 96))[:, 0]
    torch.testing.assert_close(paste_masks(probs, boxes, (64, 96), "torchvision", None), tv, rtol=0, atol=0)
    assert torch.equal(paste_masks(probs, boxes, (64, 96), "torchvision"), tv >= 0.5)
    ours = paste_masks(probs, boxes, (64, 96), "detectron2")
    assert ours.dtype == torch.bool and not torch.equal(ours, tv >= 0.5)
    mask_ops = pytest.importorskip("detectron2.layers.mask_ops", reason="detectron2 is not importable (PYTHONPATH)")
    assert torch.equal(ours, mask_ops.paste_masks_in_image(probs, boxes, (64, 96), threshold=0.5))


def test_eval_output_masks_are_bool_in_the_original_image():
    model = build_model(_cfg(*MASK)).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), "height": 128, "width": 192}])
    assert out[0]["masks"].dtype == torch.bool and out[0]["masks"].shape == (len(out[0]["boxes"]), 128, 192)
    assert "mask_probs" not in out[0]


def test_training_needs_gt_masks_of_the_images_size():
    model = build_model(_cfg(*MASK)).train()
    masks, boxes = _gt()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    inst = Instances((64, 96), gt_boxes=boxes, gt_classes=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"needs field 'instances\.gt_masks'"):
        model([{"image": image, "instances": inst, "file_name": "a.jpg"}])
    inst.gt_masks = masks[:, :32]
    with pytest.raises(ValueError, match=r"a\.jpg.*'instances\.gt_masks' is \(2, 32, 96\); expected a \(2, 64, 96\)"):
        model([{"image": image, "instances": inst, "file_name": "a.jpg"}])
    inst.gt_masks = masks
    losses = model([{"image": image, "instances": inst}])
    assert float(losses["loss_mask"].detach()) > 0


def test_test_time_augmentation_and_export_refuse_masks():
    from resnet_backbone.export.exporter import check_exportable
    from resnet_backbone.modeling.meta_arch.tta import build_tta_model

    cfg = _cfg(*MASK)
    model = build_model(cfg)
    cfg.TEST.AUG.ENABLED = True
    with pytest.raises(ConfigError, match=r"^TEST\.AUG\.ENABLED: .*MODEL\.MASK_ON"):
        build_tta_model(cfg, model)
    cfg.TEST.AUG.ENABLED = False
    with pytest.raises(ConfigError, match=r"^MODEL\.MASK_ON = True cannot be exported"):
        check_exportable(cfg, "onnx")
