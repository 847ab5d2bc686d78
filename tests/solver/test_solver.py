import io
import math

import pytest
import torch
from torch import nn

from resnet_backbone.config import get_cfg
from resnet_backbone.solver import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_grad_clipper,
    build_lr_scheduler,
    build_optimizer,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.gn = nn.GroupNorm(2, 4)


def _lrs(sched, opt, iters):
    out = []
    for _ in range(iters):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_param_groups_norm_bias_backbone():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    model = _Net()
    opt = build_optimizer(cfg, model)
    hp = {}
    for g in opt.param_groups:
        for p in g["params"]:
            hp[id(p)] = (g["lr"], g["weight_decay"])
    m = model
    assert hp[id(m.backbone[0].weight)] == pytest.approx((0.01, 1e-4))
    assert hp[id(m.backbone[0].bias)] == pytest.approx((0.02, 0.0))
    assert hp[id(m.backbone[1].weight)] == pytest.approx((0.01, 0.0))  # norm: no decay, backbone lr
    assert hp[id(m.backbone[1].bias)] == pytest.approx((0.02, 0.0))
    assert hp[id(m.head.weight)] == pytest.approx((0.1, 1e-4))
    assert hp[id(m.head.bias)] == pytest.approx((0.2, 0.0))
    assert hp[id(m.gn.weight)] == pytest.approx((0.1, 0.0))
    assert len(hp) == sum(1 for _ in model.parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_frozen_params_left_out_and_adamw():
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    model = _Net()
    model.backbone.requires_grad_(False)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.backbone[0].weight) not in ids and id(model.head.weight) in ids


def test_bad_optimizer_name():
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*LAMB"):
        build_optimizer(cfg, _Net())


def test_multistep_with_linear_warmup_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupMultiStepLR(opt, [6, 8], gamma=0.1, warmup_factor=0.001, warmup_iters=4, warmup_method="linear")
    lrs = _lrs(s, opt, 10)
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[2] == pytest.approx(0.001 * 0.5 + 0.5)
    assert lrs[4:6] == pytest.approx([1.0, 1.0])
    assert lrs[6:8] == pytest.approx([0.1, 0.1])
    assert lrs[8:10] == pytest.approx([0.01, 0.01])


def test_constant_warmup_and_cosine_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    s = WarmupCosineLR(opt, max_iters=10, warmup_factor=0.1, warmup_iters=2, warmup_method="constant")
    lrs = _lrs(s, opt, 11)
    assert lrs[0] == pytest.approx(2.0 * 0.1 * 1.0)
    assert lrs[1] == pytest.approx(2.0 * 0.1 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lrs[5] == pytest.approx(2.0 * 0.5)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_scheduler_from_cfg_keeps_multipliers_and_state_dict_roundtrip():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = (5, 100)  # a step past MAX_ITER is ignored
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    model = _Net()
    opt = build_optimizer(cfg, model)
    s = build_lr_scheduler(cfg, opt)
    for _ in range(7):
        opt.step()
        s.step()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[0] == pytest.approx(0.1 * 0.1 * 0.1)  # backbone weight after one decay
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(cfg, _Net())
    s2 = build_lr_scheduler(cfg, opt2)
    s2.load_state_dict(state)
    assert s2.last_epoch == 7
    opt2.step()
    s2.step()
    opt.step()
    s.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])


def test_cosine_from_cfg_end_lr():
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.BASE_LR_END = 0.01
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.WARMUP_ITERS = 0
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    s = build_lr_scheduler(cfg, opt)
    lrs = _lrs(s, opt, 11)
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.01)


def test_bad_scheduler_and_warmup_names():
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = "Poly"
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME.*Poly"):
        build_lr_scheduler(cfg, opt)
    cfg = get_cfg()
    cfg.SOLVER.WARMUP_METHOD = "exp"
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        build_lr_scheduler(cfg, opt)


@pytest.mark.parametrize("kind", ["value", "norm", "full_model"])
def test_grad_clipping(kind):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = kind
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a = nn.Parameter(torch.zeros(4))
    b = nn.Parameter(torch.zeros(4))
    a.grad = torch.full((4,), 3.0)
    b.grad = torch.full((4,), 0.1)
    build_grad_clipper(cfg)([a, b])
    if kind == "value":
        assert a.grad.max() == pytest.approx(1.0) and b.grad.max() == pytest.approx(0.1)
    elif kind == "norm":
        assert a.grad.norm() == pytest.approx(1.0) and b.grad.norm() == pytest.approx(0.2)
    else:
        total = torch.cat([a.grad, b.grad]).norm()
        assert total == pytest.approx(1.0, rel=1e-4)
        assert (a.grad / b.grad).mean() == pytest.approx(30.0, rel=1e-4)


def test_grad_clipper_disabled_and_bad_type():
    cfg = get_cfg()
    assert build_grad_clipper(cfg) is None
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "l3"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_grad_clipper(cfg)
