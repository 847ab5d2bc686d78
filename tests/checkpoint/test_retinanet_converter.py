"""Whole RetinaNet files from torchvision (retinanet_resnet50_fpn's classes on an R18 FPN) and detectron2 (its own
RetinaNet, R18, built from its config; skipped when detectron2 is not importable) convert and load whole: every
tensor of our RetinaNet is filled, and our backbone and head then compute what the reference's do on one random
input. Bad files are refused naming the file, the key and the shapes."""
import os

import pytest
import torch
from _random_weights import randomize
from _tools import ROOT, load_tool
from torchvision.models import detection as tvdet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.detr_converter import COCO_CATEGORY_IDS
from resnet_backbone.checkpoint.formats import claims
from resnet_backbone.checkpoint.reader import read_weights
from resnet_backbone.checkpoint.retinanet_converter import convert_retinanet
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling import build_model

try:
    import detectron2  # noqa: F401  (beside the project: PYTHONPATH=/tmp/d2/src:/tmp/d2/site)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model
    D2_MISSING = None
except Exception as e:  # noqa: BLE001
    D2_MISSING = f"detectron2 is not importable ({e}); put it on PYTHONPATH to run the detectron2 comparisons"
requires_d2 = pytest.mark.skipif(D2_MISSING is not None, reason=D2_MISSING or "")

CONFIGS = os.path.join(ROOT, "configs", "COCO-Detection")
OURS_TV = os.path.join(CONFIGS, "retinanet_R_50_FPN_torchvision.yaml")
OURS_D2 = os.path.join(CONFIGS, "retinanet_R_50_FPN_1x.yaml")
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
CONVERT = load_tool("convert_weights")


def _ours(cfg_file, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", *R18, *[str(o) for o in opts]])
    torch.manual_seed(123)  # values none of the reference's: loading must replace every tensor
    return build_model(cfg).eval()


def _tv_retinanet(num_classes=91):
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    return randomize(tvdet.RetinaNet(backbone, num_classes=num_classes), 3)


def _close(ours, ref, what):
    assert ours.shape == ref.shape, f"{what}: {tuple(ours.shape)} vs {tuple(ref.shape)}"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6, msg=what)


def _compare(ours, ref_features, ref_head, column_map=None):
    """Our backbone and head against the reference's on one random input (already normalised)."""
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = ours.backbone(x)
        ref = ref_features(x)
        for (name, f), r in zip(feats.items(), ref):
            _close(f, r, name)
        out = ours.head([feats[k] for k in ours.in_features])
        cls, box = ref_head(ref)
    _close(out["cls_logits"], cls if column_map is None else cls[..., column_map], "cls_logits")
    _close(out["bbox_regression"], box, "bbox_regression")


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    tv = _tv_retinanet()
    path = str(tmp_path_factory.mktemp("tv_retinanet") / "retinanet_r18.pth")
    torch.save(tv.state_dict(), path)
    return tv, path


def _tv_parts(tv):
    head = tv.head

    def features(x):
        return list(tv.backbone(x).values())

    def run_head(feats):
        out = head(feats)
        return out["cls_logits"], out["bbox_regression"]
    return features, run_head


def test_torchvision_file_loads_whole_and_computes_the_same(tv_file):
    tv, path = tv_file
    assert claims(read_weights(path)) == ["torchvision_retinanet"]
    ours = _ours(OURS_TV)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)  # every tensor filled
    _compare(ours, *_tv_parts(tv), column_map=COCO_CATEGORY_IDS)


def test_torchvision_91_rows_become_80_contiguous_classes(tv_file):
    tv, path = tv_file
    converted = convert_retinanet(path)
    assert (converted["architecture"], converted["num_classes"], converted["source"]) == ("RetinaNet", 80,
                                                                                          "torchvision")
    assert converted["format"] == "RGB" and converted["pixel_std"] == [58.395, 57.12, 57.375]
    theirs = tv.head.classification_head.cls_logits.weight.detach()
    ours = converted["model"]["head.classification_head.cls_logits.weight"]
    for anchor, contiguous in ((0, 0), (4, 17), (8, 79)):  # row a x K + k in both layouts
        assert torch.equal(ours[anchor * 80 + contiguous], theirs[anchor * 91 + COCO_CATEGORY_IDS[contiguous]])
    kept = convert_retinanet(path, num_classes=91)["model"]["head.classification_head.cls_logits.weight"]
    assert torch.equal(kept, theirs)  # a model with 91 classes keeps every row


def test_old_torchvision_head_names(tv_file, tmp_path):
    """torchvision before its head version 2 saved the subnets as conv.{2i} (conv, ReLU, conv, ...): the official
    retinanet_resnet50_fpn_coco-eeacb38b.pth has those names."""
    tv, path = tv_file
    state = {}
    for k, v in tv.state_dict().items():
        parts = k.split(".")
        if k.startswith("head.") and parts[2] == "conv":  # head.<sub>.conv.{i}.0.<field> -> head.<sub>.conv.{2i}.<f>
            k = ".".join([*parts[:3], str(2 * int(parts[3])), parts[5]])
        state[k] = v
    old = str(tmp_path / "old.pth")
    torch.save(state, old)
    a, b = convert_retinanet(old)["model"], convert_retinanet(path)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_class_count_mismatch_names_file_key_shapes_and_config_key(tv_file):
    _, path = tv_file
    ours = _ours(OURS_TV, "MODEL.RETINANET.NUM_CLASSES", 5)
    with pytest.raises(CheckpointError, match=r"retinanet_r18\.pth': key 'head\.classification_head\.cls_logits\."
                                              r"weight' is for 91 classes x 9 anchors, shape \(819, 256, 3, 3\), but "
                                              r"the model's is \(45, 256, 3, 3\) "
                                              r"\(MODEL\.RETINANET\.NUM_CLASSES = 5\)"):
        Checkpointer(ours, save_to_disk=False).load_weights(path)


def test_wrong_shape_names_file_key_and_shapes(tv_file, tmp_path):
    tv, _ = tv_file
    state = dict(tv.state_dict())
    state["backbone.fpn.extra_blocks.p6.weight"] = torch.zeros(256, 2048, 3, 3)  # P6 from C5: detectron2's layout
    path = str(tmp_path / "p6_from_c5.pth")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"p6_from_c5\.pth' does not fit the model .*backbone\.top_block\.p6\."
                                              r"weight: checkpoint \(256, 2048, 3, 3\) vs model \(256, 256, 3, 3\)"):
        Checkpointer(_ours(OURS_TV), save_to_disk=False).load_weights(path)


def test_missing_and_unknown_keys_named(tv_file):
    tv, _ = tv_file
    state = dict(tv.state_dict())
    del state["head.regression_head.bbox_reg.bias"]
    with pytest.raises(CheckpointError, match=r"lacks head key\(s\) \['head\.regression_head\.bbox_reg\.bias'\]"):
        convert_retinanet(state)
    state = dict(tv.state_dict())
    state["head.classification_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unknown keys \['head\.classification_head\.extra\.weight'\]"):
        convert_retinanet(state)


def test_convert_weights_tool_writes_a_file_that_loads(tv_file, tmp_path):
    tv, path = tv_file
    out = str(tmp_path / "converted.pth")
    assert CONVERT.main([path, out]) == 0
    ours = _ours(OURS_TV)
    Checkpointer(ours, save_to_disk=False).load_weights(out, allow_partial=False)
    _compare(ours, *_tv_parts(tv), column_map=COCO_CATEGORY_IDS)
    with pytest.raises(CheckpointError, match="is not a whole torchvision or detectron2 RetinaNet"):
        convert_retinanet(torch.load(out)["model"])  # our names: nothing to convert (they load as they are)


def test_our_untagged_state_dict_loads_by_name(tmp_path):
    src = _ours(OURS_TV)
    randomize(src, 5)
    path = str(tmp_path / "ours.pth")
    torch.save(src.state_dict(), path)
    assert "torchvision_retinanet" not in claims(read_weights(path))
    ours = _ours(OURS_TV)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), src.state_dict().values()))


# -------------------------------------------------------------------------------------------- detectron2
def _d2_model(*opts):
    cfg = d2_get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(detectron2.__file__), os.pardir, "configs", "COCO-Detection",
                                     "retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *R18, *opts])
    return randomize(d2_build_model(cfg), 4)


def _d2_parts(m):
    from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

    def features(x):
        out = m.backbone(x)
        return [out[f] for f in m.head_in_features]

    def run_head(feats):
        logits, deltas = m.head(feats)
        return (torch.cat([permute_to_N_HWA_K(t, m.num_classes) for t in logits], 1),
                torch.cat([permute_to_N_HWA_K(t, 4) for t in deltas], 1))
    return features, run_head


@requires_d2
@pytest.mark.parametrize("norm", ["", "GN"])
def test_detectron2_file_loads_whole_and_computes_the_same(tmp_path, norm):
    m = _d2_model("MODEL.RETINANET.NORM", norm)
    DetectionCheckpointer(m, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    assert claims(read_weights(path)) == ["detectron2_retinanet"]
    ours = _ours(OURS_D2, "MODEL.RETINANET.NORM", norm)
    Checkpointer(ours, save_to_disk=False).load_weights(path, allow_partial=False)
    _compare(ours, *_d2_parts(m))
    converted = convert_retinanet(path)
    assert (converted["source"], converted["num_classes"], converted["format"]) == ("detectron2", 80, "BGR")
