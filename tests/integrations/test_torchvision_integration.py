"""Our FPN backbone inside torchvision's FasterRCNN through TorchvisionBackboneAdapter (always runs)."""
import math

import pytest
import torch
from torchvision.models.detection import FasterRCNN

from resnet_backbone.config import get_cfg
from resnet_backbone.integrations.torchvision import TorchvisionBackboneAdapter
from resnet_backbone.modeling.backbone import build_backbone


def _backbone(name="build_resnet_fpn_backbone", out_features=("res2", "res3", "res4", "res5")):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    return build_backbone(cfg)


def _data():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 112, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def _predict(model, images):
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    for o, img in zip(out, images):
        assert set(o) >= {"boxes", "scores", "labels"}
        assert o["boxes"].shape[1] == 4 and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        h, w = img.shape[-2:]
        if len(o["boxes"]):
            # boxes in the input image's coordinates
            assert o["boxes"][:, 2].max() <= w + 1e-3 and o["boxes"][:, 3].max() <= h + 1e-3
    return out


def _train_step_and_predict(model):
    images, targets = _data()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.0)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    opt.zero_grad()
    total.backward()
    opt.step()
    # the step reaches our backbone (the FPN convs and the unfrozen ResNet stages get gradients)
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    assert changed > len(params) // 2
    assert model.backbone.body.fpn_lateral2.weight.grad is not None
    _predict(model, images)
    return losses


def test_adapter_with_torchvision_defaults_trains_and_predicts():
    torch.manual_seed(0)
    adapter = TorchvisionBackboneAdapter(_backbone())
    assert adapter.out_channels == 64
    assert adapter.out_names == ["0", "1", "2", "3", "pool"]
    assert adapter.featmap_names == ["0", "1", "2", "3"]
    feats = adapter(torch.zeros(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    # torchvision's default anchor generator (5 sizes) and MultiScaleRoIAlign(["0".."3"]) fit as they are
    model = FasterRCNN(adapter, num_classes=3, min_size=64, max_size=96,
                       rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                       rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64)
    _train_step_and_predict(model)
    # our module names survive under torchvision's "backbone.body." prefix
    assert "backbone.body.bottom_up.res2.0.conv1.weight" in model.state_dict()


def test_adapter_with_our_names_and_its_pooler_and_anchors():
    torch.manual_seed(0)
    adapter = TorchvisionBackboneAdapter(_backbone(), names="ours")
    assert adapter.out_names == ["p2", "p3", "p4", "p5", "p6"]
    pool = adapter.box_roi_pool()
    assert pool.featmap_names == ["p2", "p3", "p4", "p5"]
    anchors = adapter.anchor_generator()
    assert anchors.sizes == ((32,), (64,), (128,), (256,), (512,))
    model = FasterRCNN(adapter, num_classes=3, rpn_anchor_generator=anchors, box_roi_pool=pool, min_size=64,
                       max_size=96, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    _predict(model, _data()[0])


def test_adapter_on_a_single_resnet_stage():
    torch.manual_seed(0)
    resnet = _backbone("build_resnet_backbone", out_features=("res4",))
    adapter = TorchvisionBackboneAdapter(resnet)
    assert adapter.out_channels == 256 and adapter.out_names == ["0"] and adapter.featmap_names == ["0"]
    model = FasterRCNN(adapter, num_classes=3, rpn_anchor_generator=adapter.anchor_generator(sizes=[64]),
                       box_roi_pool=adapter.box_roi_pool(), min_size=64, max_size=96,
                       rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    _predict(model, _data()[0])


def test_adapter_errors():
    resnet = _backbone("build_resnet_backbone")
    with pytest.raises(ValueError, match="one `out_channels`"):
        TorchvisionBackboneAdapter(resnet)  # res2..res5 have 64..512 channels
    with pytest.raises(ValueError, match=r"\['res7'\] are not outputs"):
        TorchvisionBackboneAdapter(resnet, out_features=["res7"])
    with pytest.raises(ValueError, match="names must be one of"):
        TorchvisionBackboneAdapter(resnet, out_features=["res4"], names="timm")
    adapter = TorchvisionBackboneAdapter(resnet, out_features=["res4"])
    with pytest.raises(ValueError, match="2 sizes for 1 feature maps"):
        adapter.anchor_generator(sizes=[32, 64])
