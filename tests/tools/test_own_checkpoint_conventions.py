"""Our own training checkpoints in tools/convert_weights.py and tools/classify.py: recognised as ours (not as
"detectron2 names"), keeping the input convention they record, and inventing none when they record none."""
import os

import numpy as np
import pytest
import torch
from _tools import load_tool
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_train_net import ROOT, TINY

from resnet_backbone.checkpoint.checkpointer import FORMAT_TAG, Checkpointer
from resnet_backbone.checkpoint.converters import convert_checkpoint
from resnet_backbone.config import get_cfg
from resnet_backbone.engine import Trainer
from resnet_backbone.modeling.backbone import build_backbone

TV_MEAN, TV_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
TV_PIXELS = ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", str(TV_MEAN), "MODEL.PIXEL_STD", str(TV_STD)]
R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
IMAGENET = os.path.join(ROOT, "configs", "ImageNet")


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory):
    """model_final.pth as the Trainer writes it, for an R18-FPN Faster R-CNN trained with RGB / ImageNet std."""
    d = tmp_path_factory.mktemp("ours")
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list([*TINY, *TV_PIXELS, "OUTPUT_DIR", str(d / "out"), "DATASETS.TEST", "()"])
    trainer = Trainer(cfg)
    trainer._save("model_final", 0)  # the trainer's own save (iteration, seed, optimizer, scheduler, ...)
    return str(d / "out" / "model_final.pth")


def test_trainer_checkpoint_converts_as_ours_with_its_convention(trainer_checkpoint, tmp_path, capsys):
    raw = torch.load(trainer_checkpoint, weights_only=True)
    assert raw["__format__"] == FORMAT_TAG and raw["format"] == "RGB"  # the Checkpointer records it
    out = tmp_path / "converted.pth"
    assert load_tool("convert_weights").main([trainer_checkpoint, str(out)]) == 0
    text = capsys.readouterr().out
    assert "(ours names)" in text and "INPUT.FORMAT RGB" in text
    conv = torch.load(out, weights_only=True)
    assert conv["source"] == "ours"
    assert conv["format"] == "RGB" and conv["pixel_mean"] == TV_MEAN and conv["pixel_std"] == TV_STD
    assert "res4.1.conv2.weight" in conv["model"]  # the ResNet in our names, as for any converted file
    again = convert_checkpoint(str(out))  # the converted file keeps what it records
    assert again["source"] == "ours" and again["format"] == "RGB" and again["pixel_std"] == TV_STD


def test_own_checkpoint_recording_nothing_gets_no_invented_convention(trainer_checkpoint, tmp_path, capsys):
    raw = torch.load(trainer_checkpoint, weights_only=True)
    for k in ("format", "pixel_mean", "pixel_std"):  # as written before checkpoints recorded their convention
        raw.pop(k, None)
    old = tmp_path / "old_model_final.pth"
    torch.save(raw, old)
    out = tmp_path / "converted.pth"
    assert load_tool("convert_weights").main([str(old), str(out)]) == 0
    text = capsys.readouterr().out
    assert "(ours names)" in text and "not recorded" in text and "BGR" not in text
    conv = torch.load(out, weights_only=True)
    assert conv["source"] == "ours" and not {"format", "pixel_mean", "pixel_std"} & set(conv)
    again = convert_checkpoint(str(out))
    assert again["source"] == "ours" and again["format"] is None and again["pixel_mean"] is None
    # an explicit override is recorded
    assert load_tool("convert_weights").main([str(old), str(out), "--format", "RGB"]) == 0
    conv = torch.load(out, weights_only=True)
    assert conv["format"] == "RGB" and "pixel_mean" not in conv


def _state(prefix: str) -> dict:
    return {f"{prefix}stem.conv1.weight": torch.zeros(4, 3, 7, 7),
            f"{prefix}res2.0.conv1.weight": torch.zeros(4, 4, 1, 1)}


@settings(max_examples=60, deadline=None)
@given(tag=st.sampled_from([FORMAT_TAG, "resnet_backbone.checkpoint/2", None, "someone.else/1", 1]),
       prefix=st.sampled_from(["", "backbone.bottom_up.", "backbone.", "module."]),
       extra=st.dictionaries(st.sampled_from(["iteration", "seed", "nonfinite_skipped", "best_metric", "__author__",
                                              "best_metric_name"]), st.one_of(st.integers(), st.text(max_size=8))),
       fmt=st.sampled_from([None, "RGB", "BGR"]))
def test_fuzz_our_marker_decides_ours(tag, prefix, extra, fmt):
    """Our tag (any version) on a dict with a "model" state dict makes a checkpoint ours, whatever else it holds;
    without it the same names are detectron2's (MSRA convention unless recorded)."""
    obj = {"model": _state(prefix), **extra}
    if tag is not None:
        obj["__format__"] = tag
    if fmt:
        obj.update(format=fmt, pixel_mean=[1.0, 2.0, 3.0], pixel_std=[4.0, 5.0, 6.0])
    conv = convert_checkpoint(obj)
    assert "res2.0.conv1.weight" in conv["model"]
    if isinstance(tag, str) and tag.startswith("resnet_backbone.checkpoint/"):
        assert conv["source"] == "ours"
        assert conv["format"] == fmt and conv["pixel_std"] == ([4.0, 5.0, 6.0] if fmt else None)
    else:
        assert conv["source"] == "detectron2"
        if fmt:
            assert conv["format"] == fmt
        elif "torchvision" not in str(extra.get("__author__", "")).lower():
            assert conv["format"] == "BGR" and conv["pixel_std"] == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------ classify
@pytest.fixture
def classifier(tmp_path):
    """An R18 ImageNet classifier checkpoint written by our Checkpointer, and an image."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(IMAGENET, "R_50_torchvision.yaml"))
    cfg.merge_from_list(R18)
    model = build_backbone(cfg)
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(img)
    return model, tmp_path, str(img)


def _spy(monkeypatch, tool):
    seen = {}
    real_pre, real_read = tool.preprocess, tool.read_image
    monkeypatch.setattr(tool, "preprocess", lambda im, m, s, **k: seen.update(mean=m, std=s) or real_pre(im, m, s, **k))
    monkeypatch.setattr(tool, "read_image", lambda p, format: seen.update(format=format) or real_read(p, format=format))
    return seen


def test_classify_uses_the_config_when_our_checkpoint_records_no_convention(classifier, monkeypatch, capsys):
    model, d, img = classifier
    path = Checkpointer(model, str(d / "run"), save_to_disk=True).save("model_final", iteration=0)
    assert "format" not in torch.load(path, weights_only=True)  # a bare backbone has no input convention
    tool = load_tool("classify")
    seen = _spy(monkeypatch, tool)
    top = tool.classify(img, path, os.path.join(IMAGENET, "R_50_torchvision.yaml"), opts=R18)
    assert len(top) == 5
    assert seen == {"format": "RGB", "mean": TV_MEAN, "std": TV_STD}
    assert "records no input convention" in capsys.readouterr().err


def test_classify_prefers_what_our_checkpoint_records(classifier, monkeypatch, capsys):
    model, d, img = classifier
    model.input_format = "RGB"  # what a detector carries; the Checkpointer records it with the pixel statistics
    model.register_buffer("pixel_mean", torch.tensor(TV_MEAN).view(-1, 1, 1), False)
    model.register_buffer("pixel_std", torch.tensor(TV_STD).view(-1, 1, 1), False)
    path = Checkpointer(model, str(d / "run"), save_to_disk=True).save("model_final", iteration=0)
    tool = load_tool("classify")
    seen = _spy(monkeypatch, tool)
    tool.classify(img, path, os.path.join(IMAGENET, "R_50_MSRA.yaml"), opts=R18)
    assert seen == {"format": "RGB", "mean": TV_MEAN, "std": TV_STD}
    assert "instead of the config's BGR" in capsys.readouterr().err
