"""Checkpointer: atomic save, exact resume, weights-only loading, best-model keeping.

A full checkpoint (`save(name, **extra)`) is one `torch.save`d dict:

    {"__format__": "resnet_backbone.checkpoint/1", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "iteration": int, "rng_state": {...}, **extra}

It holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)` (RNG
states are stored as tensors / lists). Writing is atomic: the bytes go to a temporary file in the same
directory, are fsync'ed, and `os.replace`d onto the final name; then the `last_checkpoint` pointer (a
text file with the file name) is replaced the same way. A process killed at any moment therefore
leaves the previous checkpoint and pointer intact (at worst an orphan `.tmp` file, removed later).

`resume_or_load(path, resume)`:
  - resume=True and `save_dir/last_checkpoint` exists: load everything from it (model, optimizer,
    scheduler, scaler, RNG states) and return its extra data ("iteration", ...);
  - otherwise load weights only from `path` (cfg.MODEL.WEIGHTS): our own full checkpoints (or a plain
    state dict of the whole model) load directly (a shape mismatch is a CheckpointError naming the key
    and both shapes; missing/unexpected keys are logged by name); any other file (torchvision /
    detectron2 / Caffe2 / timm backbone weights) goes through `resnet_backbone.checkpoint.converters`.

`maybe_save_best(results, iteration)` keeps `model_best.pth` by a metric such as "bbox/AP".
`check_output_dir(path, required_bytes)` fails early and clearly when the output directory cannot be
created or written, or lacks the free space for a checkpoint.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch
from torch import nn

from . import CheckpointError  # the package's error type (resnet_backbone/checkpoint/__init__.py)

__all__ = ["Checkpointer", "CheckpointError", "check_output_dir", "get_rng_state", "set_rng_state",
           "atomic_torch_save", "FORMAT_TAG"]

FORMAT_TAG = "resnet_backbone.checkpoint/1"
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA when present) RNG states as tensors / plain types."""
    py = random.getstate()
    npst = np.random.get_state()
    state = {
        "python": [int(py[0]), [int(x) for x in py[1]], py[2]],
        "numpy": {"keys": torch.from_numpy(npst[1].astype(np.int64)), "pos": int(npst[2]),
                  "has_gauss": int(npst[3]), "cached_gaussian": float(npst[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(final_path: str, write_fn) -> None:
    d = os.path.dirname(os.path.abspath(final_path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final_path)}.", suffix=f".tmp{os.getpid()}", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final_path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temp file in the same directory, fsync, then os.replace onto `path`."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _os_error_in_chain(e: BaseException) -> OSError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(save_dir: str) -> None:
    for p in glob.glob(os.path.join(save_dir, ".*.tmp*")):
        m = re.search(r"\.tmp(\d+)$", p)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.remove(p)
            except OSError:
                pass


# ------------------------------------------------------------------------------------- output dir
def check_output_dir(path: str, required_bytes: int = 0) -> None:
    """Raise CheckpointError (before any training) if `path` cannot be created/written or lacks space."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"output directory '{path}' cannot be created: {e.strerror or e}") from e
    if not os.path.isdir(path):
        raise CheckpointError(f"output directory '{path}' is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"output directory '{path}' is not writable: {e.strerror or e}") from e
    if required_bytes > 0:
        free = shutil.disk_usage(path).free
        if free < required_bytes:
            raise CheckpointError(
                f"output directory '{path}' has {free / 2**20:.1f} MiB free, but a checkpoint needs about "
                f"{required_bytes / 2**20:.1f} MiB (model + optimizer state, written to a temp file first)")


def estimate_checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Rough size of one full checkpoint: model state + optimizer state (one or two buffers per param)."""
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_param = 0
    if optimizer is not None:
        per_param = 2 if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return int(model_bytes + per_param * param_bytes + 2**20)


# ------------------------------------------------------------------------------------- checkpointer
def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Checkpointer:
    """Save / load training state to `save_dir` (see the module docstring).

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: directory for checkpoints and `last_checkpoint`.
        optimizer, scheduler, scaler: objects with state_dict()/load_state_dict(), saved and resumed.
        save_to_disk: write files (default: only on rank 0).
        **checkpointables: more objects with state_dict()/load_state_dict().
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, optimizer=None, scheduler=None, scaler=None,
                 save_to_disk: bool | None = None, **checkpointables):
        self.model = _unwrap(model)
        self.save_dir = save_dir
        self.checkpointables = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
                                **checkpointables}
        self.checkpointables = {k: v for k, v in self.checkpointables.items() if v is not None}
        if save_to_disk is None:
            from ..utils import comm

            save_to_disk = comm.is_main_process()
        self.save_to_disk = save_to_disk
        self.best_metric: float | None = None
        if save_dir and save_to_disk and os.path.isdir(save_dir):
            _remove_stale_tmp(save_dir)

    # ---------------------------------------------------------------- saving
    def save(self, name: str, tag_last: bool = True, **extra) -> str | None:
        """Write `save_dir/<name>.pth` atomically (and point last_checkpoint at it). Returns the path."""
        if not self.save_dir or not self.save_to_disk:
            return None
        data = {"__format__": FORMAT_TAG, "model": self.model.state_dict()}
        for k, obj in self.checkpointables.items():
            data[k] = obj.state_dict()
        data["rng_state"] = get_rng_state()
        if self.best_metric is not None:
            data["best_metric"] = self.best_metric
        data.update(extra)
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, f"{name}.pth")
        logger.info("Saving checkpoint to %s", path)
        try:
            atomic_torch_save(data, path)
        except Exception as e:  # a full disk inside torch.save surfaces as a RuntimeError from its zip writer
            os_err = _os_error_in_chain(e)
            if os_err is None:
                raise
            raise CheckpointError(f"cannot write checkpoint '{path}': {os_err.strerror or os_err} (the previous "
                                  "checkpoint and last_checkpoint are unchanged)") from e
        if tag_last:
            try:
                self.tag_last_checkpoint(os.path.basename(path))
            except OSError as e:
                raise CheckpointError(f"wrote '{path}' but cannot update last_checkpoint: {e.strerror or e} "
                                      "(it still names the previous checkpoint)") from e
        return path

    def tag_last_checkpoint(self, basename: str) -> None:
        target = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(target, lambda f: f.write(basename.encode("utf-8")))

    def maybe_save_best(self, results: dict, iteration: int, metric: str, mode: str = "max") -> bool:
        """Save `model_best.pth` when results[metric] (flat "bbox/AP" or nested) beats the best so far."""
        if not metric:
            return False
        value = _lookup_metric(results, metric)
        if value is None:
            logger.warning("SOLVER.BEST_CHECKPOINT_METRIC '%s' not in evaluation results (%s); not keeping a best "
                           "checkpoint", metric, ", ".join(sorted(_flatten(results))) or "none")
            return False
        if not math.isfinite(value):
            return False
        if mode not in ("max", "min"):
            raise ValueError(f"SOLVER.BEST_CHECKPOINT_MODE must be 'max' or 'min', got '{mode}'")
        better = self.best_metric is None or (value > self.best_metric if mode == "max" else value < self.best_metric)
        if better:
            self.best_metric = float(value)
            self.save("model_best", tag_last=False, iteration=iteration, best_metric_name=metric)
            logger.info("New best %s = %.4f at iteration %d: saved model_best.pth", metric, value, iteration)
        return better

    # ---------------------------------------------------------------- loading
    def has_checkpoint(self) -> bool:
        return bool(self.save_dir) and os.path.exists(os.path.join(self.save_dir, "last_checkpoint"))

    def get_checkpoint_file(self) -> str:
        p = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(p, encoding="utf-8") as f:
                name = f.read().strip()
        except OSError as e:
            raise CheckpointError(f"cannot read '{p}': {e}") from e
        return os.path.join(self.save_dir, name)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        if resume:
            logger.info("No checkpoint in '%s' to resume from; starting from MODEL.WEIGHTS=%r", self.save_dir, path)
        if path:
            self.load_weights(path)
        return {}

    def _read(self, path: str) -> dict:
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint file not found: '{path}'")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, garbage, or a pickle needing code
            raise CheckpointError(f"cannot load checkpoint '{path}': {type(e).__name__}: {str(e)[:300]}") from e

    def load(self, path: str) -> dict:
        """Load a full checkpoint (all states, RNG); return the remaining fields (iteration, ...)."""
        logger.info("Resuming from checkpoint %s", path)
        data = self._read(path)
        if not isinstance(data, dict) or data.get("__format__") != FORMAT_TAG:
            raise CheckpointError(f"'{path}' is not a resnet_backbone training checkpoint (no '__format__' tag); "
                                  "use MODEL.WEIGHTS to load weights from it")
        self._load_model_state(data["model"], path, strict=True)
        for k, obj in self.checkpointables.items():
            if k in data:
                try:
                    obj.load_state_dict(data[k])
                except Exception as e:
                    raise CheckpointError(f"'{path}': cannot restore '{k}' state: {e}") from e
            else:
                logger.warning("'%s' has no '%s' state; it starts fresh", path, k)
        if "rng_state" in data:
            set_rng_state(data["rng_state"])
        if "best_metric" in data:
            self.best_metric = float(data["best_metric"])
        skip = {"__format__", "model", "rng_state", *self.checkpointables}
        return {k: v for k, v in data.items() if k not in skip}

    def load_weights(self, path: str) -> None:
        """Weights only: our checkpoints / whole-model state dicts directly, anything else via converters."""
        data = None
        if path.endswith((".pth", ".pt", ".pth.tar", ".bin")):
            data = self._read(path)
        if isinstance(data, dict):
            state = data.get("model", data) if isinstance(data.get("model", None), dict) else data
            own = self.model.state_dict()
            tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if data.get("__format__") == FORMAT_TAG or (tensors and len(set(tensors) & set(own)) >= 0.5 * len(own)):
                logger.info("Loading model weights from %s", path)
                self._load_model_state(tensors, path, strict=False)
                return
        self._load_with_converters(path)

    def _load_with_converters(self, path: str) -> None:
        from . import converters

        logger.info("Loading backbone weights from %s (converted)", path)
        target = self.model
        result = converters.load_backbone_weights(target, path)
        meta = getattr(result, "meta", None) or {}
        if meta:
            logger.info("'%s' (%s weights) expects INPUT.FORMAT=%s, PIXEL_MEAN=%s, PIXEL_STD=%s", path,
                        getattr(result, "source", "?"), meta.get("format"), meta.get("pixel_mean"),
                        meta.get("pixel_std"))

    def _load_model_state(self, state: dict, path: str, strict: bool) -> None:
        own = self.model.state_dict()
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise CheckpointError(f"'{path}' does not fit the model (wrong architecture?); shape mismatch for "
                                  + "; ".join(bad[:20]) + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else ""))
        result = self.model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise CheckpointError(f"'{path}' does not fit the model: missing keys {missing[:20]}, "
                                  f"unexpected keys {unexpected[:20]}")
        if missing:
            logger.warning("Keys missing from '%s' (left as initialised): %s", path, ", ".join(missing))
        if unexpected:
            logger.warning("Keys in '%s' that the model does not have (ignored): %s", path, ", ".join(unexpected))


def _flatten(results: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _lookup_metric(results: dict, metric: str) -> float | None:
    flat = _flatten(results)
    v = flat.get(metric)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
