"""Checkpointer: atomic save, exact resume, weights-only loading, best-model keeping.

A full checkpoint (`save(name, **extra)`) is one `torch.save`d dict:

    {"__format__": "resnet_backbone.checkpoint/1", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "scaler": ..., "iteration": int, "rng_state": {...},
     "format": "RGB"|"BGR", "pixel_mean": [...], "pixel_std": [...], **extra}

The `__format__` tag marks our own checkpoints (converters.py recognises them by it, source "ours").
With MODEL_EMA.ENABLED the trainer adds "model_ema" (the EMA of the weights and buffers, the model's names,
float32; engine/ema.py) and "data_position" / "grad_accum_steps" (engine/trainer.py); a Checkpointer made with
use_ema_weights=True loads "model_ema" into the model instead of "model" (evaluation).
"format" / "pixel_mean" / "pixel_std" (the input convention the model was trained with, as in a converted
file) are recorded when the model carries them (`input_format` and `pixel_mean` / `pixel_std` buffers, as
our meta-architectures do); a bare backbone records none.

It holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)` (RNG
states are stored as tensors / lists). Writing is atomic: the bytes go to a temporary file in the same
directory, are fsync'ed, and `os.replace`d onto the final name; then the `last_checkpoint` pointer (a
text file with the file name) is replaced the same way. A process killed at any moment therefore
leaves the previous checkpoint and pointer intact (at worst an orphan `.tmp` file, removed later).
Ctrl-C (KeyboardInterrupt) during a save removes the temp file and raises a KeyboardInterrupt whose
message says so and names the previous checkpoint, which `last_checkpoint` still names.

`last_checkpoint` may only name a file inside `save_dir` (OUTPUT_DIR); an empty, non-UTF-8 or
otherwise unusable pointer, or one naming a missing file, is a CheckpointError naming the pointer file
(and the target).

`resume_or_load(path, resume, allow_partial=True)`:
  - resume=True and `save_dir/last_checkpoint` exists: load everything from it (model, optimizer,
    scheduler, scaler, RNG states) and return its extra data ("iteration", ...);
  - otherwise load weights only from `path` (cfg.MODEL.WEIGHTS), read once by reader.read_weights and
    recognised by the format registry (formats.py: markers, never a share of overlapping names): into our
    FasterRCNN a whole detectron2 (.pkl / .pth) or torchvision Faster R-CNN file, into our DETR an official
    DETR file, is converted whole, heads included (a class count other than the model's, a missing head key or
    another detector architecture is a CheckpointError); our own full checkpoints (by their tag), converted files,
    untagged files in our / detectron2 names and plain state dicts load by name when their ResNet sits at the
    model's ResNet prefix (a shape mismatch is a CheckpointError naming the key and both shapes; missing /
    unexpected keys are logged by name; a plain state dict sharing no name with the model is a CheckpointError);
    anything else (torchvision / timm / detectron2 / Caffe2 backbone weights, and those elsewhere) goes through
    `converters.load_backbone_weights`. On every path the input convention the weights expect (recorded, or
    implied by their format) is compared with the model's INPUT.FORMAT / PIXEL_MEAN / PIXEL_STD: a warning
    naming both and the keys to set (reader.warn_pixel_convention).
  - allow_partial=False (evaluation: `tools/train_net.py --eval-only`): weights that leave any tensor of
    the model at its initialisation (or no weights at all) are a CheckpointError naming the file and the
    missing tensors grouped by module; the model is left as it was. Training keeps allow_partial=True
    (fine-tuning from backbone weights).

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
from .reader import PIXEL_KEYS, model_pixel_convention, read_weights, warn_pixel_convention

__all__ = ["Checkpointer", "CheckpointError", "check_output_dir", "get_rng_state", "set_rng_state",
           "atomic_torch_save", "FORMAT_TAG", "is_own_checkpoint"]

FORMAT_TAG = "resnet_backbone.checkpoint/1"
_FORMAT_FAMILY = "resnet_backbone.checkpoint/"  # FORMAT_TAG without its version
# what tools/train_net.py calls allow_partial=True; named in the error so the refusal says how to insist
ALLOW_PARTIAL_FLAG = "--allow-partial-weights"
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


def _in_chain(e: BaseException, kind: type) -> BaseException | None:
    """The first exception of type `kind` in e's cause/context chain (e included)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _os_error_in_chain(e: BaseException) -> OSError | None:
    return _in_chain(e, OSError)


def is_own_checkpoint(obj) -> bool:
    """True for a checkpoint our Checkpointer wrote: the `__format__` tag (any version) and a "model" dict."""
    return (isinstance(obj, dict) and isinstance(obj.get("__format__"), str)
            and obj["__format__"].startswith(_FORMAT_FAMILY) and isinstance(obj.get("model"), dict))


def _missing_by_module(missing: list[str], all_keys: list[str], limit: int = 30) -> str:
    """Missing tensor names folded into the outermost modules that are missing entirely:
    "backbone.bottom_up.res4.5 (15 tensors), roi_heads.box_predictor.cls_score.bias"."""
    missing_set = set(missing)
    total: dict[str, int] = {}
    absent: dict[str, int] = {}
    for k in all_keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i])
            total[p] = total.get(p, 0) + 1
            if k in missing_set:
                absent[p] = absent.get(p, 0) + 1
    groups: dict[str, int] = {}
    for k in missing:
        parts = k.split(".")
        name = k
        for i in range(1, len(parts)):
            p = ".".join(parts[:i])
            if absent.get(p, 0) == total[p]:
                name = p
                break
        groups[name] = groups.get(name, 0) + 1
    items = [g if g in missing_set else f"{g} ({n} tensor{'s' if n != 1 else ''})" for g, n in groups.items()]
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


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
        use_ema_weights: loading weights into the model (MODEL.WEIGHTS, or --eval-only --resume) takes a
            checkpoint's "model_ema" state (the EMA of the weights, MODEL_EMA.ENABLED) instead of its "model"
            when it has one; a file without one loads "model" with a warning. The trainer leaves this False (it
            resumes "model" and restores the EMA through its "model_ema" checkpointable).
        **checkpointables: more objects with state_dict()/load_state_dict() (the trainer adds "model_ema").
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, optimizer=None, scheduler=None, scaler=None,
                 save_to_disk: bool | None = None, use_ema_weights: bool = False, **checkpointables):
        self.model = _unwrap(model)
        self.save_dir = save_dir
        self.use_ema_weights = bool(use_ema_weights)
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
        data = {"__format__": FORMAT_TAG, "model": self.model.state_dict(), **model_pixel_convention(self.model)}
        for k, obj in self.checkpointables.items():
            data[k] = obj.state_dict()
        data["rng_state"] = get_rng_state()
        if self.best_metric is not None:
            data["best_metric"] = self.best_metric
        data.update(extra)
        os.makedirs(self.save_dir, exist_ok=True)
        path = os.path.join(self.save_dir, f"{name}.pth")
        existed = os.path.exists(path)
        logger.info("Saving checkpoint to %s", path)
        try:
            atomic_torch_save(data, path)
        except BaseException as e:  # a full disk inside torch.save surfaces as a RuntimeError from its zip writer
            interrupt = _in_chain(e, KeyboardInterrupt)
            if interrupt is not None:  # torch's zip writer turns it into "unexpected pos": say what happened
                raise self._save_interrupted(path, existed, tag_last) from interrupt
            os_err = _os_error_in_chain(e) if isinstance(e, Exception) else None
            if os_err is None:
                raise
            raise CheckpointError(f"cannot write checkpoint '{path}': {os_err.strerror or os_err} (the previous "
                                  "checkpoint and last_checkpoint are unchanged)") from e
        if tag_last:
            try:
                self.tag_last_checkpoint(os.path.basename(path))
            except KeyboardInterrupt as e:
                prev = self._pointer_target_for_message()
                msg = (f"checkpoint save interrupted (Ctrl-C) while updating last_checkpoint: '{path}' was written "
                       f"completely, but {os.path.join(self.save_dir, 'last_checkpoint')} still names "
                       + (f"'{prev}' (intact; --resume continues from it)" if prev else "no checkpoint (it was not "
                          "written)") + "; the partial temp file was removed")
                logger.error("%s", msg)
                raise KeyboardInterrupt(msg) from e
            except OSError as e:
                raise CheckpointError(f"wrote '{path}' but cannot update last_checkpoint: {e.strerror or e} "
                                      "(it still names the previous checkpoint)") from e
        return path

    def _pointer_target_for_message(self) -> str | None:
        """What last_checkpoint names now (its text), or None when there is no usable pointer."""
        try:
            return os.path.basename(self.get_checkpoint_file())
        except CheckpointError:
            return None

    def _save_interrupted(self, path: str, existed: bool, tag_last: bool) -> KeyboardInterrupt:
        base = os.path.basename(path)
        left = [p for p in glob.glob(os.path.join(glob.escape(self.save_dir), f".{glob.escape(base)}.*.tmp*"))
                if p.endswith(f".tmp{os.getpid()}")]
        temp = (f"the partial temp file could not be removed: delete {', '.join(left)}" if left
                else "the partial temp file was removed")
        prev = self._pointer_target_for_message()
        if tag_last:
            state = (f"the previous checkpoint '{os.path.join(self.save_dir, prev)}' is intact and last_checkpoint "
                     "still names it (--resume continues from it)" if prev else
                     "there is no previous checkpoint (last_checkpoint was not written)")
        else:
            state = (f"'{path}' keeps its previous contents" if existed else f"'{path}' was not created")
            if prev:
                state += f"; the previous checkpoint '{os.path.join(self.save_dir, prev)}' is intact"
        msg = f"checkpoint save interrupted (Ctrl-C) while writing '{path}': {state}; {temp}"
        logger.error("%s", msg)
        return KeyboardInterrupt(msg)

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
        """The checkpoint `save_dir/last_checkpoint` names: a file inside save_dir, else a CheckpointError."""
        p = os.path.join(self.save_dir, "last_checkpoint")
        fix = ("it should hold the file name of a checkpoint in OUTPUT_DIR, e.g. 'model_final.pth': write the name "
               "of the checkpoint to resume from into it, or delete it to start without resuming")
        try:
            with open(p, "rb") as f:
                raw = f.read(4096)
        except OSError as e:
            raise CheckpointError(f"cannot read '{p}': {e.strerror or e}") from e
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise CheckpointError(f"'{p}' is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                                  f"{fix}") from None
        if not name:
            raise CheckpointError(f"'{p}' is empty; {fix}")
        if "\x00" in name or "\n" in name or "\r" in name:
            what = "a NUL character" if "\x00" in name else "more than one line"
            raise CheckpointError(f"'{p}' holds {what} ({name[:80]!r}), not one file name; {fix}")
        root = os.path.abspath(self.save_dir)
        target = os.path.normpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise CheckpointError(f"'{p}' names '{name}' ({target}), which is outside OUTPUT_DIR '{root}'; "
                                  "last_checkpoint may only name a checkpoint in OUTPUT_DIR. To start from another "
                                  "run's checkpoint, set MODEL.WEIGHTS to it (weights only), or copy it into "
                                  f"OUTPUT_DIR and write its file name into '{p}'")
        if not os.path.exists(target):
            raise CheckpointError(f"'{p}' names '{name}', but '{target}' does not exist; {fix}")
        if not os.path.isfile(target):
            raise CheckpointError(f"'{p}' names '{name}', but '{target}' is not a file; {fix}")
        return target

    def resume_or_load(self, path: str, *, resume: bool = True, allow_partial: bool = True) -> dict:
        """See the module docstring. allow_partial=False: every tensor of the model must come from the file."""
        if resume and self.has_checkpoint():
            return self.load(self.get_checkpoint_file())
        if resume:
            logger.info("No checkpoint in '%s' to resume from; starting from MODEL.WEIGHTS=%r", self.save_dir, path)
        if path:
            self.load_weights(path, allow_partial=allow_partial)
        elif not allow_partial:
            where = f" and no last_checkpoint in '{self.save_dir}'" if resume and self.save_dir else ""
            raise CheckpointError(f"MODEL.WEIGHTS is empty{where}: there are no weights to evaluate, the model "
                                  "would keep its random initialisation. Set MODEL.WEIGHTS to a checkpoint (or "
                                  f"pass {ALLOW_PARTIAL_FLAG} to evaluate the initialised model anyway)")
        return {}

    def _read(self, path: str) -> dict:
        """torch.load(weights_only=True) within safe_pickle's size bounds (zip inflation, declared sizes); a
        CheckpointError naming the file for a missing, truncated, corrupt, oversized or code-carrying file."""
        from .safe_pickle import load_checkpoint_file

        return load_checkpoint_file(path, trust=False)

    def load(self, path: str) -> dict:
        """Load a full checkpoint (all states, RNG); return the remaining fields (iteration, ...)."""
        logger.info("Resuming from checkpoint %s", path)
        data = self._read(path)
        if not isinstance(data, dict) or data.get("__format__") != FORMAT_TAG:
            raise CheckpointError(f"'{path}' is not a resnet_backbone training checkpoint (no '__format__' tag); "
                                  "use MODEL.WEIGHTS to load weights from it")
        self._load_model_state(self._weights_of(data, path), path, strict=True)
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
        skip = {"__format__", "model", "rng_state", *PIXEL_KEYS, *self.checkpointables}
        if self.use_ema_weights:
            skip.add("model_ema")
        return {k: v for k, v in data.items() if k not in skip}

    def load_weights(self, path: str, allow_partial: bool = True) -> None:
        """Weights only, through the one reader (reader.read_weights) and the format registry (formats.py):
        a whole detectron2 / torchvision Faster R-CNN into our FasterRCNN and an official DETR into our DETR are
        converted whole; ours (tagged checkpoints, converted files), untagged files in our / detectron2 names and
        plain state dicts load by name when their ResNet sits where the model's does; anything else (and those,
        elsewhere) through converters.load_backbone_weights. The input convention the weights expect (recorded,
        or implied by their format) is compared with the model's on every path (reader.warn_pixel_convention).
        allow_partial=False: a CheckpointError (nothing loaded) unless the file covers every model tensor."""
        from .formats import convention_of, detect_format

        weights = read_weights(path, trust=False)
        fmt = detect_format(weights)
        if fmt.whole is not None and self._whole_model(fmt) is not None:
            converted = fmt.to_ours(weights, num_classes=self._whole_model(fmt))
            dropped = converted.get("dropped") or []
            logger.info("Loading a whole %s %s from %s (converted to our names%s)", converted["source"], fmt.whole,
                        path, f"; dropped {', '.join(dropped)}" if dropped else "")
            self._load_model_state(converted["model"], path, strict=False, allow_partial=allow_partial)
            warn_pixel_convention(converted, self.model, path, converted["source"], logger)
            return
        if fmt.name in ("ours", "detectron2", "state_dict") and self._resnet_in_place(weights.tensors):
            logger.info("Loading model weights from %s", path)
            tensors = weights.tensors
            if fmt.name == "state_dict" and not set(tensors) & set(self.model.state_dict()):
                raise CheckpointError(f"'{path}': none of its {len(tensors)} tensor names is the model's, and it "
                                      "is in no weight format we know (ours, torchvision, timm, detectron2, Caffe2, "
                                      f"whole detectors, DETR); first keys: {list(tensors)[:8]}")
            if is_own_checkpoint(weights.raw):  # our checkpoint: "model" or "model_ema"
                tensors = {k: v for k, v in self._weights_of(weights.raw, path).items() if isinstance(v, torch.Tensor)}
            self._check_num_classes(tensors, path)
            self._load_model_state(tensors, path, strict=False, allow_partial=allow_partial)
            source, convention = convention_of(fmt, weights)
            warn_pixel_convention(convention, self.model, path, source, logger)
            return
        result = self._load_with_converters(path, allow_partial=allow_partial, data=weights)
        warn_pixel_convention(result.meta, self.model, path, result.source, logger)

    def _whole_model(self, fmt) -> int | None:
        """The class count of the model `fmt` converts whole into, when self.model is one (our FasterRCNN for the
        detector formats, our DETR for DETR's); None otherwise."""
        from . import detector_converters

        own = self.model.state_dict()
        if fmt.whole == "FasterRCNN" and detector_converters.is_faster_rcnn_model(self.model):
            return own[f"{detector_converters.CLS_SCORE}.weight"].shape[0] - 1
        if fmt.whole == "DETR" and "query_embed.weight" in own and "class_embed.weight" in own:
            return own["class_embed.weight"].shape[0] - 1
        if fmt.whole == "RetinaNet":
            from .retinanet_converter import check_retinanet_classes, is_retinanet_model

            return check_retinanet_classes(own, "the model") if is_retinanet_model(self.model) else None
        return None

    def _resnet_in_place(self, tensors: dict) -> bool:
        """True when the file's ResNet (by its `stem.conv1.weight` / `res<k>.<i>.conv1.weight` names) sits at the
        model's ResNet prefix, or either has none: then loading by name is what the converters would do."""
        from .converters import _D2_STAGE, _D2_STEM, find_resnet_prefix

        theirs = {m.group(1) for k in tensors if (m := _D2_STEM.match(k) or _D2_STAGE.match(k))}
        if not theirs:
            return True
        try:
            ours = find_resnet_prefix(self.model)
        except CheckpointError:  # no ResNet (or several) in the model: names decide
            return True
        return theirs == {ours}

    def _check_num_classes(self, state: dict, path: str) -> None:
        """A box predictor for another class count than our FasterRCNN's: CheckpointError naming the config key."""
        from . import detector_converters

        if detector_converters.is_faster_rcnn_model(self.model):
            num_classes = self.model.state_dict()[f"{detector_converters.CLS_SCORE}.weight"].shape[0] - 1
            detector_converters.check_num_classes(state, num_classes, path)

    def _weights_of(self, data: dict, path: str) -> dict:
        """The state to put into the model from our checkpoint: "model", or "model_ema" with use_ema_weights."""
        has_ema = isinstance(data.get("model_ema"), dict) and bool(data["model_ema"])
        if self.use_ema_weights:
            if has_ema:
                logger.info("Using the EMA weights ('model_ema') of '%s' (MODEL_EMA.ENABLED)", path)
                return data["model_ema"]
            logger.warning("MODEL_EMA.ENABLED, but '%s' holds no EMA weights ('model_ema'): using its model "
                           "weights", path)
        elif has_ema and "model_ema" not in self.checkpointables:
            logger.info("'%s' also holds EMA weights ('model_ema'), not used: set MODEL_EMA.ENABLED True to load "
                        "them", path)
        return data["model"]

    def _refuse_partial(self, path: str, missing: list[str], own_keys: list[str]) -> None:
        raise CheckpointError(
            f"'{path}' leaves {len(missing)} of {len(own_keys)} model tensors (parameters and buffers) at their "
            f"random initialisation: {_missing_by_module(missing, own_keys)}. Evaluating such a model gives "
            "meaningless numbers: check MODEL.WEIGHTS and that the config builds the architecture the file was "
            f"trained with (e.g. MODEL.RESNETS.DEPTH), or pass {ALLOW_PARTIAL_FLAG} (allow_partial=True) to use it "
            "anyway")

    def _load_with_converters(self, path: str, allow_partial: bool = True, data=None):
        """`data`: the file as reader.read_weights gave it (None: the converters read `path`). Returns the
        converters' LoadResult."""
        from . import converters

        logger.info("Loading backbone weights from %s (converted)", path)
        target = self.model
        backup = None if allow_partial else {k: v.detach().clone() for k, v in target.state_dict().items()}
        result = converters.load_backbone_weights(target, path if data is None else data, name=path,
                                                  warn_pixels=False)
        if not allow_partial:
            loaded = set(getattr(result, "loaded_keys", ()))
            own_keys = [k for k in backup if not k.endswith("num_batches_tracked")]
            missing = [k for k in own_keys if k not in loaded]
            if missing:
                with torch.no_grad():
                    target.load_state_dict(backup)  # the refused file leaves the model as it was
                self._refuse_partial(path, missing, own_keys)
        return result

    def _load_model_state(self, state: dict, path: str, strict: bool, allow_partial: bool = True) -> None:
        from .fpn_layout import check_fpn_layout
        from .safe_pickle import check_finite_tensors

        check_finite_tensors(state, path)  # NaN / Inf weights: refused naming the tensors, nothing loaded
        own = self.model.state_dict()
        check_fpn_layout(state, own, path)  # output convs (MODEL.FPN.OUTPUT_CONVS) in one and not the other
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise CheckpointError(f"'{path}' does not fit the model (wrong architecture?); shape mismatch for "
                                  + "; ".join(bad[:20]) + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else ""))
        if not allow_partial:
            own_keys = [k for k in own if not k.endswith("num_batches_tracked")]
            missing = [k for k in own_keys if k not in state]
            if missing:
                self._refuse_partial(path, missing, own_keys)
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
