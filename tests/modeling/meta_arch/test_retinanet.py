"""RetinaNet: config wiring, refused keys, training losses and gradients, eval boxes in original coordinates, bad
targets named, the export / TTA refusals, overfit."""
import json
import re

import pytest
import torch

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.config.validate import validate_cfg
from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY, RetinaNet, build_model
from resnet_backbone.structures import Instances

NUM_CLASSES = 3


def small_cfg(**overrides):
    """R18-FPN (P3-P7) with few channels and one anchor size per level: a RetinaNet that runs in well under a
    second on CPU."""
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RetinaNet.yaml")
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "GN",
        "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.PIXEL_STD", [57.375, 57.12, 58.395],
        "MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32], [64], [128], [256]],
        "MODEL.RETINANET.NUM_CLASSES", NUM_CLASSES, "MODEL.RETINANET.NUM_CONVS", 2,
    ])
    if overrides:
        cfg.merge_from_list([v for kv in overrides.items() for v in kv])
    return cfg


def make_input(h=96, w=128, orig=None, boxes=((10.0, 12.0, 50.0, 60.0), (60.0, 30.0, 120.0, 90.0)), classes=(0, 2),
               image_id=0):
    oh, ow = orig or (h, w)
    return {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8), "height": oh, "width": ow,
            "file_name": f"img{image_id}.png", "image_id": image_id,
            "instances": Instances((h, w), gt_boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                   gt_classes=torch.tensor(classes, dtype=torch.int64))}


def test_registered_and_built_from_config():
    cfg = small_cfg()
    validate_cfg(cfg, world_size=1)
    model = build_model(cfg)
    assert META_ARCH_REGISTRY.get("RetinaNet") is RetinaNet and isinstance(model, RetinaNet)
    assert model.num_classes == NUM_CLASSES and model.num_anchors == 3
    assert model.in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in model.backbone.output_shape().values()] == [8, 16, 32, 64, 128]
    assert model.backbone.top_block.in_feature == "res5" and model.backbone.top_block.p6.in_channels == 512
    head = model.head.classification_head
    assert len(head.conv) == 2 and head.cls_logits.out_channels == 3 * NUM_CLASSES
    assert torch.allclose(head.cls_logits.bias, torch.full_like(head.cls_logits.bias, -4.59511985))  # PRIOR_PROB
    assert model.losses.matcher.low_threshold == 0.4 and model.losses.matcher.high_threshold == 0.5
    assert (model.score_thresh, model.topk_candidates, model.nms_thresh, model.detections_per_image) == \
        (0.05, 1000, 0.5, 100)
    assert (model.losses.normalizer, model.losses.smooth_l1_beta, model.edge_rules) == ("ema", 0.0, "detectron2")


def test_torchvision_config_builds_torchvisions_layout():
    cfg = small_cfg(**{"MODEL.FPN.TOP_BLOCK_IN_FEATURE": "p5", "MODEL.RETINANET.NORM": "GN",
                       "MODEL.RETINANET.LOSS_NORMALIZER": "per_image"})
    model = build_model(cfg)
    assert model.backbone.top_block.in_feature == "p5" and model.backbone.top_block.p6.in_channels == 32
    assert isinstance(model.head.regression_head.conv[0][1], torch.nn.GroupNorm)
    assert model.head.regression_head.conv[0][0].bias is not None  # detectron2's GN head keeps the conv bias
    assert model.losses.normalizer == "per_image"


@pytest.mark.parametrize("key, value", [
    ("MODEL.RETINANET.IOU_LABELS", [0, 1]), ("MODEL.RETINANET.IOU_THRESHOLDS", [0.5, 0.4]),
    ("MODEL.RETINANET.NORM", "BN"), ("MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "l2"),
    ("MODEL.RETINANET.LOSS_NORMALIZER", "mean"), ("MODEL.RETINANET.PRIOR_PROB", 1.0),
    ("MODEL.RETINANET.NUM_CLASSES", 0), ("MODEL.RETINANET.TOPK_CANDIDATES_TEST", 0),
    ("MODEL.RETINANET.BBOX_REG_WEIGHTS", (1.0, 1.0, 0.0, 1.0)), ("MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", -1.0),
    ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", -2.0), ("MODEL.RETINANET.SCORE_THRESH_TEST", 1.0),
    ("MODEL.RETINANET.IN_FEATURES", ["p2", "p3"]), ("MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32]]),
    ("MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator"), ("MODEL.RCNN_EDGE_RULES", "mmdet"),
    ("MODEL.MASK_ON", True), ("MODEL.FPN.TOP_BLOCK_IN_FEATURE", "res4"),
])
def test_bad_config_refused_naming_the_key(key, value):
    cfg = small_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError) as e:
        validate_cfg(cfg, world_size=1)
    assert any(line.strip().startswith(key) for line in str(e.value).splitlines()[1:]), str(e.value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(cfg)  # the builder refuses it too, naming the key


def test_max_pool_fpn_refuses_a_top_block_input():
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "res5"
    with pytest.raises(ConfigError, match=r"MODEL\.FPN\.TOP_BLOCK_IN_FEATURE: 'res5' cannot feed"):
        validate_cfg(cfg, world_size=1)


def test_training_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(small_cfg()).train()
    losses = model([make_input(), make_input(boxes=(), classes=(), image_id=1)])  # one image without objects
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    for name in ("head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight",
                 "backbone.top_block.p7.weight", "backbone.bottom_up.stem.conv1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and bool(grad.abs().sum() > 0), name
    # detectron2's EMA normaliser moved from 100 towards the batch's positive count
    assert 90 < model.losses.loss_normalizer < 100


def test_eval_boxes_in_original_coordinates_and_contiguous_labels():
    torch.manual_seed(0)
    model = build_model(small_cfg(**{"MODEL.RETINANET.SCORE_THRESH_TEST": 0.0})).eval()
    x = make_input(96, 128, orig=(192, 256))
    with torch.no_grad():
        out = model([x])[0]
    assert set(out) == {"boxes", "scores", "labels"} and len(out["boxes"]) == 100
    assert float(out["boxes"][:, 0::2].max()) <= 256 and float(out["boxes"][:, 1::2].max()) <= 192
    assert float(out["boxes"][:, 2::2].max()) > 128  # scaled up by 2, not left in input pixels
    assert set(out["labels"].tolist()) <= set(range(NUM_CLASSES))
    assert bool((out["scores"][:-1] >= out["scores"][1:]).all())


@pytest.mark.parametrize("boxes, classes, field", [(((10.0, 12.0, 10.0, 60.0),), (0,), "instances.gt_boxes'[0]"),
                                                   (((10.0, 12.0, 50.0, 60.0),), (3,), "instances.gt_classes'[0]")])
def test_bad_targets_name_the_input_and_field(boxes, classes, field):
    model = build_model(small_cfg()).train()
    with pytest.raises(ValueError, match=r"input 0 \(file_name='img0.png', image_id=0\): field '" + re.escape(field)):
        model([make_input(boxes=boxes, classes=classes)])


def test_export_and_tta_refuse_retinanet():
    from resnet_backbone.export.exporter import check_exportable

    cfg = small_cfg()
    with pytest.raises(ConfigError, match=r"MODEL\.META_ARCHITECTURE = 'RetinaNet' has no export"):
        check_exportable(cfg, "onnx")
    cfg.TEST.AUG.ENABLED = True
    with pytest.raises(ConfigError, match=r"TEST\.AUG\.ENABLED: test-time augmentation is implemented for FasterRCNN "
                                          r"only, not MODEL\.META_ARCHITECTURE='RetinaNet'"):
        validate_cfg(cfg, world_size=1)


def _coco_ap50(json_file, inputs, outputs, contiguous_to_dataset_id):
    from _coco import detections_to_coco, pycocotools_bbox_stats

    results = detections_to_coco(inputs, outputs, contiguous_to_dataset_id)
    return float(pycocotools_bbox_stats(json_file, results)[1]) if results else 0.0


@pytest.mark.slow
def test_overfit_four_synthetic_images(tmp_path):
    """R18-FPN RetinaNet learns 4 synthetic shapes images to AP50 >= 0.9 on those images (measured in the report:
    AP50 by step), with the Faster R-CNN overfit test's settings: 128 px, BN, AdamW 1e-3 with warmup."""
    from resnet_backbone.data.coco import load_coco_json
    from resnet_backbone.data.dataset_mapper import DatasetMapper
    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset

    json_file = generate_shapes_dataset(tmp_path, "train", 4, image_size=128, seed=0)
    records = load_coco_json(json_file, tmp_path / "train")
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    inputs = [mapper(r) for r in records]
    with open(json_file) as f:
        dataset_ids = sorted(c["id"] for c in json.load(f)["categories"])
    torch.manual_seed(0)
    cfg = small_cfg(**{"MODEL.RESNETS.NORM": "BN", "MODEL.FPN.OUT_CHANNELS": 64, "MODEL.RETINANET.NUM_CONVS": 2})
    model = build_model(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    eval_inputs = [{k: v for k, v in x.items() if k != "instances"} for x in inputs]

    def ap50():
        model.eval()
        with torch.no_grad():
            return _coco_ap50(json_file, inputs, model(eval_inputs), dataset_ids)

    history = [(0, ap50())]
    assert history[0][1] < 0.2  # the untrained model does not already pass
    for it in range(1, 201):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * min(1.0, it / 20)
        model.train()
        losses = model(inputs)
        assert all(torch.isfinite(v) for v in losses.values()), (it, losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if it % 10 == 0:
            history.append((it, ap50()))
            if history[-1][1] >= 0.9:
                break
    print("AP50 by iteration:", history)
    assert history[-1][1] >= 0.9, f"AP50 by iteration: {history}"
