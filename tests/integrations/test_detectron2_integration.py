"""Our backbones inside detectron2, checked against detectron2 itself. Skips where detectron2 is not installed.

detectron2 is an optional dependency that is not on PyPI; see docs/INTEGRATIONS.md for how to install it.
"""
import copy
import importlib
import math
import os
import pickle

import pytest
import torch

detectron2 = pytest.importorskip(
    "detectron2", reason="detectron2 is not installed (optional, not on PyPI; see docs/INTEGRATIONS.md)")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY as D2_REGISTRY  # noqa: E402
from detectron2.modeling import Backbone as D2Backbone  # noqa: E402
from detectron2.modeling import build_backbone as d2_build_backbone  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import resnet_backbone.integrations.detectron2 as rb_d2  # noqa: E402
from resnet_backbone.checkpoint import CheckpointError  # noqa: E402,F401
from resnet_backbone.checkpoint.detectron2_names import (  # noqa: E402
    detectron2_to_ours,
    ours_to_detectron2,
    save_detectron2_checkpoint,
)
from resnet_backbone.config import ConfigError  # noqa: E402
from resnet_backbone.config import get_cfg as rb_get_cfg  # noqa: E402
from resnet_backbone.layers import FrozenBatchNorm2d  # noqa: E402
from resnet_backbone.modeling.backbone import Backbone as RBBackbone  # noqa: E402
from resnet_backbone.modeling.backbone import build_backbone as rb_build_backbone  # noqa: E402
from resnet_backbone.modeling.backbone.fpn import FPN as RBFPN  # noqa: E402

CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"


def _config_file(name):
    """detectron2's own config file (its model_zoo copy; model_zoo.get_config_file needs pkg_resources)."""
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(name)
    except Exception:
        pass
    root = os.path.dirname(detectron2.__file__)
    for candidate in (os.path.join(root, "model_zoo", "configs", name),
                      os.path.join(os.path.dirname(root), "configs", name)):
        if os.path.isfile(candidate):
            return candidate
    pytest.skip(f"detectron2 is installed without its configs ({name} not found)")


def _d2_cfg(backbone_name=None, config=CONFIG):
    cfg = d2_get_cfg()
    cfg.merge_from_file(_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    if backbone_name:
        cfg.MODEL.BACKBONE.NAME = backbone_name
    return cfg


def _randomize_norms(model, seed=1):
    """Random FrozenBN statistics (detectron2's and ours), so dropped or swapped norm buffers show up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__ == "FrozenBatchNorm2d":
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def _max_diffs(a, b):
    assert sorted(a) == sorted(b)
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


def test_register_is_idempotent_and_names_do_not_collide():
    for name in ("build_rb_resnet_backbone", "build_rb_resnet_fpn_backbone", "build_rb_retinanet_resnet_fpn_backbone"):
        assert name in D2_REGISTRY
    before = D2_REGISTRY.get("build_rb_resnet_fpn_backbone")
    rb_d2.register()
    rb_d2.register()
    assert D2_REGISTRY.get("build_rb_resnet_fpn_backbone") is before
    # detectron2's own builders are untouched
    assert D2_REGISTRY.get("build_resnet_fpn_backbone").__module__.startswith("detectron2.")


def test_builder_returns_our_module_that_is_a_detectron2_backbone():
    cfg = _d2_cfg("build_rb_resnet_fpn_backbone")
    backbone = d2_build_backbone(cfg)
    assert isinstance(backbone, D2Backbone) and isinstance(backbone, RBFPN) and isinstance(backbone, RBBackbone)
    assert isinstance(backbone.bottom_up, D2Backbone)  # e.g. usable as bottom_up of detectron2's own FPN class
    shapes = backbone.output_shape()
    assert type(shapes["p2"]).__module__.startswith("detectron2.")
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)}
    assert backbone.size_divisibility == 32 and backbone.padding_constraints == {"square_size": 0}
    # same parameter names as detectron2's own build_resnet_fpn_backbone
    theirs = d2_build_backbone(_d2_cfg())
    assert sorted(backbone.state_dict()) == sorted(theirs.state_dict())
    ours_shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}
    # detectron2's config keys reach our builder: MODEL.RESNETS.DEPTH / FPN.OUT_CHANNELS / FREEZE_AT
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 3
    small = d2_build_backbone(cfg)
    assert len(small.bottom_up.res2) == 2 and small.output_shape()["p3"].channels == 64
    assert not any(p.requires_grad for p in small.bottom_up.res3.parameters())
    assert all(p.requires_grad for p in small.bottom_up.res4.parameters())
    # the derived classes are importable by name: models pickle and deep-copy
    for copied in (copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
        assert type(copied) is type(small) and isinstance(copied, D2Backbone)
        assert torch.equal(copied.fpn_lateral3.weight, small.fpn_lateral3.weight)


def test_register_survives_a_reload():
    importlib.reload(rb_d2)
    assert D2_REGISTRY.get("build_rb_resnet_fpn_backbone") is rb_d2.build_rb_resnet_fpn_backbone


def test_unknown_detectron2_key_is_named():
    cfg = _d2_cfg("build_rb_resnet_fpn_backbone")
    cfg.MODEL.RESNETS.set_new_allowed(True)
    cfg.MODEL.RESNETS.SOMETHING_NEW = 1
    with pytest.raises(ConfigError, match="MODEL.RESNETS.SOMETHING_NEW"):
        d2_build_backbone(cfg)


def _tiny_inputs():
    g = torch.Generator().manual_seed(0)
    inputs = []
    for h, w, boxes, classes in (
        (96, 128, [[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]], [0, 2]),
        (80, 112, [[5.0, 5.0, 50.0, 40.0]], [1]),
    ):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": inst, "height": h, "width": w})
    return inputs


def test_generalized_rcnn_from_stock_config_trains_and_predicts_on_cpu(tmp_path):
    cfg = _d2_cfg("build_rb_resnet_fpn_backbone")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    torch.manual_seed(0)
    model = d2_build_model(cfg)
    assert type(model).__name__ == "GeneralizedRCNN" and isinstance(model.backbone, RBFPN)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(params, lr=0.01)
    with EventStorage(0):  # detectron2's training losses log into an event storage (its trainer opens one)
        losses = model(_tiny_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    for name in ("backbone.fpn_lateral2.weight", "backbone.bottom_up.res3.0.conv1.weight"):
        assert not torch.equal(before[name], model.state_dict()[name]), name
    assert not model.backbone.bottom_up.res2[0].conv1.weight.requires_grad  # FREEZE_AT 2 from the stock config

    model.eval()
    inputs = _tiny_inputs()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    assert len(outputs) == 2
    for out, x in zip(outputs, inputs):
        inst = out["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert inst.pred_boxes.tensor.shape[1] == 4 and len(inst.scores) == len(inst.pred_classes)

    # detectron2's own checkpointer saves and re-loads the model with our backbone inside
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_tmp")
    torch.manual_seed(7)
    again = d2_build_model(cfg)
    DetectionCheckpointer(again).load(str(tmp_path / "model_tmp.pth"))
    assert torch.equal(again.backbone.fpn_output3.weight, model.backbone.fpn_output3.weight)


def _features(backbone, x, grad=False):
    x = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        return {k: v.detach() for k, v in {**backbone.bottom_up(x), **backbone(x)}.items()}


def _inputs():
    g = torch.Generator().manual_seed(0)
    unit = torch.randn(1, 3, 64, 96, generator=g)  # normalized-image scale (torchvision convention)
    mean = torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)  # the stock config's BGR mean, std 1
    pixels = torch.randint(0, 256, (1, 3, 64, 96), generator=g).float() - mean
    return unit, pixels


def _check_parity(reference, ours, what):
    """res2..res5 and the pyramid of `ours` vs `reference` (a detectron2 backbone), on two input scales and on both
    of detectron2's FrozenBN code paths (inference: F.batch_norm; with grad: scale/shift like ours)."""
    unit, pixels = _inputs()
    figures = {}
    for name, x, grad in (("unit", unit, False), ("pixels", pixels, False), ("pixels_grad_path", pixels, True)):
        a, b = _features(reference, x, grad), _features(ours, x, grad)
        diffs = _max_diffs(a, b)
        scale = max(v.abs().max().item() for v in a.values())
        figures[name] = (max(diffs.values()), scale)
        print(f"{what} [{name}] max abs diff per feature:", {k: f"{v:.1e}" for k, v in diffs.items()},
              f"max |feature| {scale:.1f}")
    assert figures["unit"][0] < 1e-4, figures  # the bar: within 1e-4
    assert figures["pixels"][0] / figures["pixels"][1] < 1e-5, figures  # raw-pixel scale: fp32 rounding only
    # detectron2 scales the conv's output, ours the conv's weight (layers.Conv2d folds FrozenBN): rounding only
    assert figures["pixels_grad_path"][0] / figures["pixels_grad_path"][1] < 1e-5, figures
    return figures


@pytest.mark.parametrize("d2_name,levels", [
    ("build_resnet_fpn_backbone", ["p2", "p3", "p4", "p5", "p6"]),
    pytest.param("build_retinanet_resnet_fpn_backbone", ["p3", "p4", "p5", "p6", "p7"], marks=pytest.mark.slow),
])
def test_parity_detectron2_weights_into_ours_and_back(d2_name, levels, tmp_path):
    """detectron2's own backbone (random init + random FrozenBN statistics) -> converted -> our backbone built by
    OUR builder from OUR config: res2..res5 and the pyramid equal detectron2's; then ours -> detectron2."""
    d2_cfg = _d2_cfg(d2_name)
    if "retinanet" in d2_name:
        d2_cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    torch.manual_seed(0)
    theirs = _randomize_norms(d2_build_backbone(d2_cfg)).eval()
    d2_model_state = {"backbone." + k: v for k, v in theirs.state_dict().items()}
    d2_model_state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)  # heads are left out

    cfg = rb_get_cfg()  # our own config, same keys as the stock detectron2 YAML
    cfg.MODEL.BACKBONE.NAME = d2_name  # our registry has builders of the same names
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = list(d2_cfg.MODEL.FPN.IN_FEATURES)
    torch.manual_seed(1)
    ours = rb_build_backbone(cfg).eval()
    assert not isinstance(ours, D2Backbone)  # built by our registry alone, no detectron2 class involved
    ours.load_state_dict(detectron2_to_ours(d2_model_state, target="fpn"), strict=True)
    assert list(ours(torch.zeros(1, 3, 64, 64))) == levels
    _check_parity(theirs, ours, f"{d2_name}: detectron2 -> ours")

    # back the other way: our weights (re-randomized) -> detectron2 names -> a .pkl that detectron2's
    # DetectionCheckpointer loads by exact name into a fresh detectron2 backbone
    _randomize_norms(ours, seed=5)
    path = str(tmp_path / "ours_for_d2.pkl")
    save_detectron2_checkpoint(ours_to_detectron2(ours.state_dict()), path)
    torch.manual_seed(2)
    fresh = d2_build_backbone(d2_cfg).eval()
    holder = torch.nn.Module()
    holder.backbone = fresh
    DetectionCheckpointer(holder).load(path)
    fresh_state = fresh.state_dict()
    assert sorted(fresh_state) == sorted(ours.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(fresh_state[k], v), k
    _check_parity(fresh, ours, f"{d2_name}: ours -> detectron2")


def test_frozen_bn_types_differ_but_agree():
    """Our FrozenBatchNorm2d vs detectron2's on the same statistics (the one layer type the two do differently)."""
    from detectron2.layers import FrozenBatchNorm2d as D2Frozen

    ours, theirs = FrozenBatchNorm2d(8), D2Frozen(8)
    _randomize_norms(theirs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 8, 5, 5) * 10
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
