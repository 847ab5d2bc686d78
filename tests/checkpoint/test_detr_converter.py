"""Official DETR checkpoints (facebookresearch/detr) -> our DETR.

The reference test builds DETR with DETR's own code (its `models.detr.DETR` from its backbone, position encoding
and transformer) from a source tree given by DETR_ROOT (default /tmp/detr/src; skipped with the reason when it is
not importable: nothing of DETR is part of this project), saves `{"model": state_dict}` as the official files are,
converts it with ours, loads it into our DETR and compares both models' outputs on the same input.
"""
import argparse
import importlib
import os
import sys

import pytest
import torch
import torchvision
from _detr import tiny_detr_cfg
from _random_weights import randomize
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
from resnet_backbone.modeling.backbone import build_backbone
from resnet_backbone.modeling.meta_arch import build_model

DETR_ROOT = os.environ.get("DETR_ROOT", "/tmp/detr/src")
HIDDEN, QUERIES = 32, 10


def _official_detr():
    """DETR's own modules, imported from DETR_ROOT; (None, reason) when that tree is not importable."""
    if not os.path.isdir(os.path.join(DETR_ROOT, "models")):
        return None, f"no DETR source tree at DETR_ROOT={DETR_ROOT!r} (facebookresearch/detr; set DETR_ROOT)"
    sys.path.insert(0, DETR_ROOT)
    try:
        return {name: importlib.import_module(f"models.{name}") for name in
                ("backbone", "position_encoding", "transformer", "detr")}, None
    except ImportError as e:
        return None, f"DETR's code at {DETR_ROOT!r} does not import: {e}"
    finally:
        sys.path.remove(DETR_ROOT)


_randomize = randomize


def _build_official(mods, num_classes: int) -> torch.nn.Module:
    """DETR's R18 DETR, built from its parts as its build(args) does (no pretrained download: torchvision's
    ResNet with weights=None and DETR's FrozenBatchNorm2d, as its Backbone class builds it)."""
    body = torchvision.models.resnet18(weights=None, norm_layer=mods["backbone"].FrozenBatchNorm2d)
    backbone = mods["backbone"].Joiner(mods["backbone"].BackboneBase(body, False, 512, False),
                                       mods["position_encoding"].PositionEmbeddingSine(HIDDEN // 2, normalize=True))
    backbone.num_channels = 512
    transformer = mods["transformer"].Transformer(d_model=HIDDEN, nhead=4, num_encoder_layers=1,
                                                  num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
                                                  normalize_before=False, return_intermediate_dec=True)
    model = mods["detr"].DETR(backbone, transformer, num_classes=num_classes, num_queries=QUERIES, aux_loss=True)
    return _randomize(model, 1)


OFFICIAL, OFFICIAL_MISSING = _official_detr()
requires_detr = pytest.mark.skipif(OFFICIAL is None, reason=str(OFFICIAL_MISSING))


def _ours_cfg(num_classes: int):
    cfg = tiny_detr_cfg(num_classes, hidden=HIDDEN, queries=QUERIES)
    cfg.INPUT.FORMAT = DETR_INPUT["format"]
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = list(DETR_INPUT["pixel_mean"]), list(DETR_INPUT["pixel_std"])
    return cfg


@requires_detr
@pytest.mark.parametrize("official_classes,ours_classes", [(91, 80), (5, 5)], ids=["coco_92_to_81", "kept_6"])
def test_official_detr_file_converts_and_predicts_as_detr_itself(tmp_path, official_classes, ours_classes):
    """DETR's `num_classes` is max id + 1 (COCO: 91 -> 92 rows with "no object"); our converter reduces the COCO
    head to our 80 contiguous classes + "no object" (COCO_CATEGORY_IDS) and keeps any other."""
    ref = _build_official(OFFICIAL, official_classes)
    path = tmp_path / "detr-official.pth"
    torch.save({"model": ref.state_dict()}, path)
    converted = convert_detr_checkpoint(str(path), num_classes=ours_classes)
    assert converted["source"] == "detr" and converted["format"] == "RGB"
    ours = build_model(_ours_cfg(ours_classes)).eval()
    result = ours.load_state_dict(converted["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8) for _ in range(2)]
    with torch.no_grad():
        got = ours.raw_outputs([{"image": im} for im in images])
        normed = [(im.float() - ours.pixel_mean) / ours.pixel_std for im in images]
        want = ref(normed)
    rows = COCO_CATEGORY_IDS + [91] if official_classes == 91 else list(range(official_classes + 1))
    for a, b in [(got, want), *zip(got["aux_outputs"], want["aux_outputs"])]:
        torch.testing.assert_close(a["pred_logits"], b["pred_logits"][..., rows], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=1e-4, atol=1e-4)

    # MODEL.WEIGHTS takes the official file itself (converted on load), and the converted file of it
    for weights in (path, tmp_path / "detr-ours.pth"):
        if weights != path:
            save_converted(converted, str(weights))
        fresh = build_model(_ours_cfg(ours_classes)).eval()
        Checkpointer(fresh, save_to_disk=False).load_weights(str(weights), allow_partial=False)
        assert all(torch.equal(v, ours.state_dict()[k]) for k, v in fresh.state_dict().items())


@requires_detr
def test_official_detr_file_in_the_tool_and_with_its_arguments(tmp_path, capsys):
    """The official files also pickle their argparse.Namespace: reading them needs --trust / trust=True."""
    ref = _build_official(OFFICIAL, 91)
    src, dst = tmp_path / "detr.pth", tmp_path / "out" / "detr_ours.pth"
    torch.save({"model": ref.state_dict(), "args": argparse.Namespace(lr=1e-4), "epoch": 499}, src)
    with pytest.raises(CheckpointError, match="trust"):
        convert_detr_checkpoint(str(src))
    tool = load_tool("convert_weights")
    assert tool.main([str(src), str(dst), "--source", "detr"]) == 2  # refused without --trust
    assert "trust" in capsys.readouterr().err
    for source in ("detr", "auto"):  # the registry recognises the file by its names
        assert tool.main([str(src), str(dst), "--source", source, "--trust"]) == 0
        saved = torch.load(dst, weights_only=True)
        assert saved["source"] == "detr" and saved["format"] == "RGB"
        assert set(saved["model"]) == set(build_model(_ours_cfg(80)).state_dict())


def test_torchvision_names_map_onto_our_resnet50():
    ours = build_backbone(tiny_detr_cfg(5, depth=50))
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
    for bad, match in ((tmp_path / "missing.pth", "not found"), (tmp_path / "garbage.pth", "garbage.pth")):
        if bad.name == "garbage.pth":
            bad.write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match=match):
            convert_detr_checkpoint(str(bad))


def test_ddp_prefixed_checkpoint(tmp_path):
    """DDP's "module." prefix is removed by the one reader (the names here are DETR's, as its docs/DETR.md table)."""
    state = {"module.query_embed.weight": torch.ones(2, 2), "module.backbone.0.body.conv1.weight": torch.ones(1)}
    assert is_detr_state_dict({k[len("module."):]: v for k, v in state.items()})
    p = tmp_path / "ddp.pth"
    torch.save({"model": state}, p)
    out = convert_detr_checkpoint(str(p))["model"]
    assert set(out) == {"query_embed.weight", "backbone.stem.conv1.weight"}
