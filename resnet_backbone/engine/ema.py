"""Exponential moving average (EMA) of a model's weights (cfg.MODEL_EMA, used by engine/trainer.py).

    ema = ModelEMA(model, decay=0.9998, start_iter=0)
    ...optimizer.step()
    ema.update(model, iteration)          # after every optimizer step that changed the weights
    with ema.applied_to(model):           # the model holds the EMA weights inside the block, its own after it
        results = evaluate(model)

What is averaged: every entry of `model.state_dict()`, parameters AND buffers. Floating-point entries
(weights, BatchNorm running_mean / running_var) are averaged, `ema = decay * ema + (1 - decay) * value`,
kept in float32 on the model's device whatever the model's dtype; integer buffers (BatchNorm
num_batches_tracked) are copied. Averaging the BN statistics too keeps them consistent with the averaged
weights they normalise (as timm's ModelEmaV2 and d2go do).

`start_iter`: before this optimizer step the EMA simply tracks the model (a copy); from it on it averages.
With decay 0.9998 the average spans ~5000 steps (1 / (1 - decay)), so a short run without a start_iter
mostly averages the initial weights: use a smaller decay or a later start_iter for short runs.

The state (`state_dict()`: {name: tensor}, the model's own names) is what the checkpoint stores under
"model_ema"; `load_state_dict` restores it bit for bit (a ValueError naming the tensor for a wrong name,
shape or a non-finite value).
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _own_copy(v: torch.Tensor) -> torch.Tensor:
    v = v.detach()
    return v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone()


class ModelEMA:
    """The EMA of `model`'s state (see the module docstring)."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, start_iter: int = 0):
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and 0.0 < decay < 1.0):
            raise ValueError(f"MODEL_EMA.DECAY must satisfy 0 < decay < 1, got {decay!r}")
        self.decay = float(decay)
        self.start_iter = int(start_iter)
        self.state: dict[str, torch.Tensor] = {k: _own_copy(v) for k, v in _unwrap(model).state_dict().items()}
        #: True once load_state_dict restored a saved EMA (the trainer then keeps it instead of re-copying)
        self.restored = False

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def _model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        cur = _unwrap(model).state_dict()
        if cur.keys() != self.state.keys():
            extra = sorted(set(cur) - set(self.state))[:5]
            gone = sorted(set(self.state) - set(cur))[:5]
            raise RuntimeError(f"the model's tensors changed since the EMA was made (new: {extra}, gone: {gone})")
        return cur

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """EMA := the model's current state (e.g. after loading MODEL.WEIGHTS)."""
        for k, v in self._model_state(model).items():
            self.state[k].copy_(v)

    @torch.no_grad()
    def update(self, model: nn.Module, iteration: int) -> None:
        """One EMA step after optimizer step `iteration` (a plain copy while iteration < start_iter)."""
        cur = self._model_state(model)
        ema_f, cur_f = [], []
        for k, e in self.state.items():
            v = cur[k]
            if e.is_floating_point():
                ema_f.append(e)
                cur_f.append(v if v.dtype == torch.float32 else v.float())
            else:
                e.copy_(v)
        if not ema_f:
            return
        if iteration < self.start_iter:
            torch._foreach_copy_(ema_f, cur_f)
        else:  # ema + (1 - decay) * (value - ema) == decay * ema + (1 - decay) * value
            torch._foreach_lerp_(ema_f, cur_f, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Inside the block the model holds the EMA state; afterwards exactly its own again."""
        target = self._model_state(model)
        backup = {k: v.clone() for k, v in target.items()}
        try:
            with torch.no_grad():
                for k, v in target.items():
                    v.copy_(self.state[k])
            yield model
        finally:
            with torch.no_grad():
                for k, v in target.items():
                    v.copy_(backup[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"the EMA state must be a dict of tensors, got {type(state).__name__}")
        missing = [k for k in self.state if k not in state]
        unexpected = [k for k in state if k not in self.state]
        if missing or unexpected:
            raise ValueError(f"EMA tensors do not match the model: missing {missing[:10]}, unexpected "
                             f"{unexpected[:10]} (a checkpoint of another architecture?)")
        for k, own in self.state.items():
            v = state[k]
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"EMA tensor '{k}' is a {type(v).__name__}, not a tensor")
            if tuple(v.shape) != tuple(own.shape):
                raise ValueError(f"EMA tensor '{k}' has shape {tuple(v.shape)}, the model {tuple(own.shape)}")
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"EMA tensor '{k}' holds NaN/Inf values")
        for k, own in self.state.items():
            own.copy_(state[k])
        self.restored = True
