"""The format registry and the one reader (resnet_backbone/checkpoint/formats.py, reader.py): every fixture is
claimed by exactly one format, two claims are an error naming both, and loading warns about the pixel convention
on every path. Fixtures come from the reference libraries (torchvision, timm, detectron2 where importable) or from
our own writers (Checkpointer, save_converted)."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from _tools import ROOT
from torch import nn
from torchvision.models import detection as tvdet

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.converters import convert_checkpoint, save_converted
from resnet_backbone.checkpoint.formats import FORMATS, claims, detect_format
from resnet_backbone.checkpoint.reader import read_weights
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling import build_model

R18_FPN = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.STRIDE_IN_1X1",
           "False", "MODEL.ROI_HEADS.NUM_CLASSES", "3"]


def _frcnn(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list([*R18_FPN, *map(str, opts)])
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """name of the format that must claim it -> a file written by the library whose format it is."""
    d = tmp_path_factory.mktemp("formats")
    files = {}

    def save(fmt, obj, name):
        files.setdefault(fmt, []).append(str(d / name))
        torch.save(obj, d / name)

    save("torchvision", torchvision.models.resnet18().state_dict(), "resnet18.pth")
    save("torchvision_detector", tvdet.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
         "frcnn_v1.pth")
    save("torchvision_detector", tvdet.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict(),
         "frcnn_v2.pth")
    try:
        import timm

        save("torchvision", timm.create_model("resnet50", pretrained=False).state_dict(), "timm_resnet50.pth")
    except ImportError:
        pass
    ours = _frcnn()
    files["ours"] = [Checkpointer(ours, str(d / "run"), save_to_disk=True).save("model_final", iteration=1)]
    converted = convert_checkpoint(files["torchvision"][0])
    save_converted(converted, str(d / "converted.pth"))
    files["ours"].append(str(d / "converted.pth"))
    # detectron2's model-zoo layout of our names (pickle of numpy arrays with __author__): detectron2's backbone
    d2 = {f"backbone.bottom_up.{k}": v.numpy() for k, v in ours.backbone.bottom_up.state_dict().items()}
    (d / "model_zoo.pkl").write_bytes(pickle.dumps({"model": d2, "__author__": "Detectron2 Model Zoo"}))
    files["detectron2"] = [str(d / "model_zoo.pkl")]
    save("state_dict", nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).state_dict(), "plain.pth")
    return files


def test_each_fixture_is_claimed_by_exactly_one_format(fixtures):
    for fmt, paths in fixtures.items():
        for path in paths:
            w = read_weights(path)
            assert claims(w) == ([] if fmt == "state_dict" else [fmt]), (path, claims(w))
            assert detect_format(w).name == fmt


def test_detectron2_detector_file_is_claimed_by_its_format():
    d2 = pytest.importorskip("detectron2", reason="detectron2 is not importable (PYTHONPATH=/tmp/d2/src:/tmp/d2/site)")
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model as d2_build_model

    cfg = d2_get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(d2.__file__)), "configs", "COCO-Detection",
                                     "faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    w = read_weights({"model": d2_build_model(cfg).state_dict(), "__author__": "detectron2"})
    assert claims(w) == ["detectron2_detector"]


def test_timm_names_are_torchvision_names_and_source_timm_chooses_timm():
    timm = pytest.importorskip("timm")
    w = read_weights(timm.create_model("resnet18", pretrained=False).state_dict())
    assert claims(w) == ["torchvision"]  # no marker tells them apart: the same names, conversion and convention
    assert detect_format(w, source="timm").name == "timm" and FORMATS["timm"].naming == "torchvision"


def test_two_formats_claiming_one_file_is_an_error_naming_both():
    state = dict(torchvision.models.resnet18().state_dict())
    state["res2_0_branch2a_w"] = np.zeros((64, 64, 1, 1), np.float32)  # a Caffe2 blob in a torchvision file
    with pytest.raises(CheckpointError, match=r"'mixed\.pth' carries the markers of several formats "
                                              r"\(torchvision, caffe2\)"):
        detect_format(read_weights(state, name="mixed.pth"))


def test_the_reader_unwraps_once(tmp_path):
    arr = np.arange(6, dtype=">f4").reshape(2, 3)  # big-endian numpy, as old pickles hold
    path = tmp_path / "wrapped.pkl"
    path.write_bytes(pickle.dumps({"state_dict": {"module.a.weight": arr, "module.a.bias": arr, "module.n": "x"},
                                   "format": "RGB"}))
    w = read_weights(str(path))
    assert list(w.tensors) == ["a.weight", "a.bias"] and w.skipped == {"n": "str"} and w.meta == {"format": "RGB"}
    assert torch.equal(w.tensors["a.weight"], torch.arange(6.0).view(2, 3))
    assert w.tensors["a.weight"] is w.tensors["a.bias"]  # one array under two names: one tensor


def _warnings(caplog, load):
    log = logging.getLogger("resnet_backbone.checkpoint.checkpointer")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            load()
    finally:
        log.removeHandler(caplog.handler)
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "expect" in
                     r.getMessage())


BGR = ["INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]
RGB = ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD",
       "[58.395, 57.12, 57.375]"]


def test_backbone_weights_warn_about_their_pixel_convention(fixtures, caplog):
    path = fixtures["torchvision"][0]
    text = _warnings(caplog, lambda: Checkpointer(_frcnn(*BGR), save_to_disk=False).load_weights(path))
    assert path in text and "torchvision weights" in text and "INPUT.FORMAT RGB (config: BGR)" in text
    assert "MODEL.PIXEL_STD [58.395, 57.12, 57.375] (config: [1.0, 1.0, 1.0])" in text
    caplog.clear()
    assert _warnings(caplog, lambda: Checkpointer(_frcnn(*RGB), save_to_disk=False).load_weights(path)) == ""


def test_detectron2_names_and_converted_files_warn_on_the_direct_path(fixtures, caplog):
    """Files that load by name (no conversion) are checked as well: detectron2's implied MSRA convention, and
    what a converted file records."""
    pkl, converted = fixtures["detectron2"][0], fixtures["ours"][1]
    text = _warnings(caplog, lambda: Checkpointer(_frcnn(*RGB), save_to_disk=False).load_weights(pkl))
    assert "detectron2 weights" in text and "INPUT.FORMAT BGR (config: RGB)" in text
    caplog.clear()
    text = _warnings(caplog, lambda: Checkpointer(_frcnn(*BGR), save_to_disk=False).load_weights(converted))
    assert converted in text and "INPUT.FORMAT RGB (config: BGR)" in text


def test_plain_state_dict_in_no_known_naming_is_refused_naming_it(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.layer.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"other\.pth.*no weight format we know.*encoder\.layer\.weight"):
        Checkpointer(_frcnn(), save_to_disk=False).load_weights(str(path))
