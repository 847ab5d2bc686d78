"""detectron2 <-> our names for whole backbone state dicts. Runs without detectron2 (the names are fixed strings;
tests/integrations/test_detectron2_integration.py checks them against detectron2 itself where it is installed)."""
import pickle

import numpy as np
import pytest
import torch
import torchvision
from _tools import load_tool

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.checkpoint.detectron2_names import (
    convert_to_detectron2,
    detectron2_to_ours,
    is_detectron2_state_dict,
    load_detectron2_checkpoint,
    ours_to_detectron2,
    save_detectron2_checkpoint,
)
from resnet_backbone.config import get_cfg
from resnet_backbone.layers import FrozenBatchNorm2d
from resnet_backbone.modeling.backbone import build_backbone


def _cfg(name, depth=18, retinanet=False):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"] if retinanet else ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


def _randomize_frozen_bn(model):
    """Random statistics, so a converter that dropped or swapped norm buffers changes the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def fpn():
    torch.manual_seed(0)
    return _randomize_frozen_bn(build_backbone(_cfg("build_resnet_fpn_backbone"))).eval()


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_fpn_names_match_detectron2_and_round_trip(fpn):
    ours = fpn.state_dict()
    d2 = ours_to_detectron2(ours)
    # detectron2's names for a GeneralizedRCNN with an FPN backbone
    for key in ("backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.stem.conv1.norm.running_var",
                "backbone.bottom_up.res2.0.conv1.weight", "backbone.bottom_up.res3.0.shortcut.norm.bias",
                "backbone.fpn_lateral2.weight", "backbone.fpn_output5.bias"):
        assert key in d2, key
    assert all(k.startswith("backbone.") for k in d2)
    assert is_detectron2_state_dict(d2) and not is_detectron2_state_dict(ours)
    _assert_same(detectron2_to_ours(d2, target="fpn"), ours)


def test_resnet_from_fpn_model_and_back(fpn):
    d2 = ours_to_detectron2(fpn.state_dict())
    resnet = detectron2_to_ours(d2, target="resnet")
    _assert_same(resnet, fpn.bottom_up.state_dict())
    # our ResNet alone goes under backbone.bottom_up (to sit in a detectron2 FPN model) by default
    d2_resnet = ours_to_detectron2(fpn.bottom_up.state_dict())
    assert sorted(d2_resnet) == sorted(k for k in d2 if k.startswith("backbone.bottom_up."))


def test_full_detectron2_checkpoint_drops_heads_and_ddp_prefix(fpn):
    d2 = ours_to_detectron2(fpn.state_dict())
    full = dict(d2)
    full["proposal_generator.rpn_head.conv.weight"] = torch.zeros(32, 32, 3, 3)
    full["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(4, 1024)
    ddp = {"module." + k: v for k, v in full.items()}
    _assert_same(detectron2_to_ours({"model": ddp, "iteration": 10}, target="fpn"), fpn.state_dict())


def test_backbone_only_detectron2_state_dict(fpn):
    # the state dict of a detectron2 FPN backbone by itself (no "backbone." prefix) is also accepted
    _assert_same(detectron2_to_ours(fpn.state_dict(), target="fpn"), fpn.state_dict())
    _assert_same(detectron2_to_ours(fpn.bottom_up.state_dict(), target="resnet"), fpn.bottom_up.state_dict())


def test_c4_layout_round_trip_and_fpn_target_error(fpn):
    resnet_sd = fpn.bottom_up.state_dict()
    c4 = ours_to_detectron2(resnet_sd, layout="c4")
    assert "roi_heads.res5.0.conv1.weight" in c4 and "backbone.res4.0.conv1.weight" in c4
    assert not any(k.startswith("backbone.res5") for k in c4)
    _assert_same(detectron2_to_ours(c4, target="resnet"), resnet_sd)
    without_res5 = detectron2_to_ours(c4, target="resnet", include_roi_res5=False)
    assert not any(k.startswith("res5.") for k in without_res5)
    with pytest.raises(CheckpointError, match="target='resnet'"):
        detectron2_to_ours(c4, target="fpn")
    dc5 = ours_to_detectron2(resnet_sd, layout="resnet")
    assert "backbone.res5.0.conv1.weight" in dc5
    with pytest.raises(CheckpointError, match="only fits"):
        ours_to_detectron2(fpn.state_dict(), layout="c4")


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_files_round_trip_and_load_into_fresh_model(fpn, tmp_path, suffix):
    path = str(tmp_path / f"d2{suffix}")
    save_detectron2_checkpoint(ours_to_detectron2(fpn.state_dict()), path)
    if suffix == ".pkl":  # detectron2's model-zoo layout: numpy arrays + __author__
        with open(path, "rb") as f:
            raw = pickle.load(f)
        assert raw["__author__"] == "resnet_backbone" and isinstance(raw["model"]["backbone.fpn_lateral2.weight"],
                                                                   np.ndarray)
    loaded = load_detectron2_checkpoint(path, target="fpn")
    _assert_same(loaded, fpn.state_dict())
    torch.manual_seed(123)
    fresh = build_backbone(_cfg("build_resnet_fpn_backbone")).eval()
    fresh.load_state_dict(loaded, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = fpn(x), fresh(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_retinanet_top_block_names():
    torch.manual_seed(0)
    model = build_backbone(_cfg("build_retinanet_resnet_fpn_backbone", retinanet=True))
    d2 = ours_to_detectron2(model.state_dict())
    assert "backbone.top_block.p6.weight" in d2 and "backbone.top_block.p7.bias" in d2
    _assert_same(detectron2_to_ours(d2), model.state_dict())


def test_old_frozen_bn_without_running_stats_is_filled_exactly():
    torch.manual_seed(0)
    cfg = _cfg("build_resnet_backbone")
    cfg.MODEL.BACKBONE.FREEZE_AT = 5  # every norm a FrozenBatchNorm2d
    model = build_backbone(cfg).eval()
    d2 = {k: v for k, v in ours_to_detectron2(model.state_dict()).items() if "running_" not in k}
    ours = detectron2_to_ours(d2, target="resnet")
    assert torch.equal(ours["stem.conv1.norm.running_mean"], torch.zeros(64))
    model.load_state_dict(ours, strict=True)
    norm = model.stem.conv1.norm
    x = torch.randn(2, 64, 3, 3)
    expected = x * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_errors_name_the_source(tmp_path):
    with pytest.raises(CheckpointError, match="no detectron2 backbone weights"):
        detectron2_to_ours({"roi_heads.box_predictor.cls_score.weight": torch.zeros(1)}, source="'heads.pth'")
    with pytest.raises(CheckpointError, match="target must be one of"):
        detectron2_to_ours({}, target="detr")
    with pytest.raises(CheckpointError, match="not found: '.*missing.pkl'"):
        load_detectron2_checkpoint(str(tmp_path / "missing.pkl"))
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_detectron2_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="'backbone.res2.0.conv1.weight' holds a str"):
        detectron2_to_ours({"backbone.res2.0.conv1.weight": "oops"}, target="resnet")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        ours_to_detectron2({"transformer.layer.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="layout must be one of"):
        ours_to_detectron2({"res2.0.conv1.weight": torch.zeros(1)}, layout="vit")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.res2.0.conv1.weight": _Evil()}, "__author__": "x"}, f)
    with pytest.raises(CheckpointError, match="evil.pkl"):
        load_detectron2_checkpoint(str(path), target="resnet")


def test_convert_to_detectron2_from_torchvision_resnet(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "resnet18_tv.pth")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    out = convert_to_detectron2(path)
    assert out["format"] == "RGB" and out["source"] == "torchvision"
    d2 = out["model"]
    assert "backbone.bottom_up.res2.0.conv1.weight" in d2 and "backbone.bottom_up.linear.weight" in d2
    cfg = _cfg("build_resnet_backbone")
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NUM_CLASSES = 1000
    cfg.MODEL.RESNETS.NORM = "BN"
    ours = build_backbone(cfg)
    ours.load_state_dict(detectron2_to_ours(d2, target="resnet"), strict=True)
    assert sorted(convert_to_detectron2(path, layout="c4")["model"])[-1].startswith("roi_heads.res5.")


def test_convert_to_detectron2_keeps_fpn_and_drops_our_heads(fpn, tmp_path):
    ours_detector = {"backbone." + k: v for k, v in fpn.state_dict().items()}
    ours_detector["roi_heads.box_head.fc6.weight"] = torch.zeros(8, 8)  # torchvision heads: not detectron2's
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": ours_detector, "iteration": 3}, path)
    out = convert_to_detectron2(path)
    assert sorted(out["model"]) == sorted("backbone." + k for k in fpn.state_dict())
    with pytest.raises(CheckpointError, match="only fits detectron2's FPN models"):
        convert_to_detectron2(path, layout="c4")


def test_convert_weights_tool_to_detectron2(fpn, tmp_path, capsys):

    module = load_tool("convert_weights")
    torch.manual_seed(0)
    src = str(tmp_path / "resnet18_tv.pth")
    torch.save(torchvision.models.resnet18().state_dict(), src)
    out = str(tmp_path / "r18_for_d2.pkl")
    assert module.main([src, out, "--to", "detectron2", "--layout", "c4"]) == 0
    printed = capsys.readouterr().out
    assert "INPUT.FORMAT RGB" in printed and "MODEL.PIXEL_STD" in printed
    with open(out, "rb") as f:
        raw = pickle.load(f)
    assert "roi_heads.res5.0.conv1.weight" in raw["model"] and "backbone.res2.0.conv1.weight" in raw["model"]
    resnet = load_detectron2_checkpoint(out, target="resnet")
    assert "res5.1.conv2.norm.running_var" in resnet
    # an FPN checkpoint cannot go to the C4 layout: clear error, exit code 1
    fpn_ckpt = str(tmp_path / "fpn.pth")
    torch.save({"model": {"backbone." + k: v for k, v in fpn.state_dict().items()}}, fpn_ckpt)
    assert module.main([fpn_ckpt, str(tmp_path / "x.pkl"), "--to", "detectron2", "--layout", "c4"]) == 2
    assert "only fits detectron2's FPN models" in capsys.readouterr().err
