"""The one reader of weight files, and the one check of their pixel convention against the model's.

    read_weights(path_or_obj, trust=False, name=None) -> Weights(name, tensors, meta, raw, skipped)

reads a path (.pth / .pt via torch.load(weights_only=True), .pkl via the restricted unpickler; `trust=True` allows
a .pth that needs full unpickling: safe_pickle.load_checkpoint_file) or takes an already loaded object, and
unwraps it once: the state under "model" / "state_dict" / "blobs" / "model_state" (else the object itself), a
pickled nn.Module's state dict, DDP's "module." prefix (when every name has it) removed, numeric numpy arrays as
tensors (one copy per array however many names share it), Caffe2 "_momentum" optimizer blobs and values that are
no array left out (named in `skipped`); NaN / Inf tensors are refused naming them. `meta` keeps the file's
top-level plain values ("format", "pixel_mean", "pixel_std", "source", "__author__", "__format__", ...). Every
format converter (formats.py) takes its tensors from here.

    warn_pixel_convention(convention, model, name, source=None, log=None)

warns when the input convention weights expect ({"format", "pixel_mean", "pixel_std"}, recorded by the file or
implied by its source: PIXEL_CONVENTIONS; None = not known) differs from the one `model` normalises with (its
`input_format` and `pixel_mean` / `pixel_std` buffers, which our meta-architectures take from INPUT.FORMAT /
MODEL.PIXEL_MEAN / MODEL.PIXEL_STD), naming both and the config keys to set. A model that carries none (a bare
backbone) is not checked.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from . import CheckpointError
from .safe_pickle import check_finite_tensors, load_checkpoint_file

__all__ = ["Weights", "read_weights", "unwrap", "to_tensor", "PIXEL_KEYS", "PIXEL_CONVENTIONS", "TORCHVISION_PIXELS",
           "MSRA_PIXELS", "model_pixel_convention", "warn_pixel_convention"]

logger = logging.getLogger(__name__)

PIXEL_KEYS = ("format", "pixel_mean", "pixel_std")
TORCHVISION_PIXELS = {"format": "RGB", "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": [58.395, 57.12, 57.375]}
MSRA_PIXELS = {"format": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0]}
# the input convention each source's weights were trained with (detectron2: its model zoo's MSRA default; DETR:
# the official models, torchvision's)
PIXEL_CONVENTIONS = {
    "torchvision": TORCHVISION_PIXELS,
    "timm": TORCHVISION_PIXELS,
    "detectron2": MSRA_PIXELS,
    "caffe2": MSRA_PIXELS,
    "detr": TORCHVISION_PIXELS,
}
_CONFIG_KEYS = {"format": "INPUT.FORMAT", "pixel_mean": "MODEL.PIXEL_MEAN", "pixel_std": "MODEL.PIXEL_STD"}
_STATE_KEYS = ("model", "state_dict", "blobs", "model_state")


@dataclass
class Weights:
    """A weight file read and unwrapped once (see the module docstring)."""

    name: str
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    raw: Any = None
    skipped: dict[str, str] = field(default_factory=dict)  # name -> type of a value that is no array


def to_tensor(value) -> torch.Tensor | None:
    """A tensor for a tensor or a numeric numpy array (a writable, native-byte-order copy); None for anything else
    (object / string / structured arrays, dtypes torch has no type for)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            return None
        try:
            return torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("="), order="C", copy=True))
        except TypeError:  # e.g. float128
            return None
    return None


def unwrap(obj: Any, name: str) -> Weights:
    """The Weights of an already loaded object (see the module docstring); a CheckpointError naming `name` for an
    object that is no dict or holds no weight arrays."""
    if isinstance(obj, Weights):
        return obj
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{name}': expected a dict of weights, got {type(obj).__name__}")
    state: Any = obj
    meta: dict = {}
    for key in _STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)):
            state = inner
            meta = {k: v for k, v in obj.items() if k != key and isinstance(v, (str, list, tuple, int, float))}
            break
    if isinstance(state, nn.Module):  # a pickled whole model (only reachable with trust=True)
        state = state.state_dict()
    tensors: dict[str, torch.Tensor] = OrderedDict()
    skipped: dict[str, str] = {}
    copies: dict[int, torch.Tensor] = {}  # one copy of an array the file references under several names
    for k, v in state.items():
        if not isinstance(k, str) or k.endswith("_momentum"):  # Caffe2 optimizer blobs
            continue
        t = copies.get(id(v))
        if t is None:
            t = to_tensor(v)
            if t is None:
                skipped[k] = type(v).__name__
                continue
            copies[id(v)] = t
        tensors[k] = t
    check_finite_tensors(tensors, name)
    if not tensors:
        why = "".join(f"; key '{k}' holds a {kind}, not an array or tensor" for k, kind in list(skipped.items())[:1])
        raise CheckpointError(f"'{name}': no weight arrays found (top-level keys: {sorted(map(str, obj))[:10]}){why}")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = OrderedDict((k[len("module."):], v) for k, v in tensors.items())
        skipped = {k[len("module."):] if k.startswith("module.") else k: v for k, v in skipped.items()}
    return Weights(name, tensors, meta, obj, skipped)


def read_weights(path_or_obj, trust: bool = False, name: str | None = None) -> Weights:
    """Read (a path) and unwrap (see the module docstring). `name`: what messages call the input (default: the
    path, or "<in-memory checkpoint>")."""
    if isinstance(path_or_obj, Weights):
        return path_or_obj
    is_path = isinstance(path_or_obj, (str, os.PathLike))
    name = name or (os.fspath(path_or_obj) if is_path else "<in-memory checkpoint>")
    obj = load_checkpoint_file(os.fspath(path_or_obj), trust=trust) if is_path else path_or_obj
    return unwrap(obj, name)


# ------------------------------------------------------------------------------------------ pixel convention
def _shortest_float(v) -> float:
    """A float32 statistic as the shortest decimal that rounds to it (123.675, not 123.67500305175781)."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="0"))


def model_pixel_convention(model: nn.Module) -> dict:
    """{"format", "pixel_mean", "pixel_std"} the model normalises its input with, or {} if it carries none."""
    fmt = getattr(model, "input_format", None)
    mean, std = getattr(model, "pixel_mean", None), getattr(model, "pixel_std", None)
    if fmt not in ("RGB", "BGR") or not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return {}
    return {"format": fmt, "pixel_mean": [_shortest_float(v) for v in mean.detach().flatten().tolist()],
            "pixel_std": [_shortest_float(v) for v in std.detach().flatten().tolist()]}


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    try:
        a, b = [float(x) for x in a], [float(x) for x in b]
    except (TypeError, ValueError):
        return a == b
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in zip(a, b))


def warn_pixel_convention(convention: Mapping[str, Any] | None, model: nn.Module, name: str,
                          source: str | None = None, log: logging.Logger | None = None) -> list[str]:
    """Warn (on `log`, default this module's logger) when `convention` differs from the model's; returns the
    differing config keys (empty: same, or nothing to compare)."""
    have = model_pixel_convention(model)
    if not convention or not have:
        return []
    differ = [k for k in PIXEL_KEYS if convention.get(k) is not None and not _same(convention[k], have[k])]
    if differ:
        what = f" ({source} weights)" if source else ""
        (log or logger).warning(
            "'%s'%s expect %s: set %s in the config unless the change is deliberate", name, what,
            ", ".join(f"{_CONFIG_KEYS[k]} {_plain(convention[k])} (config: {have[k]})" for k in differ),
            ", ".join(f"{_CONFIG_KEYS[k]} {_plain(convention[k])}" for k in differ))
    return [_CONFIG_KEYS[k] for k in differ]


def _plain(v):
    return v if isinstance(v, str) else [float(x) for x in v]
