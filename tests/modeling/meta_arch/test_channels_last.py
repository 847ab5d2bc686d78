"""MODEL.CHANNELS_LAST is honoured in training by every detector: weights and the backbone's input in NHWC order,
the same losses and gradients as NCHW on the same weights.

DETR and DBNet once read the key only at inference (optimize_for_inference): a training run with it set ran NCHW,
where oneDNN's convolutions copied every 1x1 conv's activations to NHWC and back (a third of a DBNet step).
"""
import copy

import _dbnet  # noqa: E402  (tests/modeling/meta_arch/_dbnet.py)
import pytest
import test_detr
import test_faster_rcnn
import test_retinanet
import torch

from resnet_backbone.modeling.meta_arch import build_model


def _dbnet_case():
    return _dbnet.tiny_cfg(), [_dbnet.text_input(), _dbnet.text_input(ignore=(False,))]


def _detr():
    return test_detr.small_cfg(dec_layers=2), test_detr._inputs(with_instances=True)


def _faster_rcnn():
    return test_faster_rcnn.small_cfg(), [test_faster_rcnn.make_input(), test_faster_rcnn.make_input(image_id=1)]


def _retinanet():
    return test_retinanet.small_cfg(), [test_retinanet.make_input(), test_retinanet.make_input(image_id=1)]


@pytest.mark.parametrize("case", [_dbnet_case, _detr, _faster_rcnn, _retinanet],
                         ids=["dbnet", "detr", "faster_rcnn", "retinanet"])
def test_training_runs_channels_last_with_the_same_losses(case):
    cfg, inputs = case()
    cfg.MODEL.CHANNELS_LAST = False
    torch.manual_seed(0)
    nchw = build_model(cfg).train()
    cfg = cfg.clone()
    cfg.MODEL.CHANNELS_LAST = True
    nhwc = build_model(cfg).train()
    nhwc.load_state_dict(copy.deepcopy(nchw.state_dict()))
    conv = [m for m in nhwc.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            and m.weight.requires_grad][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()

    seen = []
    nhwc.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    losses = []
    for model in (nchw, nhwc):
        torch.manual_seed(1)  # the same proposal / target sampling on both
        out = model(copy.deepcopy(inputs))
        model.zero_grad()
        sum(out.values()).backward()
        losses.append({k: float(v.detach()) for k, v in out.items()})
    x = seen[0]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        assert losses[1][k] == pytest.approx(losses[0][k], rel=1e-4, abs=1e-5), k
    name = next(n for n, m in nhwc.backbone.named_modules() if m is conv)
    g_nchw = dict(nchw.backbone.named_modules())[name].weight.grad
    assert conv.weight.grad is not None and g_nchw is not None
    # summation order differs between the layouts, and DBNet's binary map amplifies it (k = 50): compare the
    # whole gradient (0.2 % apart on DBNet, a wrong layout or a dropped term is tens of %), not near-zero entries
    assert float((conv.weight.grad - g_nchw).norm() / g_nchw.norm()) < 1e-2
