"""Optimizer, learning-rate schedule and gradient clipping from cfg.SOLVER.

`build_optimizer(cfg, model)`:
  - SOLVER.OPTIMIZER "SGD" (MOMENTUM, NESTEROV) or "ADAMW".
  - Parameters of normalization layers (BatchNorm/SyncBN/GroupNorm/LayerNorm/...) get WEIGHT_DECAY_NORM.
  - Biases get lr * BIAS_LR_FACTOR and, when SOLVER.WEIGHT_DECAY_BIAS is not None, that weight decay.
  - Parameters whose name starts with "backbone." (after an optional DDP "module." prefix) get
    lr * BACKBONE_MULTIPLIER.
  - Parameters with identical hyper-parameters share one param group; frozen parameters are left out.

`build_lr_scheduler(cfg, optimizer)`: a per-iteration schedule (call `.step()` once per iteration):
  warmup (SOLVER.WARMUP_METHOD "linear" or "constant", WARMUP_FACTOR, WARMUP_ITERS), then
  "WarmupMultiStepLR" (x GAMMA at each of SOLVER.STEPS) or "WarmupCosineLR" (half cosine from BASE_LR
  to BASE_LR_END over MAX_ITER). The lr of a group is its own base lr (which carries the multipliers
  above) times the schedule's factor, so multipliers survive the schedule. Both are torch LRSchedulers
  whose state_dict holds plain numbers only.

`build_grad_clipper(cfg)`: None when SOLVER.CLIP_GRADIENTS.ENABLED is False, else a function
  `clip(params)` applied between backward and step:
  "value": every gradient element clamped to +-CLIP_VALUE;
  "norm": each parameter's gradient rescaled to norm <= CLIP_VALUE on its own (detectron2's meaning);
  "full_model": the gradient of all parameters together rescaled to norm <= CLIP_VALUE (DETR's meaning).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "build_lr_scheduler",
    "build_grad_clipper",
    "get_default_optimizer_params",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "NORM_MODULE_TYPES",
]

NORM_MODULE_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, NORM_MODULE_TYPES):
        return True
    # FrozenBatchNorm2d has no parameters, but a user's own norm class may: match by name as a fallback.
    return type(module).__name__.lower().endswith(("batchnorm2d", "groupnorm", "layernorm"))


def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float | None = None,
    weight_decay_bias: float | None = None,
    bias_lr_factor: float = 1.0,
    backbone_multiplier: float = 1.0,
) -> list[dict]:
    """Param groups with per-parameter lr / weight decay (see the module docstring)."""
    seen: set[int] = set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        norm = _is_norm(module)
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            if full.startswith("module."):
                full = full[len("module."):]
            lr, wd = base_lr, weight_decay
            if norm and weight_decay_norm is not None:
                wd = weight_decay_norm
            if pname == "bias":
                lr = lr * bias_lr_factor
                if weight_decay_bias is not None:
                    wd = weight_decay_bias
            if full.startswith("backbone."):
                lr = lr * backbone_multiplier
            groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    params = get_default_optimizer_params(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        backbone_multiplier=s.BACKBONE_MULTIPLIER,
    )
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters (everything frozen?)")
    name = s.OPTIMIZER.upper()
    if name == "SGD":
        return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV,
                               weight_decay=s.WEIGHT_DECAY)
    if name == "ADAMW":
        # the fused kernel (one pass per tensor, vectorised) where torch has it: ~1.7x faster than the default
        # per-tensor loop on CPU (41 M DETR parameters: ~20% of a 2-core training step); same update
        devices = {p.device.type for g in params for p in g["params"]}
        fused = bool(devices) and devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(params, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, fused=fused or None)
    raise ValueError(f"SOLVER.OPTIMIZER: unknown optimizer '{s.OPTIMIZER}'; valid: SGD, ADAMW")


def _warmup_factor(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD: unknown warmup method '{method}'; valid: linear, constant")


class _WarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """Base: lr = base_lr * warmup(iter) * decay(iter), closed form in the iteration (self.last_epoch)."""

    def __init__(self, optimizer, warmup_factor: float, warmup_iters: int, warmup_method: str, last_epoch: int = -1):
        _warmup_factor(warmup_method, 0, 1, warmup_factor)  # validates the method name early
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def decay(self, it: int) -> float:
        raise NotImplementedError

    def factor(self, it: int) -> float:
        return _warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor) * self.decay(it)

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position (iteration) only; the schedule's shape comes from the config, so a resumed run
        with e.g. a longer MAX_ITER / other STEPS follows the new schedule from where it stopped."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


class WarmupMultiStepLR(_WarmupLR):
    def __init__(self, optimizer, milestones: Iterable[int], gamma: float = 0.1, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", last_epoch: int = -1):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {milestones}")
        self.milestones = milestones
        self.gamma = float(gamma)
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def decay(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, it)


class WarmupCosineLR(_WarmupLR):
    """Half cosine from 1 to `end_factor` over `max_iters` (then stays at end_factor)."""

    def __init__(self, optimizer, max_iters: int, warmup_factor: float = 0.001, warmup_iters: int = 1000,
                 warmup_method: str = "linear", end_factor: float = 0.0, last_epoch: int = -1):
        self.max_iters = int(max_iters)
        self.end_factor = float(end_factor)
        super().__init__(optimizer, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def decay(self, it: int) -> float:
        t = min(it, self.max_iters) / max(self.max_iters, 1)
        return self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * t))


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    if name == "WarmupMultiStepLR":
        steps = [x for x in s.STEPS if x <= s.MAX_ITER]
        return WarmupMultiStepLR(optimizer, steps, s.GAMMA, warmup_factor=s.WARMUP_FACTOR,
                                 warmup_iters=s.WARMUP_ITERS, warmup_method=s.WARMUP_METHOD)
    if name == "WarmupCosineLR":
        end = s.BASE_LR_END / s.BASE_LR if s.BASE_LR else 0.0
        return WarmupCosineLR(optimizer, s.MAX_ITER, warmup_factor=s.WARMUP_FACTOR, warmup_iters=s.WARMUP_ITERS,
                              warmup_method=s.WARMUP_METHOD, end_factor=end)
    raise ValueError(f"SOLVER.LR_SCHEDULER_NAME: unknown scheduler '{name}'; valid: WarmupMultiStepLR, WarmupCosineLR")


def build_grad_clipper(cfg) -> Callable[[Iterable[torch.Tensor]], None] | None:
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return None
    kind, value, norm_type = c.CLIP_TYPE, float(c.CLIP_VALUE), float(c.NORM_TYPE)

    def clip_value(params):
        torch.nn.utils.clip_grad_value_(list(params), value)

    def clip_norm(params):
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)

    def clip_full(params):
        torch.nn.utils.clip_grad_norm_(list(params), value, norm_type)

    table = {"value": clip_value, "norm": clip_norm, "full_model": clip_full}
    if kind not in table:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: unknown '{kind}'; valid: {', '.join(table)}")
    return table[kind]
