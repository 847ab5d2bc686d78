"""export_model: each model in each format, run on an image size not seen at export, gives eager's outputs.

Tiny models (ResNet-18, narrow FPN / transformer, few proposals); the export traces a 256x320 image and the
checks run a 200x296 one (not a multiple of 32: the in-graph padding is exercised) against the eager model with
the same weights. onnxruntime runs the ONNX files; the tests skip, naming it, where it is not installed.
"""
import json

import numpy as np
import pytest
import torch

from resnet_backbone.config import ConfigError, get_cfg
from resnet_backbone.export import ExportError, db_polygons, export_model, load_exported
from resnet_backbone.modeling.backbone import build_backbone
from resnet_backbone.modeling.meta_arch import build_model
from resnet_backbone.structures import ImageList

SIZE = (200, 296)  # the export traces 256x320 (export_model's example_size)


def _needs(fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -r requirements.txt)")
        pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -r requirements.txt)")


def faster_rcnn_cfg():
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-FPN.yaml")
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32], [64], [128], [256]],
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    ])
    return cfg


def detr_cfg():
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "DETR", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.STRIDE_IN_1X1", False, "MODEL.RESNETS.OUT_FEATURES", ["res5"], "INPUT.FORMAT", "RGB",
        "MODEL.PIXEL_MEAN", [123.675, 116.28, 103.53], "MODEL.PIXEL_STD", [58.395, 57.12, 57.375],
        "MODEL.DETR.NUM_CLASSES", 3, "MODEL.DETR.HIDDEN_DIM", 32, "MODEL.DETR.NHEADS", 4,
        "MODEL.DETR.ENC_LAYERS", 1, "MODEL.DETR.DEC_LAYERS", 2, "MODEL.DETR.DIM_FEEDFORWARD", 64,
        "MODEL.DETR.NUM_OBJECT_QUERIES", 20, "TEST.DETECTIONS_PER_IMAGE", 10,
    ])
    return cfg


def dbnet_cfg():
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "DBNet", "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"], "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.DBNET.INNER_CHANNELS", 8,
    ])
    return cfg


def backbone_cfg(fpn: bool):
    cfg = faster_rcnn_cfg() if fpn else get_cfg()
    if not fpn:
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                             "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]])
    return cfg


def _image(h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def _weights(module, tmp_path):
    """The random weights, saved where export_model can read them."""
    path = tmp_path / "weights.pth"
    torch.save({"model": module.state_dict()}, path)
    return str(path)


def _export_and_eager(cfg, fmt, tmp_path, part="model", prepare=None):
    torch.manual_seed(0)
    eager = (build_backbone(cfg) if part == "backbone" else build_model(cfg)).eval()
    if prepare is not None:
        prepare(eager)
    weights = _weights(eager, tmp_path)
    paths = export_model(cfg, weights=weights, format=fmt, output_dir=str(tmp_path / fmt), part=part)
    return eager, load_exported(str(tmp_path / fmt)), paths


def _detections(cfg, fmt, tmp_path):
    """(eager's detections, the exported model's) for one image of SIZE."""
    eager, exported, _ = _export_and_eager(cfg, fmt, tmp_path)
    image = _image(*SIZE)
    with torch.no_grad():
        ref = eager([{"image": image}])[0]
    return ref, exported(image)


def _close(a, b, rel):
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(b).detach()
    assert a.shape == b.shape
    scale = b.abs().max().clamp(min=1e-12)
    assert float((a - b).abs().max() / scale) <= rel, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("fmt", ["exported_program", "onnx", "torchscript"])
@pytest.mark.parametrize("fpn", [True, False], ids=["fpn", "resnet"])
def test_backbone_features_equal_eager_at_new_size_and_batch(fmt, fpn, tmp_path):
    _needs(fmt)
    cfg = backbone_cfg(fpn)
    eager, exported, _ = _export_and_eager(cfg, fmt, tmp_path, part="backbone")
    images = [_image(*SIZE, seed=s) for s in (1, 2, 4)]  # batch 3: the export traced a batch of 2
    out = exported(torch.stack(images))
    mean, std = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    batch = ImageList.from_tensors([(x - mean) / std for x in images], eager.size_divisibility,
                                   padding_constraints=eager.padding_constraints).tensor
    with torch.no_grad():
        ref = eager(batch)
    names = ["p2", "p3", "p4", "p5", "p6"] if fpn else ["res2", "res3", "res4", "res5"]
    assert list(out) == names == exported.metadata["outputs"]
    for k in names:
        _close(out[k], ref[k], 1e-4)


@pytest.mark.slow  # 40-90 s on the 2-core machine: the export of the two-stage graph
@pytest.mark.parametrize("fmt", ["exported_program", "onnx"])
def test_faster_rcnn_detections_equal_eager_at_new_size(fmt, tmp_path):
    _needs(fmt)
    ref, out = _detections(faster_rcnn_cfg(), fmt, tmp_path)
    assert len(ref["boxes"]) > 10  # random weights: every class above the 0.05 score threshold somewhere
    assert out["boxes"].shape == tuple(ref["boxes"].shape)
    assert np.array_equal(out["labels"], ref["labels"].numpy())
    assert np.abs(out["scores"] - ref["scores"].numpy()).max() <= 1e-4
    assert np.abs(out["boxes"] - ref["boxes"].numpy()).max() <= 1e-2


def test_faster_rcnn_torchscript_is_refused_naming_the_reason(tmp_path):
    with pytest.raises(ExportError, match="torchscript.*FasterRCNN.*exported_program or onnx"):
        export_model(faster_rcnn_cfg(), format="torchscript", output_dir=str(tmp_path))
    assert not (tmp_path / "model.ts").exists()


@pytest.mark.parametrize("fmt", [pytest.param("exported_program", marks=pytest.mark.slow),
                                 pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
def test_detr_outputs_equal_eager_at_new_size(fmt, tmp_path):
    _needs(fmt)
    ref, out = _detections(detr_cfg(), fmt, tmp_path)
    assert len(ref["boxes"]) == 10
    assert np.array_equal(out["labels"], ref["labels"].numpy())
    for k in ("boxes", "scores"):
        _close(out[k], ref[k], 1e-4)


def _spread_prob_map(model):
    """Rescale the random DBNet's last layer so that its probability map on the test image spans (0, 1) with
    median 0.5 (random weights saturate it), and set the thresholds to its 80% quantile: dozens of regions."""
    image = model.preprocess_image([{"image": _image(*SIZE)}]).tensor
    with torch.no_grad():
        logits = model.head(model.backbone(image))["prob_logits"][0, 0, :SIZE[0], :SIZE[1]]
        median, std = logits.median(), logits.std()
        last = model.head.prob_head[-1]
        last.weight.mul_(3 / std)
        last.bias.sub_(median).mul_(3 / std)
        prob = torch.sigmoid(model.head(model.backbone(image))["prob_logits"][0, 0, :SIZE[0], :SIZE[1]])
    t = float(prob.quantile(0.8))
    model.postprocess_args.update(binarize_thresh=t, box_thresh=t)


@pytest.mark.parametrize("fmt", [pytest.param("exported_program", marks=pytest.mark.slow),
                                 pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
@pytest.mark.parametrize("output_convs", [True, False], ids=["fpn_output_convs", "top_down_sums"])
def test_dbnet_polygons_equal_eager_at_new_size(fmt, output_convs, tmp_path):
    _needs(fmt)
    cfg = dbnet_cfg()
    cfg.MODEL.FPN.OUTPUT_CONVS = output_convs  # False: the shipped DBNet configs' layout
    eager, exported, _ = _export_and_eager(cfg, fmt, tmp_path, prepare=_spread_prob_map)
    assert hasattr(eager.backbone, "fpn_output2") is output_convs
    image = _image(*SIZE)
    with torch.no_grad():
        ref = eager([{"image": image, "height": 400, "width": 592}])[0]
    out = exported(image)
    assert out["prob"].shape == out["thresh"].shape == SIZE
    thresholds = {k: eager.postprocess_args[k] for k in ("binarize_thresh", "box_thresh")}
    got = db_polygons(out["prob"], output_size=(400, 592), **{**exported.metadata["db_postprocess"], **thresholds})
    assert len(ref["polygons"]) > 10
    assert len(got["polygons"]) == len(ref["polygons"])
    for a, b in zip(got["polygons"], ref["polygons"]):
        assert np.abs(a - b).max() <= 1e-2
    assert np.abs(got["scores"] - ref["scores"].numpy()).max() <= 1e-4
    assert np.abs(got["boxes"] - ref["boxes"].numpy()).max() <= 1e-2


def test_export_json_names_the_interface(tmp_path):
    cfg = detr_cfg()
    paths = export_model(cfg, format="torchscript", output_dir=str(tmp_path))
    meta = json.loads(open(paths["metadata"]).read())
    assert meta["input"]["name"] == "image" and meta["input"]["shape"] == [3, "H", "W"]
    assert meta["input"]["channel_order"] == "RGB" and meta["input"]["range"] == [0, 255]
    assert meta["input"]["normalised_in_graph"]["pixel_std"] == [58.395, 57.12, 57.375]
    assert meta["input"]["resize_by_caller"]["min_size_test"] == cfg.INPUT.MIN_SIZE_TEST
    assert meta["outputs"] == ["boxes", "scores", "labels"]


def test_folded_norms_are_exported_as_plain_convs(tmp_path):
    cfg = backbone_cfg(fpn=False)
    cfg.MODEL.FUSE_FROZEN_BN = True  # honoured: the FrozenBN folded into the convs before tracing
    eager, exported, _ = _export_and_eager(cfg, "torchscript", tmp_path, part="backbone")
    kinds = {m.original_name for m in torch.jit.load(exported.path).modules()}
    assert "Conv2d" in kinds and "FrozenBatchNorm2d" not in kinds
    image = _image(*SIZE)
    mean, std = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    with torch.no_grad():
        ref = eager(((image - mean) / std)[None])
    out = exported(image[None])
    for k in ref:
        _close(out[k], ref[k], 1e-4)


@pytest.mark.parametrize("key, value", [("MODEL.COMPILE", True), ("MODEL.MKLDNN_PREPACK", True),
                                        ("TEST.AUG.ENABLED", True), ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN")])
def test_unexportable_options_are_refused_naming_them(key, value, tmp_path):
    cfg = faster_rcnn_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        export_model(cfg, format="exported_program", output_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_refused(tmp_path):
    cfg = detr_cfg()
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(ConfigError, match="MODEL.DEVICE"):
        export_model(cfg, format="onnx", output_dir=str(tmp_path))


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ExportError, match="'tflite'.*exported_program, onnx, torchscript"):
        export_model(detr_cfg(), format="tflite", output_dir=str(tmp_path))
