"""Weight conversion: torchvision / timm / detectron2 / Caffe2 names -> ours, parity, load reports, errors."""
import pickle

import numpy as np
import pytest
import torch
import torchvision
from _tools import load_tool
from torch import nn

from resnet_backbone.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint_file
from resnet_backbone.checkpoint.converters import convert_checkpoint, detect_source, save_converted
from resnet_backbone.config import get_cfg
from resnet_backbone.layers import FrozenBatchNorm2d
from resnet_backbone.modeling.backbone import build_backbone

TV_PIXELS = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


def _ours(depth=50, norm="FrozenBN", stride_in_1x1=False, num_classes=1000, out=("res5",)):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.STRIDE_IN_1X1, r.NUM_CLASSES, r.OUT_FEATURES = depth, norm, stride_in_1x1, num_classes, list(out)
    if depth < 50:
        r.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_backbone(cfg).eval()


def _randomize_norms(model):
    """Non-trivial BN statistics and affines, so a wrongly mapped norm shows up in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def _assert_close(ours, ref, tol=1e-4):
    """|ours - ref| <= tol, relative to the reference's scale when that exceeds 1 (fp32 rounding grows with it)."""
    scale = max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale, f"max abs error {err:.3g} (reference scale {scale:.3g})"


def _torchvision_c5_and_logits(tv, x):
    body = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
    with torch.no_grad():
        return body(x), tv(x)


@pytest.mark.parametrize("arch,depth,norm,size", [
    ("resnet50", 50, "FrozenBN", 64),
    ("resnet50", 50, "BN", 64),
    ("resnet18", 18, "FrozenBN", 96),
    pytest.param("resnet101", 101, "FrozenBN", 64, marks=pytest.mark.slow),
])
def test_torchvision_parity_via_file(tmp_path, arch, depth, norm, size):
    tv = _randomize_norms(getattr(torchvision.models, arch)()).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), str(path))
    ours = _ours(depth, norm)
    result = load_backbone_weights(ours, str(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert result.source == "torchvision"
    assert result.meta == {"format": "RGB", "pixel_mean": TV_PIXELS[0], "pixel_std": TV_PIXELS[1]}
    x = torch.randn(1, 3, size, size + 16)
    c5_ref, logits_ref = _torchvision_c5_and_logits(tv, x)
    with torch.no_grad():
        out = ours(x)
    _assert_close(out["res5"], c5_ref)
    _assert_close(out["linear"], logits_ref)
    if norm == "BN":  # same ops as torchvision: equal to 1e-4 absolute
        assert (out["res5"] - c5_ref).abs().max() <= 1e-4 and (out["linear"] - logits_ref).abs().max() <= 1e-4


def test_convert_file_roundtrip_records_pixels(tmp_path):
    tv = torchvision.models.resnet18()
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), str(src))
    converted = convert_checkpoint(str(src))
    out = tmp_path / "converted.pth"
    save_converted(converted, str(out))
    raw = torch.load(str(out), weights_only=True)
    assert set(raw) == {"model", "format", "pixel_mean", "pixel_std", "source"}
    assert raw["format"] == "RGB" and raw["source"] == "torchvision" and raw["pixel_std"] == TV_PIXELS[1]
    assert "stem.conv1.weight" in raw["model"] and "res5.1.conv2.norm.running_var" in raw["model"]
    assert "linear.weight" in raw["model"]
    # loading the converted file keeps its recorded source/pixels and gives the same weights
    ours = _ours(18, "BN")
    res = load_backbone_weights(ours, str(out))
    assert res.source == "torchvision" and res.meta["format"] == "RGB" and not res.missing_keys
    assert torch.equal(ours.res3[0].shortcut.weight, tv.layer2[0].downsample[0].weight)
    assert torch.equal(ours.res3[0].shortcut.norm.running_mean, tv.layer2[0].downsample[1].running_mean)


def test_timm_resnet50_converts_with_no_missing_keys():
    timm = pytest.importorskip("timm")
    tm = _randomize_norms(timm.create_model("resnet50", pretrained=False)).eval()
    ours = _ours(50, "FrozenBN")
    res = load_backbone_weights(ours, tm.state_dict(), source="timm")
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert res.source == "timm" and res.meta["format"] == "RGB"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tm(x)
        c5_ref = tm.forward_features(x)
        out = ours(x)
    _assert_close(out["linear"], ref)
    _assert_close(out["res5"], c5_ref)


def _caffe2_name(key):
    """Our name -> Caffe2/MSRA name, written independently of the converter (the inverse map)."""
    norm_field = {"weight": "s", "bias": "b"}
    parts = key.split(".")
    if parts[0] == "linear":
        return "fc1000_" + ("w" if parts[1] == "weight" else "b")
    if parts[0] == "stem":
        return "conv1_w" if parts[-1] == "weight" and parts[2] == "weight" else "res_conv1_bn_" + norm_field[parts[-1]]
    stage, block, conv = parts[0], parts[1], parts[2]
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[conv]
    base = f"{stage}_{block}_{branch}"
    return base + "_w" if parts[3] == "weight" else base + "_bn_" + norm_field[parts[-1]]


def _as_caffe2_blobs(model):
    """Caffe2 stores norms as an affine: s = gamma / sqrt(var + eps), b = beta - mean * s (no statistics)."""
    sd = model.state_dict()
    blobs = {}
    for k, v in sd.items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        if k.endswith("norm.weight"):
            base = k[: -len("weight")]
            s = v / torch.sqrt(sd[base + "running_var"] + 1e-5)
            blobs[_caffe2_name(k)] = s.numpy()
            blobs[_caffe2_name(base + "bias")] = (sd[base + "bias"] - sd[base + "running_mean"] * s).numpy()
        elif k.endswith("norm.bias"):
            continue
        else:
            blobs[_caffe2_name(k)] = v.numpy().copy()
    return blobs


@pytest.mark.parametrize("norm", ["FrozenBN", pytest.param("BN", marks=pytest.mark.slow)])
def test_caffe2_pkl_converts_and_loads_exactly(tmp_path, norm):
    ref = _randomize_norms(_ours(50, "FrozenBN", stride_in_1x1=True))
    blobs = _as_caffe2_blobs(ref)
    assert "res2_0_branch2a_w" in blobs and "res_conv1_bn_s" in blobs and "res4_0_branch1_bn_b" in blobs
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)  # optimizer blobs are ignored
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    assert detect_source(blobs) == "caffe2"
    ours = _ours(50, norm, stride_in_1x1=True)
    res = load_backbone_weights(ours, str(path))
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert res.source == "caffe2"
    assert res.meta == {"format": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0]}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), ref(x)
    _assert_close(a["res5"], b["res5"])
    _assert_close(a["linear"], b["linear"])


def test_detectron2_model_zoo_pkl_into_fpn(tmp_path):
    ref = _randomize_norms(_ours(50, "FrozenBN", stride_in_1x1=True, num_classes=0, out=("res2", "res5")))
    model = {f"backbone.bottom_up.{k}": v.numpy() for k, v in ref.state_dict().items()}
    model["backbone.fpn_lateral2.weight"] = np.zeros((256, 256, 1, 1), np.float32)
    model["roi_heads.box_predictor.cls_score.weight"] = np.zeros((81, 1024), np.float32)
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}))

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = build_backbone(cfg)

    det = Detector().eval()
    res = load_backbone_weights(det, str(path))
    assert res.prefix == "backbone.bottom_up." and res.source == "detectron2"
    assert res.missing_keys == []
    assert res.unexpected_keys == ["roi_heads.box_predictor.cls_score.weight"]
    assert torch.count_nonzero(det.backbone.fpn_lateral2.weight) == 0  # extra key loaded by its full name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(det.backbone.bottom_up(x)["res5"], ref(x)["res5"])


def test_missing_and_unexpected_keys_reported_by_name(caplog):
    tv = torchvision.models.resnet18()
    sd = tv.state_dict()
    del sd["layer4.1.conv2.weight"]
    ours = _ours(18, "BN", num_classes=0)  # no head: fc is unexpected
    with caplog.at_level("WARNING"):
        res = load_backbone_weights(ours, sd)
    assert res.missing_keys == ["res5.1.conv2.weight"]
    assert res.unexpected_keys == ["linear.weight", "linear.bias"]
    assert "res5.1.conv2.weight" in caplog.text and "linear.weight" in caplog.text


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    tv = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "r18_10cls.pth"
    torch.save(tv.state_dict(), str(path))
    ours = _ours(18, "BN", num_classes=1000)
    before = ours.stem.conv1.weight.clone()
    with pytest.raises(CheckpointError) as e:
        load_backbone_weights(ours, str(path))
    msg = str(e.value)
    assert "r18_10cls.pth" in msg and "linear.weight: checkpoint (10, 512) vs model (1000, 512)" in msg
    assert torch.equal(ours.stem.conv1.weight, before)  # nothing loaded


def test_wrong_depth_checkpoint_is_shape_error():
    tv = torchvision.models.resnet18()
    with pytest.raises(CheckpointError, match=r"res2\.0\.conv1\.weight: checkpoint \(64, 64, 3, 3\) vs model"):
        load_backbone_weights(_ours(50, "BN"), tv.state_dict())


def test_unknown_layout_and_bad_source():
    with pytest.raises(CheckpointError, match="cannot tell which ResNet naming"):
        load_backbone_weights(_ours(18), {"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unknown checkpoint source 'keras'"):
        load_backbone_weights(_ours(18), torchvision.models.resnet18().state_dict(), source="keras")


def test_resnet_d_variant_refused():
    sd = {"conv1.0.weight": torch.zeros(32, 3, 3, 3), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    with pytest.raises(CheckpointError, match="ResNet-D"):
        load_backbone_weights(_ours(50), sd)


def test_module_without_resnet():
    with pytest.raises(CheckpointError, match="no ResNet"):
        load_backbone_weights(nn.Linear(2, 2), torchvision.models.resnet18().state_dict())


def test_ddp_prefix_and_detr_style_prefix():
    sd = {f"module.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    res = load_backbone_weights(_ours(18, "BN"), sd)
    assert res.missing_keys == [] and res.unexpected_keys == []
    sd = {f"backbone.0.body.{k}": v for k, v in torchvision.models.resnet18().state_dict().items() if "fc" not in k}
    res = load_backbone_weights(_ours(18, "BN", num_classes=0), sd)
    assert res.missing_keys == [] and res.unexpected_keys == []


def test_load_checkpoint_file_is_reexported():
    assert callable(load_checkpoint_file)


def test_convert_weights_cli(tmp_path, capsys):
    tool = load_tool("convert_weights")
    src, dst = tmp_path / "r18.pth", tmp_path / "out" / "r18_ours.pth"
    torch.save(torchvision.models.resnet18().state_dict(), str(src))
    assert tool.main([str(src), str(dst), "--source", "timm"]) == 0
    raw = torch.load(str(dst), weights_only=True)
    assert raw["source"] == "timm" and raw["format"] == "RGB" and "res2.0.conv1.weight" in raw["model"]
    assert "torchvision" not in capsys.readouterr().err
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"cos\nsystem\n(S'true'\ntR.")  # protocol-0 pickle calling os.system
    assert tool.main([str(bad), str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "evil.pkl" in err and "os.system" in err
    assert not (tmp_path / "x.pth").exists()
