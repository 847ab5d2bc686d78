import argparse
import re

import pytest
import torch
import torchvision
from _tools import load_tool

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.checkpointer import Checkpointer
from resnet_backbone.checkpoint.converters import save_converted
from resnet_backbone.checkpoint.detr_converter import (
    COCO_CATEGORY_IDS,
    DETR_INPUT,
    convert_detr_checkpoint,
    convert_detr_state_dict,
    is_detr_state_dict,
    torchvision_resnet_key,
)
from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.backbone import build_backbone
from resnet_backbone.modeling.meta_arch import build_model


def detr_cfg(num_classes=5, thin=True):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DETR"
    cfg.MODEL.RESNETS.DEPTH = 50
    if thin:  # the ResNet-50 layout (names, block counts) at 1/4 width, for speed
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    d = cfg.MODEL.DETR
    d.NUM_CLASSES, d.HIDDEN_DIM, d.NHEADS, d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD = num_classes, 32, 4, 1, 2, 64
    d.NUM_OBJECT_QUERIES = 10
    return cfg


# The mapping table of docs/DETR.md, written out independently here: our name -> official DETR name.
def ours_to_official(key: str) -> str:
    if not key.startswith("backbone."):
        return key  # transformer.*, input_proj.*, query_embed.weight, class_embed.*, bbox_embed.layers.N.*
    k = key[len("backbone."):]
    k = k.replace("stem.conv1.norm.", "bn1.").replace("stem.conv1.", "conv1.")
    k = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", k)
    k = re.sub(r"conv(\d)\.norm\.", r"bn\1.", k)
    k = k.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
    return "backbone.0.body." + k


def _randomized(model):
    g = torch.Generator().manual_seed(1)
    state = {}
    for k, v in model.state_dict().items():
        if "running_var" in k:
            state[k] = torch.rand(v.shape, generator=g) * 0.2 + 0.9
        else:
            state[k] = (torch.randn(v.shape, generator=g) * 0.05).to(v.dtype)
    return state


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = detr_cfg()
    source = build_model(cfg).eval()
    source.load_state_dict(_randomized(source))
    return cfg, source


def test_official_layout_converts_and_loads_with_equal_outputs(models, tmp_path):
    cfg, source = models
    official = {ours_to_official(k): v.clone() for k, v in source.state_dict().items()}
    assert "backbone.0.body.layer1.0.conv1.weight" in official and "backbone.0.body.bn1.running_var" in official
    assert "backbone.0.body.layer4.0.downsample.1.weight" in official
    assert "transformer.encoder.layers.0.self_attn.in_proj_weight" in official
    official["backbone.0.body.layer1.0.bn1.num_batches_tracked"] = torch.tensor(5)  # torchvision BN extra
    assert is_detr_state_dict(official)
    path = tmp_path / "detr-official.pth"
    # the official files pickle their argparse.Namespace too: reading them needs trust=True
    torch.save({"model": official, "args": argparse.Namespace(lr=1e-4), "epoch": 499}, path)
    with pytest.raises(CheckpointError, match="trust"):
        convert_detr_checkpoint(str(path))
    converted = convert_detr_checkpoint(str(path), trust=True)
    assert converted["format"] == "RGB" and converted["pixel_std"] == DETR_INPUT["pixel_std"]
    assert converted["source"] == "detr"
    target = build_model(cfg).eval()
    result = target.load_state_dict(converted["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    inputs = [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)},
              {"image": torch.randint(0, 256, (3, 96, 64), dtype=torch.uint8)}]
    with torch.no_grad():
        a, b = source.raw_outputs(inputs), target.raw_outputs(inputs)
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], rtol=0, atol=0)

    # a converted file is something MODEL.WEIGHTS loads through the Checkpointer
    out = tmp_path / "detr-ours.pth"
    save_converted(converted, str(out))
    fresh = build_model(cfg).eval()
    Checkpointer(fresh, save_to_disk=False).load_weights(str(out))
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, target.state_dict()[k]), k


def test_torchvision_names_map_onto_our_resnet50():
    ours = build_backbone(detr_cfg(thin=False))
    tv = torchvision.models.resnet50().state_dict()
    mapped = {torchvision_resnet_key(k) for k in tv if not k.endswith("fc.weight") and not k.endswith("fc.bias")}
    mapped.discard(None)  # num_batches_tracked
    assert mapped == set(ours.state_dict())
    assert torchvision_resnet_key("fc.weight") == "linear.weight"
    assert torchvision_resnet_key("layer3.5.bn3.running_mean") == "res4.5.conv3.norm.running_mean"
    with pytest.raises(KeyError):
        torchvision_resnet_key("layer5.0.conv1.weight")


def test_coco_92_classes_reduce_to_80_plus_no_object():
    assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80 and max(COCO_CATEGORY_IDS) == 90
    weight = torch.arange(92, dtype=torch.float32)[:, None].repeat(1, 4)
    bias = torch.arange(92, dtype=torch.float32)
    state = {"class_embed.weight": weight, "class_embed.bias": bias, "query_embed.weight": torch.zeros(3, 4)}
    out = convert_detr_state_dict(state, num_classes=80)
    assert out["class_embed.weight"].shape == (81, 4)
    assert out["class_embed.bias"][0] == 1 and out["class_embed.bias"][79] == 90  # person, toothbrush
    assert out["class_embed.bias"][-1] == 91  # no object stays last
    assert out["class_embed.bias"][11] == 13  # stop sign: COCO id 12 is unused
    assert convert_detr_state_dict(state)["class_embed.weight"].shape == (81, 4)  # auto: COCO head reduced
    with pytest.raises(CheckpointError, match="class_embed.weight.*92"):
        convert_detr_state_dict(state, num_classes=20)
    small = {"class_embed.bias": torch.zeros(6)}
    assert convert_detr_state_dict(small)["class_embed.bias"].shape == (6,)  # auto: other heads kept
    assert convert_detr_state_dict(small, num_classes=5)["class_embed.bias"].shape == (6,)


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="unknown keys.*backbone.0.body.layer9"):
        convert_detr_state_dict({"backbone.0.body.layer9.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown keys.*some_head"):
        convert_detr_state_dict({"query_embed.weight": torch.zeros(1), "some_head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="panoptic"):
        convert_detr_state_dict({"detr.query_embed.weight": torch.zeros(1)})
    p = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), p)
    with pytest.raises(CheckpointError, match="not an official DETR checkpoint"):
        convert_detr_checkpoint(str(p))
    with pytest.raises(CheckpointError, match="not found"):
        convert_detr_checkpoint(str(tmp_path / "missing.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        convert_detr_checkpoint(str(bad))


def test_ddp_prefixed_checkpoint(tmp_path):
    state = {"module.query_embed.weight": torch.ones(2, 2), "module.backbone.0.body.conv1.weight": torch.ones(1)}
    p = tmp_path / "ddp.pth"
    torch.save({"model": state}, p)
    out = convert_detr_checkpoint(str(p))["model"]
    assert set(out) == {"query_embed.weight", "backbone.stem.conv1.weight"}


def test_convert_weights_tool_source_detr(models, tmp_path, capsys):
    tool = load_tool("convert_weights")
    _, source = models
    official = {ours_to_official(k): v for k, v in source.state_dict().items()}
    src, dst = tmp_path / "detr.pth", tmp_path / "out" / "detr_ours.pth"
    torch.save({"model": official, "args": argparse.Namespace()}, src)
    assert tool.main([str(src), str(dst), "--source", "detr"]) == 2  # refused without --trust
    assert "trust" in capsys.readouterr().err
    assert tool.main([str(src), str(dst), "--source", "detr", "--trust"]) == 0
    saved = torch.load(dst, weights_only=True)
    assert saved["source"] == "detr" and saved["format"] == "RGB"
    assert set(saved["model"]) == set(source.state_dict())
