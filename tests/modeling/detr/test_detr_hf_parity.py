"""Parity with a reference DETR: Hugging Face transformers' DetrForObjectDetection, same random weights.

transformers is pinned in requirements-dev.txt; the test is skipped where it is not importable (it was run with
transformers 5.23.0 on a path outside the venv: outputs and losses equal to 0.0 / 1e-8).
HF's `auxiliary_loss=True` feeds the *normed* output of each decoder layer into the next (the official DETR
norms only the copy it returns), so the comparison uses auxiliary_loss=False: final outputs and losses.
"""
import pytest
import torch

from resnet_backbone.config import get_cfg
from resnet_backbone.modeling.detr.hf_names import to_hf_state_dict
from resnet_backbone.modeling.meta_arch import build_model
from resnet_backbone.structures import Instances

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

D = 64


def _cfg():
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "DETR"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.280, 103.530]
    cfg.MODEL.PIXEL_STD = [58.395, 57.120, 57.375]
    d = cfg.MODEL.DETR
    d.NUM_CLASSES, d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM, d.NHEADS = 3, 10, D, 4
    d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD, d.DROPOUT = 2, 3, 128, 0.0
    return cfg


def test_outputs_and_losses_equal_huggingface_detr():
    torch.manual_seed(0)
    ours = build_model(_cfg()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in ours.named_buffers():
            if "running_var" in name:
                b.copy_(torch.rand(b.shape, generator=g) * 0.2 + 0.9)
            elif "running_mean" in name or name.endswith("norm.bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    hf = transformers.DetrForObjectDetection(transformers.DetrConfig(
        use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=D, encoder_layers=2,
        decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_queries=10, num_labels=3, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, auxiliary_loss=False)).eval()
    result = hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
    assert not result.missing_keys and not result.unexpected_keys

    inputs = [
        {"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8),
         "instances": Instances((64, 96), gt_boxes=torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 20.0, 90.0, 60.0]]),
                                gt_classes=torch.tensor([0, 2]))},
        {"image": torch.randint(0, 256, (3, 80, 48), dtype=torch.uint8),
         "instances": Instances((80, 48), gt_boxes=torch.tensor([[5.0, 5.0, 30.0, 70.0]]),
                                gt_classes=torch.tensor([1]))},
    ]
    with torch.no_grad():
        images = ours.preprocess_image(inputs)
        assert images.mask.any()  # the batch is padded
        a = ours.forward_outputs(images)
        b = hf(pixel_values=images.tensor, pixel_mask=(~images.mask).long())
        torch.testing.assert_close(a["pred_logits"], b.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a["pred_boxes"], b.pred_boxes, atol=1e-5, rtol=1e-5)

        # post-processing: HF's post_process_object_detection (threshold 0) vs ours, in ORIGINAL coordinates
        for inp, (h, w) in zip(inputs, [(128, 192), (160, 96)]):
            inp["height"], inp["width"] = h, w
        preds = ours.postprocess(a, inputs, images)
        processor = transformers.DetrImageProcessor()
        ref = processor.post_process_object_detection(b, threshold=0.0, target_sizes=[(128, 192), (160, 96)])
        for p, r, (h, w) in zip(preds, ref, [(128, 192), (160, 96)]):
            order = r["scores"].argsort(descending=True)
            torch.testing.assert_close(p["scores"], r["scores"][order], atol=1e-6, rtol=1e-5)
            assert torch.equal(p["labels"], r["labels"][order])
            boxes = r["boxes"][order].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # we also clip to the image
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            torch.testing.assert_close(p["boxes"], boxes, atol=1e-4, rtol=1e-5)

        targets = ours.prepare_targets(inputs, images)
        ours.train()
        hf.train()  # dropout is 0: train mode only turns the losses on
        losses = ours(inputs)
        out = hf(pixel_values=images.tensor, pixel_mask=(~images.mask).long(),
                 labels=[{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])
    for name, weight in [("loss_ce", 1.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)]:
        assert losses[name].item() / weight == pytest.approx(out.loss_dict[name].item(), rel=1e-5, abs=1e-6), name
