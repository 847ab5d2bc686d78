"""Our backbones inside detectron2, checked against detectron2 itself. Skips where detectron2 is not installed.

detectron2 is an optional dependency that is not on PyPI; see docs/INTEGRATIONS.md for how to install it.
"""
import copy
import importlib
import math
import os
import pickle
import subprocess
import sys

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


# --- the detectron2-facing classes are static, importable by name; registration goes through register() only ---

_SMALL = {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64, "MODEL.FPN.OUT_CHANNELS": 64}

# kind -> (detectron2's own config file, our builder's name, class of model.backbone, class of its bottom_up)
_KINDS = {
    "fpn": ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "build_rb_resnet_fpn_backbone",
            "Detectron2FPN", "Detectron2ResNet"),
    "c4": ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", "build_rb_resnet_backbone", "Detectron2ResNet", None),
    "retinanet": ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "build_rb_retinanet_resnet_fpn_backbone",
                  "Detectron2FPN", "Detectron2ResNet"),
}


def _small_cfg(kind):
    config, builder, _, _ = _KINDS[kind]
    cfg = _d2_cfg(builder, config)
    for dotted, value in _SMALL.items():
        section, key = dotted.rsplit(".", 1)
        _get_node(cfg, section)[key] = value
    return cfg


def _get_node(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


class _ClassAssignmentSpy:
    """Records every `module.__class__ = ...` on an nn.Module (the assignment goes through nn.Module.__setattr__)."""

    def __init__(self, monkeypatch):
        self.reassigned = []
        original = torch.nn.Module.__setattr__

        def spy(module, name, value):
            if name == "__class__":
                self.reassigned.append((type(module).__name__, value.__name__))
            original(module, name, value)

        monkeypatch.setattr(torch.nn.Module, "__setattr__", spy)


def test_builders_construct_the_static_classes_directly(monkeypatch):
    for cls, ours in ((rb_d2.Detectron2ResNet, rb_d2.ResNet), (rb_d2.Detectron2FPN, RBFPN)):
        assert cls.__module__ == "resnet_backbone.integrations.detectron2" and cls.__qualname__ == cls.__name__
        assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls  # what pickle looks up
        assert issubclass(cls, ours) and issubclass(cls, D2Backbone) and issubclass(cls, RBBackbone)
    spy = _ClassAssignmentSpy(monkeypatch)
    for kind, (_, _, top, bottom) in _KINDS.items():
        cfg = _small_cfg(kind)
        if kind == "c4":
            cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res4"]
        backbone = d2_build_backbone(cfg)
        assert type(backbone) is getattr(rb_d2, top), kind
        if bottom:
            assert type(backbone.bottom_up) is getattr(rb_d2, bottom), kind
        shapes = backbone.output_shape()
        assert all(type(s).__module__.startswith("detectron2.") for s in shapes.values()), kind
    assert spy.reassigned == []  # built as the right class, never re-classed
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]  # retinanet: p3..p7


def test_as_detectron2_backbone_gives_a_built_module_its_static_class(monkeypatch):
    cfg = rb_get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    ours = rb_build_backbone(cfg).eval()
    assert type(ours) is RBFPN
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ours(x)
    spy = _ClassAssignmentSpy(monkeypatch)  # also shows the spy above would see a re-classing
    assert rb_d2.as_detectron2_backbone(ours) is ours
    assert sorted(spy.reassigned) == [("FPN", "Detectron2FPN"), ("ResNet", "Detectron2ResNet")]
    assert type(ours) is rb_d2.Detectron2FPN and type(ours.bottom_up) is rb_d2.Detectron2ResNet
    assert rb_d2.as_detectron2_backbone(ours) is ours and len(spy.reassigned) == 2  # already done: no-op
    copied = pickle.loads(pickle.dumps(ours))
    assert type(copied) is rb_d2.Detectron2FPN
    with torch.no_grad():
        for got in (ours(x), copied(x)):
            assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert all(torch.equal(v, before[k]) for k, v in copied.state_dict().items())

    # a subclass of ours has no static detectron2 class: refused, and nothing inside it changed
    from resnet_backbone.layers import ShapeSpec as RBShapeSpec
    from resnet_backbone.modeling.backbone import ResNet, build_resnet_fpn_backbone

    class MyFPN(RBFPN):
        pass

    mine = build_resnet_fpn_backbone(cfg, RBShapeSpec(channels=3), fpn_class=MyFPN)
    with pytest.raises(TypeError, match="MyFPN"):
        rb_d2.as_detectron2_backbone(mine)
    assert type(mine) is MyFPN and type(mine.bottom_up) is ResNet
    with pytest.raises(TypeError, match="not a resnet_backbone Backbone"):
        rb_d2.as_detectron2_backbone(torch.nn.Conv2d(3, 3, 1))


_OUR_BUILDERS = ("build_rb_resnet_backbone", "build_rb_resnet_fpn_backbone", "build_rb_retinanet_resnet_fpn_backbone")


class _WatchedMap(dict):
    """detectron2's registry dict that fails on any write made outside BACKBONE_REGISTRY.register()."""

    def __init__(self, items, allowed):
        super().__init__(items)
        self.allowed = allowed
        self.writes = []

    def __setitem__(self, key, value):
        if not self.allowed:
            raise AssertionError(f"BACKBONE_REGISTRY._obj_map[{key!r}] written outside BACKBONE_REGISTRY.register()")
        self.writes.append(key)
        super().__setitem__(key, value)

    def _refuse(self, *args, **kwargs):
        raise AssertionError("BACKBONE_REGISTRY._obj_map changed outside BACKBONE_REGISTRY.register()")

    __delitem__ = pop = popitem = update = setdefault = clear = _refuse


def test_registration_goes_through_register_only_also_on_reload_and_reimport(monkeypatch):
    import resnet_backbone.integrations as rb_integrations

    module_name = rb_d2.__name__
    with monkeypatch.context() as m:
        allowed = []
        watched = _WatchedMap(((k, v) for k, v in D2_REGISTRY if k not in _OUR_BUILDERS), allowed)
        m.setattr(D2_REGISTRY, "_obj_map", watched)  # the test's own stand-in; the module must only call register()
        real_register = D2_REGISTRY.register

        def register(obj=None):
            assert obj is not None, "expected register(fn), not the decorator form"
            allowed.append(True)
            try:
                return real_register(obj)
            finally:
                allowed.pop()

        m.setattr(D2_REGISTRY, "register", register)

        # first import (names absent): each builder registered through register()
        importlib.reload(rb_d2)
        assert sorted(watched.writes) == sorted(_OUR_BUILDERS)
        for name in _OUR_BUILDERS:
            assert D2_REGISTRY.get(name) is getattr(rb_d2, name) and callable(D2_REGISTRY.get(name))
        first = {name: D2_REGISTRY.get(name) for name in _OUR_BUILDERS}

        # importing again: reload, then a fresh module object (removed from sys.modules, imported anew)
        importlib.reload(rb_d2)
        m.delitem(sys.modules, module_name)
        m.setattr(rb_integrations, "detectron2", rb_d2)  # restored after the test, like sys.modules
        fresh = importlib.import_module(module_name)
        assert fresh is not rb_d2
        fresh.register()
        assert sorted(watched.writes) == sorted(_OUR_BUILDERS)  # no further write at all
        for name in _OUR_BUILDERS:
            assert D2_REGISTRY.get(name) is first[name] is getattr(fresh, name)
        # the kept builders build the classes of the module that is imported now, so the result pickles
        backbone = d2_build_backbone(_small_cfg("fpn"))
        assert type(backbone) is fresh.Detectron2FPN and type(backbone.bottom_up) is fresh.Detectron2ResNet
        assert type(pickle.loads(pickle.dumps(backbone))) is fresh.Detectron2FPN

    importlib.reload(rb_d2)  # the real registry again: point this module's names at its entries
    assert D2_REGISTRY.get("build_rb_resnet_fpn_backbone") is rb_d2.build_rb_resnet_fpn_backbone


def test_register_refuses_a_name_taken_by_someone_else(monkeypatch):
    def foreign(cfg, input_shape):
        raise AssertionError("not to be called")

    foreign.__name__ = foreign.__qualname__ = "build_rb_resnet_fpn_backbone"
    taken = _WatchedMap(((k, v) for k, v in D2_REGISTRY), allowed=[])
    dict.__setitem__(taken, "build_rb_resnet_fpn_backbone", foreign)  # as if another package registered it
    monkeypatch.setattr(D2_REGISTRY, "_obj_map", taken)
    with pytest.raises(RuntimeError, match="already has a 'build_rb_resnet_fpn_backbone' from .*will not overwrite"):
        rb_d2.register()
    assert D2_REGISTRY.get("build_rb_resnet_fpn_backbone") is foreign and taken.writes == []


# --- whole detectron2 models holding our backbone: torch.save(model), torch.load in a new python process ---

# Run in this process before saving and in the new process after loading (exec'd in both, so the two agree).
_EXTRACT = '''
import torch


def extract(model, images, x):
    with torch.no_grad():
        outputs = model(images)
        features = model.backbone(x)
    result = {"feature." + k: v for k, v in features.items()}
    for i, out in enumerate(outputs):
        inst = out["instances"]
        result[f"{i}.boxes"] = inst.pred_boxes.tensor
        result[f"{i}.scores"] = inst.scores
        result[f"{i}.classes"] = inst.pred_classes
    return result
'''

_CHILD = _EXTRACT + '''
import sys

folder, threads, kinds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
torch.set_num_threads(threads)
imported_before = sorted(m for m in sys.modules if m.split(".")[0] in ("resnet_backbone", "detectron2"))
inputs = torch.load(f"{folder}/inputs.pt", weights_only=True)
result = {"imported_before_load": imported_before}
for kind in kinds:
    model = torch.load(f"{folder}/{kind}.pt", weights_only=False)  # the whole pickled model
    result[kind] = extract(model, inputs["images"], inputs["x"])
    result[kind + ".classes"] = [f"{type(m).__module__}.{type(m).__qualname__}"
                                 for m in (model, model.backbone, getattr(model.backbone, "bottom_up", model.backbone))]
from detectron2.modeling import BACKBONE_REGISTRY

result["registered"] = sorted(k for k, _ in BACKBONE_REGISTRY if k.startswith("build_rb_"))
torch.save(result, f"{folder}/outputs.pt")
'''


def _small_detector(kind):
    cfg = _small_cfg(kind)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0  # random init: RetinaNet's prior (0.01) sits below the 0.05 default
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    torch.manual_seed(0)
    return _randomize_norms(d2_build_model(cfg)).eval()


@pytest.fixture(scope="module")
def pickled_in_new_process(tmp_path_factory):
    """Each kind of detector: outputs before torch.save(model), and those of torch.load(...) in a new process."""
    folder = tmp_path_factory.mktemp("d2_pickled")
    g = torch.Generator().manual_seed(0)
    images = [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
              for h, w in ((64, 96), (56, 80))]
    x = torch.randn(1, 3, 64, 64, generator=g) * 50
    torch.save({"images": images, "x": x}, folder / "inputs.pt")
    namespace = {}
    exec(_EXTRACT, namespace)
    before, classes = {}, {}
    for kind in _KINDS:
        model = _small_detector(kind)
        before[kind] = namespace["extract"](model, images, x)
        classes[kind] = [f"{type(m).__module__}.{type(m).__qualname__}"
                         for m in (model, model.backbone, getattr(model.backbone, "bottom_up", model.backbone))]
        torch.save(model, folder / f"{kind}.pt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(torch.get_num_threads()), ",".join(_KINDS)],
        env=env, capture_output=True, text=True, timeout=300, cwd=str(folder))
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = torch.load(folder / "outputs.pt", weights_only=True)
    return before, classes, after


@pytest.mark.parametrize("kind", list(_KINDS))
def test_whole_pickled_model_loads_in_a_new_process_with_the_same_outputs(kind, pickled_in_new_process):
    before, classes, after = pickled_in_new_process
    assert after["imported_before_load"] == []  # the new process imported nothing of ours or detectron2's itself
    assert after["registered"] == sorted(_OUR_BUILDERS)  # unpickling imported the integration, which registered
    _, _, top, bottom = _KINDS[kind]
    module = "resnet_backbone.integrations.detectron2"
    assert classes[kind][1:] == [f"{module}.{top}", f"{module}.{bottom or top}"]
    assert after[kind + ".classes"] == classes[kind]
    ours, theirs = before[kind], after[kind]
    assert sorted(ours) == sorted(theirs)
    assert len(ours["0.scores"]) > 0 and len(ours["1.scores"]) > 0  # there is something to compare
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), (kind, key, (ours[key] - theirs[key]).abs().max())
