import pytest
import torch
from _tools import load_tool
from torch import nn

from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.backbone import BACKBONE_REGISTRY, Backbone
from resnet_backbone.modeling.detr.box_ops import box_cxcywh_to_xyxy
from resnet_backbone.modeling.meta_arch import build_model
from resnet_backbone.modeling.meta_arch.detr import DETR
from resnet_backbone.structures import ImageList, Instances

NUM_CLASSES = 3


def small_cfg(dec_layers=3):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DETR"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    d = cfg.MODEL.DETR
    d.NUM_CLASSES = NUM_CLASSES
    d.HIDDEN_DIM = 64
    d.NHEADS = 4
    d.ENC_LAYERS = 2
    d.DEC_LAYERS = dec_layers
    d.DIM_FEEDFORWARD = 128
    return cfg


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def _inputs(with_instances=False):
    a = {"image": _image(64, 96, 1), "height": 128, "width": 192, "image_id": 1, "file_name": "a.jpg"}
    b = {"image": _image(96, 64, 2), "height": 96, "width": 64, "image_id": 2, "file_name": "b.jpg"}
    if with_instances:
        a["instances"] = Instances((64, 96), gt_boxes=torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 20.0, 90.0, 60.0]]),
                                   gt_classes=torch.tensor([0, 2]))
        b["instances"] = Instances((96, 64), gt_boxes=torch.tensor([[5.0, 5.0, 30.0, 90.0]]),
                                   gt_classes=torch.tensor([1]))
    return [a, b]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(small_cfg()).eval()


def test_registered_and_output_shapes(model):
    assert isinstance(model, DETR)
    with torch.no_grad():
        out = model.raw_outputs(_inputs())
    assert out["pred_logits"].shape == (2, 100, NUM_CLASSES + 1)
    assert out["pred_boxes"].shape == (2, 100, 4)
    assert out["pred_boxes"].min() >= 0 and out["pred_boxes"].max() <= 1
    assert len(out["aux_outputs"]) == 2  # DEC_LAYERS - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 100, NUM_CLASSES + 1) and aux["pred_boxes"].shape == (2, 100, 4)


def test_module_names_follow_the_official_layout(model):
    keys = set(model.state_dict())
    for k in ["input_proj.weight", "query_embed.weight", "class_embed.bias", "bbox_embed.layers.2.weight",
              "transformer.decoder.norm.weight", "backbone.res5.1.conv2.norm.running_var"]:
        assert k in keys
    assert not any(k.startswith("criterion") or k.startswith("pixel_") for k in keys)


class PatchBackbone(Backbone):
    """Each 32x32 patch -> one feature cell (kernel = stride = 32): padding cannot leak into valid cells."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, kernel_size=32, stride=32)
        self._out_features = ["res5"]
        self._out_feature_channels = {"res5": channels}
        self._out_feature_strides = {"res5": 32}

    def forward(self, x):
        return {"res5": torch.relu(self.conv(x))}


if "build_detr_test_patch_backbone" not in BACKBONE_REGISTRY:
    @BACKBONE_REGISTRY.register()
    def build_detr_test_patch_backbone(cfg, input_shape):
        return PatchBackbone()


@pytest.fixture(scope="module")
def patch_model():
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_detr_test_patch_backbone"
    return build_model(cfg).eval()


def test_padding_does_not_change_predictions(patch_model):
    """Each image alone and in a padded batch give the same outputs: the mask is respected by the position
    encoding, the encoder self-attention and the decoder cross-attention.

    A CNN with overlapping receptive fields (the ResNet) lets border activations see the padding, in the
    official DETR too, so batched and single outputs of a real ResNet differ a little at the borders. To test
    what DETR itself must get right, the backbone here maps each 32x32 patch to one cell and the image sizes
    are multiples of 32: valid cells are then identical alone and batched, and padded cells (non-zero after
    input_proj's bias) can only change the result if some stage ignores the mask.
    """
    model = patch_model
    inputs = _inputs()
    inputs.append({"image": _image(32, 32, 3)})
    with torch.no_grad():
        batched = model.raw_outputs(inputs)
        assert model.preprocess_image(inputs).tensor.shape[-2:] == (96, 96)
        for i, inp in enumerate(inputs):
            alone = model.raw_outputs([inp])
            torch.testing.assert_close(batched["pred_logits"][i], alone["pred_logits"][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched["pred_boxes"][i], alone["pred_boxes"][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched["aux_outputs"][0]["pred_boxes"][i],
                                       alone["aux_outputs"][0]["pred_boxes"][0], atol=1e-4, rtol=1e-4)
        preds = model(inputs)
        assert len(preds) == 3
        torch.testing.assert_close(preds[0]["boxes"], model([inputs[0]])[0]["boxes"], atol=1e-3, rtol=1e-4)


def test_padding_matters_without_the_mask(patch_model, monkeypatch):
    """Control for the test above: if the mask were ignored, the batched outputs would differ."""
    model = patch_model
    inputs = _inputs()
    with torch.no_grad():
        alone = model.raw_outputs([inputs[0]])
        monkeypatch.setattr(ImageList, "mask", property(lambda self: torch.zeros(
            self.tensor.shape[0], *self.tensor.shape[-2:], dtype=torch.bool)))
        batched = model.raw_outputs(inputs)
    assert not torch.allclose(batched["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-3)


def test_inference_output_contract(model):
    inputs = _inputs()
    with torch.no_grad():
        raw = model.raw_outputs(inputs)
        preds = model(inputs)
    assert len(preds) == 2
    for i, (p, inp) in enumerate(zip(preds, inputs)):
        assert set(p) == {"boxes", "scores", "labels"}
        assert p["boxes"].shape == (100, 4) and p["scores"].shape == (100,) and p["labels"].dtype == torch.int64
        assert p["labels"].min() >= 0 and p["labels"].max() < NUM_CLASSES  # "no object" never reported
        assert torch.all(p["scores"][:-1] >= p["scores"][1:])  # sorted
        prob = raw["pred_logits"][i].softmax(-1)[:, :-1]
        best = prob.max(-1)
        q = torch.nonzero(torch.isclose(best.values, p["scores"][0]))[0, 0]
        assert p["labels"][0] == best.indices[q]
        # boxes scaled to the ORIGINAL size ("height", "width"), not the network input size
        expected = box_cxcywh_to_xyxy(raw["pred_boxes"][i, q]) * torch.tensor(
            [inp["width"], inp["height"], inp["width"], inp["height"]], dtype=torch.float32)
        expected[0::2] = expected[0::2].clamp(0, inp["width"])
        expected[1::2] = expected[1::2].clamp(0, inp["height"])
        torch.testing.assert_close(p["boxes"][0], expected, atol=1e-4, rtol=1e-5)


def test_top_k_detections_per_image():
    cfg = small_cfg(dec_layers=1)
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    m = build_model(cfg).eval()
    with torch.no_grad():
        preds = m(_inputs())
    assert all(len(p["boxes"]) == 7 for p in preds)


def test_training_returns_weighted_losses_with_gradients():
    m = build_model(small_cfg()).train()
    losses = m(_inputs(with_instances=True))
    expected = {f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert m.query_embed.weight.grad is not None and m.query_embed.weight.grad.abs().sum() > 0
    assert m.backbone.res5[0].conv1.weight.grad.abs().sum() > 0
    assert m.transformer.encoder.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0


def test_targets_are_normalized_by_the_unpadded_size():
    m = build_model(small_cfg(dec_layers=1))
    inputs = _inputs(with_instances=True)
    targets = m.prepare_targets(inputs, m.preprocess_image(inputs))
    # image a is 64 x 96 (h x w): box [10, 8, 50, 40] -> cx 30/96, cy 24/64, w 40/96, h 32/64
    torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([30 / 96, 24 / 64, 40 / 96, 32 / 64]))
    torch.testing.assert_close(targets[1]["boxes"][0], torch.tensor([17.5 / 64, 47.5 / 96, 25 / 64, 85 / 96]))
    assert targets[0]["labels"].tolist() == [0, 2]


def test_image_without_boxes_trains():
    m = build_model(small_cfg(dec_layers=1)).train()
    inputs = _inputs(with_instances=True)
    inputs[1]["instances"] = Instances((96, 64), gt_boxes=torch.zeros(0, 4),
                                       gt_classes=torch.zeros(0, dtype=torch.int64))
    losses = m(inputs)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_are_named():
    m = build_model(small_cfg(dec_layers=1)).train()
    inputs = _inputs()
    with pytest.raises(ValueError, match=r"a\.jpg.*instances"):
        m(inputs)
    inputs = _inputs(with_instances=True)
    inputs[1]["instances"] = Instances((96, 64), gt_boxes=torch.tensor([[1.0, 1, 5, 5]]), gt_classes=torch.tensor([7]))
    with pytest.raises(ValueError, match=r"b\.jpg.*gt_classes"):
        m(inputs)
    inputs = _inputs()
    inputs[0]["image"] = torch.zeros(64, 96)
    with pytest.raises(ValueError, match=r"a\.jpg.*'image'"):
        m.eval()(inputs)


def test_backbone_must_output_res5():
    cfg = small_cfg(dec_layers=1)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_model(cfg)


def test_dc5_r50_backbone():
    cfg = small_cfg(dec_layers=1)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    m = build_model(cfg).eval()
    assert m.backbone.output_shape()["res5"].stride == 16 and m.input_proj.in_channels == 2048
    with torch.no_grad():
        out = m.raw_outputs(_inputs())
    assert out["pred_boxes"].shape == (2, 100, 4)


def test_paper_config_optimizer_groups():
    """detr_R_50_500ep.yaml through the shared solver: AdamW, backbone lr 1e-5, others 1e-4, wd 1e-4 everywhere."""
    import os

    from resnet_backbone.solver.build import build_optimizer

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "COCO-Detection",
                                     "detr_R_50_500ep.yaml"))
    assert cfg.SOLVER.MAX_ITER == 500 * (118287 // 64) and cfg.SOLVER.STEPS == (400 * (118287 // 64),)
    dc5 = get_cfg()
    dc5.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs", "COCO-Detection",
                                     "detr_R_50_DC5_500ep.yaml"))
    assert dc5.MODEL.RESNETS.RES5_DILATION == 2 and dc5.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER
    # the small model keeps the test fast; the optimizer rules are the same
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.DETR.ENC_LAYERS = cfg.MODEL.DETR.DEC_LAYERS = 1
    cfg.MODEL.DETR.HIDDEN_DIM, cfg.MODEL.DETR.DIM_FEEDFORWARD = 32, 64
    model = build_model(cfg)
    assert not model.backbone.stem.conv1.weight.requires_grad and not model.backbone.res2[0].conv1.weight.requires_grad
    assert model.backbone.res3[0].conv1.weight.requires_grad
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4), name
            assert wd_of[id(p)] == pytest.approx(1e-4), name


def test_train_net_trains_and_evaluates_detr(tmp_path, monkeypatch):
    """The quickstart config through tools/train_net.py (engine, data pipeline, COCOEvaluator), shrunk."""
    import os

    from resnet_backbone.data.synthetic.shapes import generate_shapes_dataset
    from resnet_backbone.utils.events import read_metrics

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
    generate_shapes_dataset(str(tmp_path / "data" / "synthetic_shapes"), "train", 4, image_size=64, seed=0)
    generate_shapes_dataset(str(tmp_path / "data" / "synthetic_shapes"), "val", 2, image_size=64, seed=1)
    monkeypatch.setenv("RB_DATASETS", str(tmp_path / "data"))
    train_net = load_tool("train_net")
    out = tmp_path / "out"
    argv = ["--config-file", os.path.join(root, "configs", "quickstart", "detr_R_50_synthetic.yaml"),
            "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
            "MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.DIM_FEEDFORWARD", "64", "MODEL.DETR.ENC_LAYERS", "1",
            "MODEL.DETR.DEC_LAYERS", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0", "LOG_PERIOD", "1",
            "OUTPUT_DIR", str(out)]
    results = train_net.main(train_net.default_argument_parser().parse_args(argv))
    assert "AP50" in results["bbox"]
    train_lines = [m for m in read_metrics(out / "metrics.json") if "total_loss" in m]
    assert [m["iteration"] for m in train_lines] == [0, 1]
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_0"} <= set(train_lines[-1])
    assert os.path.exists(out / "model_final.pth")


def test_torchvision_imagenet_weights_initialize_the_backbone(tmp_path):
    """The paper config's MODEL.WEIGHTS is a torchvision ResNet state dict: it lands in DETR's `backbone.`."""
    import torchvision

    from resnet_backbone.checkpoint.checkpointer import Checkpointer

    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    m = build_model(small_cfg(dec_layers=1))
    query_before = m.query_embed.weight.detach().clone()
    Checkpointer(m, save_to_disk=False).load_weights(str(tmp_path / "resnet18.pth"))
    assert torch.equal(m.backbone.res3[0].conv1.weight, tv.layer2[0].conv1.weight)
    assert torch.equal(m.backbone.stem.conv1.norm.running_var, tv.bn1.running_var)
    assert torch.equal(m.query_embed.weight, query_before)  # the DETR head keeps its initialization
