import os

import _dbnet  # noqa: E402  (tests/modeling/meta_arch/_dbnet.py)
import numpy as np
import pytest
import torch

from resnet_backbone.config import get_cfg
from resnet_backbone.evaluation.text_evaluation import polygon_iou
from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY, build_model
from resnet_backbone.modeling.meta_arch.dbnet import DBNet

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs")
tiny_cfg, rect, _input = _dbnet.tiny_cfg, _dbnet.rect, _dbnet.text_input


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_registered_and_built_from_config(model):
    assert META_ARCH_REGISTRY.get("DBNet") is DBNet
    assert isinstance(model, DBNet) and hasattr(model, "backbone")
    assert set(model.backbone.output_shape()) >= {"p2", "p3", "p4", "p5"}


def test_training_step_finite_losses_and_gradients(model):
    model.train()
    model.zero_grad()
    batch = [_input(), _input(70, 90, ignore=(False,))]  # different sizes: padded batch
    losses = model(batch)
    assert set(losses) == {"loss_prob", "loss_thresh", "loss_binary"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    g_backbone = model.backbone.bottom_up.stem.conv1.weight.grad
    assert g_backbone is not None and torch.isfinite(g_backbone).all() and g_backbone.abs().sum() > 0
    assert model.head.thresh_head[-1].weight.grad.abs().sum() > 0


def test_targets_mask_dont_care_and_treat_padding_as_background(model):
    batch = [_input(64, 96), _input(40, 60, ignore=(False,))]
    images = model.preprocess_image(batch)
    t = model.targets(batch, images)
    assert t["prob_map"].shape == (2, 64, 96)
    # image 0: the second polygon is don't care -> zero in both masks
    assert t["prob_mask"][0, 42:54, 12:48].max() == 0 and t["thresh_mask"][0, 42:54, 12:48].max() == 0
    assert t["prob_map"][0, 18, 34] == 1
    # image 1 is 40 x 60 inside a 64 x 96 canvas: the padding is supervised background (mask 1, no text)
    assert t["prob_mask"][1, 40:].min() == 1 and t["prob_mask"][1, :, 60:].min() == 1
    assert t["prob_map"][1, 40:].max() == 0 and t["prob_map"][1, :, 60:].max() == 0


def _eval_one(model) -> tuple[dict, dict]:
    """(the input without instances, the eval output) for one image; checks the output's keys."""
    model.eval()
    x = _input()
    x.pop("instances")
    with torch.no_grad():
        out = model([x])
    assert len(out) == 1 and set(out[0]) >= {"polygons", "boxes", "scores", "labels"}
    return x, out[0]


def test_eval_output_format_in_original_coordinates(model, monkeypatch):
    x, _ = _eval_one(model)
    # a hand-made probability map through the same post-processing: a blob at known place, 2x upscaled
    prob = torch.zeros(1, 1, 64, 96)
    prob[0, 0, 10:26, 20:70] = 0.95
    monkeypatch.setitem(model.postprocess_args, "unclip_ratio", 0.0)
    res = model.postprocess(prob, [x], [(64, 96)])[0]
    assert len(res["polygons"]) == 1 and res["polygons"][0].shape == (4, 2)
    assert polygon_iou(res["polygons"][0], rect(40, 20, 140, 52)) >= 0.9
    box = res["boxes"][0].tolist()
    assert box == pytest.approx([40, 20, 140, 52], abs=2.5)
    assert res["labels"].dtype == torch.int64 and res["labels"].tolist() == [0]
    assert res["scores"][0].item() == pytest.approx(0.95, abs=1e-4)


def test_bad_inputs_raise_naming_the_input(model):
    model.train()
    x = _input()
    x.pop("instances")
    with pytest.raises(ValueError, match="word.png.*instances"):
        model([x])
    x = _input()
    x["image"] = torch.zeros(1, 64, 96)
    with pytest.raises(ValueError, match="image"):
        model([x])
    x = _input()
    x["instances"].gt_polygons[0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model([x])
    with pytest.raises(ValueError):
        model([])


@pytest.mark.parametrize("name", ["Text/dbnet_R_50_FPN.yaml", "quickstart/dbnet_R_50_FPN_synthetic.yaml",
                                  "Text/dbnetpp_R_50_FPN.yaml", "quickstart/dbnetpp_R_50_FPN_synthetic.yaml"])
def test_configs_load(name):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    assert cfg.MODEL.META_ARCHITECTURE == "DBNet"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone"
    assert list(cfg.MODEL.FPN.IN_FEATURES) == ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.DBNET.ASF is ("dbnetpp" in name)  # DBNet++ = DBNet + Adaptive Scale Fusion
    assert cfg.MODEL.FPN.OUTPUT_CONVS is False  # the paper's layout: the head reads the top-down sums
    if "dbnetpp" in name:  # the same recipe as its DBNet config otherwise
        plain = get_cfg()
        plain.merge_from_file(os.path.join(CONFIG_DIR, name.replace("dbnetpp", "dbnet")))
        plain.MODEL.DBNET.ASF, plain.OUTPUT_DIR = True, cfg.OUTPUT_DIR
        assert plain.dump() == cfg.dump()


@pytest.mark.slow
def test_overfit_few_synthetic_text_images_to_hmean_090(tmp_path):
    """Train from scratch on 4 synthetic 128 px images (14 words) until hmean >= 0.9 on them.

    Measured on the shared, overloaded 2-core CPU (one thread), before the model's seed was fixed: one run reached
    hmean 0.78 / 0.92 / 0.96 at 125 / 150 / 175 iterations; another 0.38 / 0.82 / 1.00 at 150 / 175 / 200
    (4.5 min). With the seed fixed (torch.manual_seed(0) before the build): 0.38 / 0.82 / 1.00 at 150 / 175 / 200
    (2 min). Bounded at 300.
    """
    history = _dbnet.overfit_text(tmp_path, "test_dbnet_overfit_text", 0.9)
    assert history[-1][1] >= 0.9, history


def test_mapper_with_rotation_feeds_dbnet_polygons_and_dont_care(tmp_path, model):
    from resnet_backbone.data.dataset_mapper import DatasetMapper
    from resnet_backbone.data.synthetic.text import generate_text_dataset
    from resnet_backbone.data.text import load_text_json

    json_path = generate_text_dataset(tmp_path, "m", 2, image_size=96, seed=7)  # 12 words, 2 don't care
    records = load_text_json(json_path, tmp_path / "m")
    cfg = tiny_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.ROTATION_ANGLE = 10.0
    mapper = DatasetMapper(cfg, True)
    batch = [mapper(r) for r in records]
    n_ignored = 0
    for x, r in zip(batch, records):
        inst = x["instances"]
        assert min(x["image"].shape[-2:]) >= 128  # resized to 128, then rotated (the canvas may grow)
        assert inst.has("gt_polygons") and inst.has("gt_ignore") and len(inst) > 0
        assert int(inst.gt_ignore.sum()) <= sum(a["ignore"] for a in r["annotations"])
        n_ignored += int(inst.gt_ignore.sum())
    assert n_ignored > 0
    # the don't-care words reach the loss masks: zero at their centres
    images = model.preprocess_image(batch)
    t = model.targets(batch, images)
    for i, x in enumerate(batch):
        inst = x["instances"]
        for poly, ign in zip(inst.gt_polygons, inst.gt_ignore.tolist()):
            cx, cy = np.asarray(poly).mean(axis=0).astype(int)
            if ign and 0 <= cy < t["prob_mask"].shape[1] and 0 <= cx < t["prob_mask"].shape[2]:
                assert t["prob_mask"][i, cy, cx] == 0 and t["thresh_mask"][i, cy, cx] == 0
    model.train()
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------- the shipped configs: FPN without output convs
def _shipped(name: str, output_convs: bool | None = None):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    if output_convs is not None:
        cfg.MODEL.FPN.OUTPUT_CONVS = output_convs
    torch.manual_seed(0)
    return build_model(cfg)


def _calibrate_norms(model):
    """Eval-mode BatchNorms holding the statistics of a few random images (as a trained model's): folding them
    then changes the weights, and the features stay of order 1."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(3)
    images = [{"image": torch.randint(0, 256, (3, 64, 96), generator=g, dtype=torch.uint8)} for _ in range(2)]
    with torch.no_grad():
        model.head(model.backbone(model.preprocess_image(images).tensor))
    return model.eval()


@pytest.mark.parametrize("name", ["Text/dbnet_R_50_FPN.yaml", "Text/dbnetpp_R_50_FPN.yaml"])
def test_shipped_config_is_the_papers_layout_and_trains(name):
    model = _shipped(name)
    fpn = model.backbone
    assert fpn.output_convs is False and not any(".fpn_output" in k for k in model.state_dict())
    # the layout's whole difference: 4 output convs of 256 x 256 x 3 x 3 + bias (detectron2's FPN)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(_shipped(name, output_convs=True)) - count(model) == 4 * (256 * 256 * 9 + 256)
    # the head's inputs are the top-down sums: P5 is the lateral of C5, P4 = lateral(C4) + up(P5)
    model.eval()
    x = model.preprocess_image([_input()]).tensor
    with torch.no_grad():
        feats, c = fpn(x), fpn.bottom_up(x)
        p5 = fpn.fpn_lateral5(c["res5"])
        p4 = fpn.fpn_lateral4(c["res4"]) + torch.nn.functional.interpolate(p5, scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(feats["p5"], p5)
    torch.testing.assert_close(feats["p4"], p4)
    model.train()
    losses = model([_input(), _input(70, 90, ignore=(False,))])
    assert set(losses) == {"loss_prob", "loss_thresh", "loss_binary"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for conv in (fpn.fpn_lateral2, fpn.fpn_lateral5):  # the laterals feed the head directly now
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    _eval_one(model)


def test_shipped_config_fast_paths_equal_eager():
    """optimize_for_inference (norms folded, channels_last, the oneDNN prepack with the top-down add fused into
    the laterals) on the shipped DBNet config: the head's logits equal eager's."""
    import copy

    from resnet_backbone.modeling.fast_paths import optimize_for_inference
    from resnet_backbone.modeling.fast_paths.mkldnn import MkldnnConv2d, mkldnn_available

    eager = _calibrate_norms(_shipped("Text/dbnet_R_50_FPN.yaml"))
    image = torch.randint(0, 256, (3, 70, 90), generator=torch.Generator().manual_seed(5)).float()

    def logits(model):
        with torch.inference_mode():
            x = model.preprocess_image([{"image": image}]).tensor
            fused = model.head.fuse(model.backbone(x))
            return {"fused": fused, "prob": model.head.prob_head(fused), "thresh": model.head.thresh_head(fused)}

    ref = logits(eager)
    kinds = [dict(fuse_bn=True, channels_last=True)] + [dict(fuse_bn=True, mkldnn=True)] * mkldnn_available()
    for kw in kinds:
        fast = optimize_for_inference(copy.deepcopy(eager), **kw)
        if kw.get("mkldnn"):
            assert fast.backbone._lateral_add_fused and isinstance(fast.backbone.fpn_lateral3, MkldnnConv2d)
        got = logits(fast)
        for k in ref:
            err = float((got[k].float() - ref[k]).abs().max() / ref[k].abs().max())
            assert err <= 1e-4, (kw, k, err)

