"""Trainer: the training loop that drives any registered detector from one cfg.

    trainer = Trainer(cfg)                 # model, optimizer, scheduler, AMP, DDP, checkpointer
    trainer.resume_or_load(resume=True)    # last checkpoint (all states) or MODEL.WEIGHTS (weights only)
    results = trainer.train()              # loop + periodic checkpoint/eval + final eval

Per iteration: a batch from the resumable loader (data/build.py), the model's RNG streams
re-seeded from (SEED, iteration, rank) — so that a resumed run repeats the uninterrupted one exactly
and every rank draws differently — forward (under autocast in SOLVER.AMP.DTYPE when SOLVER.AMP.ENABLED
says so for this device, see utils/precision.py; a GradScaler for float16 on CUDA), a check that every loss
term is finite (all ranks agree), backward, optional gradient clipping, a check that the gradients are finite,
optimizer and scheduler step.

Non-finite loss or gradients (SOLVER.NONFINITE_POLICY):
  "error": raise `NonFiniteLossError` naming the iteration and the loss term(s) (or parameters) that are
           NaN/Inf; nothing more is saved, so the last good checkpoint stays the last one;
  "skip":  the update is skipped (scheduler still advances), counted in `nonfinite_skipped`.

Gradient accumulation (SOLVER.GRAD_ACCUM_STEPS = k > 1): one iteration is one optimizer step over k
micro-batches of IMS_PER_BATCH images each (effective batch IMS_PER_BATCH x k); every micro-batch's loss is
scaled by 1/k before its backward, so the gradient is that of the mean loss over the effective batch. MAX_ITER,
the LR schedule, CHECKPOINT_PERIOD, EVAL_PERIOD and LOG_PERIOD count optimizer steps; logged losses are the
means over the k micro-batches. Under DDP the first k-1 backward passes run in `no_sync` (one all-reduce per
step). The loader advances by micro-batches: the checkpoint records "data_position" (micro-batches consumed),
and a resumed run reads on from there, so a resume is bit-exact; a step skipped for a non-finite loss still
consumes its k micro-batches. Each micro-batch m > 0 re-seeds the model RNG from (SEED, iteration, rank, m).

EMA (MODEL_EMA.ENABLED; engine/ema.py): after every optimizer step that updated the weights the EMA of the
weights and buffers (float32, model's device) is updated; periodic and final evaluation (and model_best's
metric) run on the EMA weights; every checkpoint stores them as "model_ema" next to the raw "model" (which
resume continues from); `--eval-only` with MODEL_EMA.ENABLED loads "model_ema", the weights that were evaluated.
A run started from MODEL.WEIGHTS (or resumed from a checkpoint without "model_ema") starts its EMA from the
loaded weights.

Every LOG_PERIOD iterations: metrics.json line + TensorBoard scalars + progress bar (rank 0).
Every CHECKPOINT_PERIOD iterations: model_XXXXXXX.pth; at the end model_final.pth.
Every TEST.EVAL_PERIOD iterations and at the end: `Trainer.test` on DATASETS.TEST; results are logged,
written to metrics.json and, with SOLVER.BEST_CHECKPOINT_METRIC, kept as model_best.pth. The test loaders and
evaluators (the COCO ground truth) are built at the first evaluation and kept for this trainer's later ones.
With TEST.PRECISE_BN.ENABLED the BatchNorm statistics are recomputed first (at the same iterations, and at the
end; before that iteration's checkpoint, so a resume sees them) over NUM_ITER batches of a loader of their own
(engine/precise_bn.py), the training stream untouched.

Setup is default_setup's (engine/defaults.py: validation, output dir, logging, config.yaml, SEED -1 drawn); a
config that came through it is not validated again, one that did not is validated here before anything is built.
SOLVER.REFERENCE_WORLD_SIZE scales the config to the world size here (detectron2's auto_scale_workers).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import warnings
from collections import OrderedDict

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..checkpoint.checkpointer import Checkpointer, check_output_dir, estimate_checkpoint_bytes
from ..config.validate import validate_cfg
from ..solver import build_grad_clipper, build_lr_scheduler, build_optimizer
from ..utils import comm
from ..utils.events import EventStorage, JSONWriter, TensorboardWriter
from ..utils.seed import derive_seed, seed_all_rng
from .defaults import resolve_seed
from .ema import ModelEMA

__all__ = ["Trainer", "NonFiniteLossError", "ResultsMismatchError", "flatten_results", "print_results_table",
           "verify_results"]

logger = logging.getLogger(__name__)
_MODEL_TAG = 0x0D15EA5E
_PRECISE_BN_TAG = 0x0B57A75
# the test loaders and evaluators of the trainer whose evaluation is running (Trainer.test is a classmethod)
_TEST_PARTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("trainer_test_parts", default=None)


def _kept(kept: dict | None, key, build, *args):
    """kept[key], built by `build(*args)` the first time; just `build(*args)` without a store."""
    if kept is None:
        return build(*args)
    if key not in kept:
        kept[key] = build(*args)
    return kept[key]


class NonFiniteLossError(FloatingPointError):
    """A loss term or gradient became NaN/Inf (SOLVER.NONFINITE_POLICY="error")."""


def flatten_results(results: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out.update(flatten_results(v, f"{prefix}{k}/"))
        else:
            try:
                out[f"{prefix}{k}"] = float(v)
            except (TypeError, ValueError):
                continue
    return out


class ResultsMismatchError(RuntimeError):
    """The final evaluation missed TEST.EXPECTED_RESULTS."""


def verify_results(cfg, results: dict) -> None:
    """detectron2's check of TEST.EXPECTED_RESULTS, [[task, metric, expected, tolerance], ...], against `results`
    ({task: {metric: value}}, or {dataset: {task: ...}} for several DATASETS.TEST: the first dataset's, as
    detectron2): ResultsMismatchError naming every metric that is missing, not finite or off by more than its
    tolerance. Nothing to do when the list is empty."""
    import math

    expected = list(cfg.TEST.EXPECTED_RESULTS)
    if not expected:
        return
    if len(cfg.DATASETS.TEST) > 1 and results:
        results = next(iter(results.values()))
    bad = []
    for task, metric, value, tolerance in expected:
        actual = results.get(task, {}).get(metric) if isinstance(results.get(task), dict) else None
        if actual is None:
            bad.append(f"{task}/{metric} missing (the results have {', '.join(sorted(flatten_results(results)))})")
        elif not math.isfinite(float(actual)):
            bad.append(f"{task}/{metric} = {actual} is not finite")
        elif abs(float(actual) - value) > tolerance:
            bad.append(f"{task}/{metric} = {float(actual):.4f}, expected {value} +- {tolerance}")
    if bad:
        raise ResultsMismatchError("TEST.EXPECTED_RESULTS not met: " + "; ".join(bad))
    logger.info("TEST.EXPECTED_RESULTS: all %d metric(s) within tolerance", len(expected))


def print_results_table(results: dict) -> str:
    """A readable table of {"task": {"metric": value}} (e.g. bbox AP, AP50, ...); returns the text."""
    lines = []
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            lines.append(f"{task}: {metrics}")
            continue
        main = {k: v for k, v in metrics.items() if not str(k).startswith("AP-")}
        per_class = {k: v for k, v in metrics.items() if str(k).startswith("AP-")}
        keys = list(main)
        if keys:
            lines.append(f"Evaluation results for {task}:")
            lines.append("| " + " | ".join(f"{k:>7}" for k in keys) + " |")
            lines.append("|" + "|".join("-" * 9 for _ in keys) + "|")
            lines.append("| " + " | ".join(_fmt(main[k]) for k in keys) + " |")
        if per_class:
            lines.append(f"Per-category {task} AP:")
            for k, v in per_class.items():
                lines.append(f"  {k[3:]:<20} {_fmt(v)}")
    return "\n".join(lines)


def _fmt(v) -> str:
    try:
        return f"{float(v):7.3f}"
    except (TypeError, ValueError):
        return f"{v!s:>7}"


def _revert_sync_batchnorm(module: nn.Module) -> int:
    """Replace every nn.SyncBatchNorm in `module` by an nn.BatchNorm2d with the same state; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
            count += 1
        else:
            count += _revert_sync_batchnorm(child)
    return count


class Trainer:
    """Builds everything from cfg and runs the loop (see the module docstring). Subclass and override the
    `build_*` methods to change a part (detectron2's DefaultTrainer pattern)."""

    #: DDP's find_unused_parameters (set True in a subclass for a model that leaves parameters unused)
    ddp_find_unused_parameters = False

    def __init__(self, cfg):
        self.world_size, self.rank = comm.get_world_size(), comm.get_rank()
        # Setup (validation, output dir, logging, config.yaml, SEED -1 drawn) is default_setup's; a config that
        # came through it is not checked again (validate_cfg returns at once). One built without it is checked
        # here, every problem named, before anything is built. The model's builder checks run when this class
        # builds the model from the config (a subclass with its own build_model owns its model's checks).
        validate_cfg(cfg, world_size=self.world_size, model=type(self).builds_model_from_cfg())
        cfg = self.auto_scale_workers(cfg, self.world_size)
        self.cfg = cfg
        self.seed = resolve_seed(cfg)
        self.nonfinite_policy = cfg.SOLVER.NONFINITE_POLICY  # "error" or "skip" (validated)
        if int(cfg.SEED) < 0:
            logger.info("SEED is -1: this run uses seed %d", self.seed)
        seed_all_rng(derive_seed(self.seed, _MODEL_TAG, self.rank))
        model = self.build_model(cfg)
        self.optimizer = self.build_optimizer(cfg, model)
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.grad_accum_steps = int(cfg.SOLVER.GRAD_ACCUM_STEPS)
        ema_on = bool(cfg.MODEL_EMA.ENABLED)
        if cfg.OUTPUT_DIR and comm.is_main_process():
            # two files may exist at once while the next one is written (+ the float32 EMA copy when enabled)
            ema_bytes = sum(t.numel() * 4 for t in model.state_dict().values()) if ema_on else 0
            check_output_dir(cfg.OUTPUT_DIR, 2 * (estimate_checkpoint_bytes(model, self.optimizer) + ema_bytes))
        self.device = torch.device(cfg.MODEL.DEVICE)
        self._setup_amp(cfg)
        self.model = self._wrap_ddp(cfg, model)
        self.clipper = build_grad_clipper(cfg)
        # after the DDP wrap (which may swap SyncBN/BN modules): the EMA holds the trained model's tensors
        self.ema = ModelEMA(self.unwrapped_model, cfg.MODEL_EMA.DECAY, cfg.MODEL_EMA.START_ITER) if ema_on else None
        extra_states = {"model_ema": self.ema} if self.ema is not None else {}
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, optimizer=self.optimizer, scheduler=self.scheduler,
                                         scaler=self.scaler if self.scaler.is_enabled() else None, **extra_states)
        if self.grad_accum_steps > 1:
            logger.info("Gradient accumulation: %d micro-batches of %d images per optimizer step (effective batch "
                        "%d); SOLVER.MAX_ITER and the LR schedule count optimizer steps", self.grad_accum_steps,
                        int(cfg.SOLVER.IMS_PER_BATCH), int(cfg.SOLVER.IMS_PER_BATCH) * self.grad_accum_steps)
        if self.ema is not None:
            logger.info("Model EMA: decay %g from optimizer step %d; evaluation uses the EMA weights",
                        self.ema.decay, self.ema.start_iter)
        self.start_iter = 0
        self._data_start = 0  # micro-batch position the train loader starts at
        self.iter = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.storage: EventStorage | None = None
        self.nonfinite_skipped = 0
        self.last_results: dict = {}
        self._last_checkpoint_path: str | None = None
        self._test_parts: dict = {}  # the test loaders and evaluators Trainer.test built for this trainer
        self._train_dicts: list | None = None  # DATASETS.TRAIN's dataset dicts, read by the first train loader
        self._precise_bn_logged = False

    @classmethod
    def builds_model_from_cfg(cls) -> bool:
        """True when `build_model` is this class's own (the registered detector MODEL.META_ARCHITECTURE names)."""
        return getattr(cls.build_model, "__func__", None) is Trainer.build_model.__func__

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """detectron2's rule for SOLVER.REFERENCE_WORLD_SIZE > 0 that differs from `num_workers`: a copy of `cfg`
        keeping the images per process, IMS_PER_BATCH and BASE_LR scaled by num_workers / REFERENCE_WORLD_SIZE,
        MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD and TEST.EVAL_PERIOD divided by it (rounded), and
        REFERENCE_WORLD_SIZE set to `num_workers`. Otherwise `cfg` itself."""
        old = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
        if old == 0 or old == num_workers:
            return cfg
        if cfg.SOLVER.IMS_PER_BATCH % old:
            from ..config import ConfigError

            raise ConfigError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not a multiple of "
                              f"SOLVER.REFERENCE_WORLD_SIZE {old}")
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        s, scale = cfg.SOLVER, num_workers / old
        s.IMS_PER_BATCH = int(round(s.IMS_PER_BATCH * scale))
        s.BASE_LR = s.BASE_LR * scale
        s.MAX_ITER = int(round(s.MAX_ITER / scale))
        s.WARMUP_ITERS = int(round(s.WARMUP_ITERS / scale))
        s.STEPS = tuple(int(round(x / scale)) for x in s.STEPS)
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        s.CHECKPOINT_PERIOD = int(round(s.CHECKPOINT_PERIOD / scale))
        s.REFERENCE_WORLD_SIZE = num_workers
        logger.info("SOLVER.REFERENCE_WORLD_SIZE %d, world size %d: auto-scaled to IMS_PER_BATCH %d, BASE_LR %g, "
                    "MAX_ITER %d, WARMUP_ITERS %d, STEPS %s, CHECKPOINT_PERIOD %d, TEST.EVAL_PERIOD %d", old,
                    num_workers, s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, s.WARMUP_ITERS, s.STEPS, s.CHECKPOINT_PERIOD,
                    cfg.TEST.EVAL_PERIOD)
        if frozen:
            cfg.freeze()
        return cfg

    # ------------------------------------------------------------------ builders (overridable)
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        from ..modeling.meta_arch import build_model

        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    def build_train_loader(self, cfg, start_iter: int):
        """An iterable of batches starting at `start_iter`; override for custom data (keep it resumable). The
        dataset dicts of DATASETS.TRAIN are read once per trainer (PreciseBN builds a loader of its own at every
        evaluation)."""
        from ..data.build import build_detection_train_loader, get_detection_dataset_dicts

        if self._train_dicts is None:
            self._train_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
                                                            cfg.DATALOADER.ON_BAD_SAMPLE)
        return build_detection_train_loader(cfg, dataset=self._train_dicts, seed=self.seed, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        from ..data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        """From MetadataCatalog.get(dataset_name).evaluator_type: "coco" -> COCOEvaluator, "text" -> TextEvaluator."""
        import os

        from ..data import MetadataCatalog
        from ..data.builtin import dataset_folder_name  # a dataset given by path gets a folder-safe name

        if output_folder is None and cfg.OUTPUT_DIR:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_folder_name(dataset_name))
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if kind == "coco":
            from ..evaluation import COCOEvaluator

            return COCOEvaluator(dataset_name, output_folder, backend=cfg.TEST.EVALUATOR_BACKEND)
        if kind == "text":
            from ..evaluation.text_evaluation import TextEvaluator

            return TextEvaluator(dataset_name, output_folder)
        raise NotImplementedError(f"dataset '{dataset_name}': no evaluator for evaluator_type={kind!r} "
                                  "(set it in MetadataCatalog to 'coco' or 'text')")

    @classmethod
    def test(cls, cfg, model: nn.Module, evaluators=None) -> dict:
        """Evaluate `model` on every DATASETS.TEST name; returns {name: results} (just the results for one).
        `evaluators`: one per DATASETS.TEST name, built with build_evaluator when not given. Called from a
        trainer's periodic / final evaluation, the test loaders and evaluators it builds are kept for the next
        call (built once per trainer: the COCO ground truth is loaded once); each evaluator is reset by
        inference_on_dataset before its pass. Called on its own (--eval-only) everything is built afresh."""
        from ..evaluation import inference_on_dataset

        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if cfg.TEST.AUG.ENABLED:  # test-time augmentation replaces the plain pass; the result keys stay the same
            from ..modeling.meta_arch.tta import build_tta_model

            model = build_tta_model(cfg, model)
        names = list(cfg.DATASETS.TEST)
        if evaluators is not None and not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators for {len(names)} DATASETS.TEST")
        kept = _TEST_PARTS.get()  # {(kind, name): loader / evaluator} of the trainer calling, or None
        results = OrderedDict()
        for i, name in enumerate(names):
            loader = _kept(kept, ("loader", name), cls.build_test_loader, cfg, name)
            evaluator = evaluators[i] if evaluators is not None else \
                _kept(kept, ("evaluator", name), cls.build_evaluator, cfg, name)
            res = inference_on_dataset(model, loader, evaluator) or {}
            results[name] = res
            if comm.is_main_process() and res:
                logger.info("Evaluation results for %s:\n%s", name, print_results_table(res))
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    # ------------------------------------------------------------------ setup
    def _setup_amp(self, cfg):
        """SOLVER.AMP.ENABLED (False / True / "auto" / "force") and DTYPE against this device (utils/precision.py);
        the choice and its reason are logged once. validate_cfg has already refused what cannot run."""
        from ..utils.precision import resolve_amp

        decision = resolve_amp(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, self.device)
        (logger.warning if decision.emulated else logger.info)("Training precision: %s", decision.reason)
        self.amp = decision  # .dtype (float32 when off), .enabled, .reason
        use_scaler = decision.enabled and self.device.type == "cuda" and decision.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type if self.device.type == "cuda" else "cpu",
                                           enabled=use_scaler)

    def _wrap_ddp(self, cfg, model):
        if self.world_size <= 1:
            return model
        if self.device.type == "cuda":
            if cfg.MODEL.RESNETS.NORM == "SyncBN":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif _revert_sync_batchnorm(model):
            logger.warning("SyncBN needs CUDA devices; on CPU each process normalizes its own batch (plain BN)")
        kwargs = {"find_unused_parameters": self.ddp_find_unused_parameters}
        if self.device.type == "cuda":
            kwargs["device_ids"] = [comm.get_local_rank()]
        with warnings.catch_warnings():  # rank-local BN statistics, like detectron2 (broadcast_buffers=False)
            warnings.simplefilter("ignore", FutureWarning)
            return nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, **kwargs)

    @property
    def unwrapped_model(self) -> nn.Module:
        m = self.model
        return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m

    def resume_or_load(self, resume: bool = True) -> None:
        """--resume with a last_checkpoint: restore everything and continue after its iteration.
        Otherwise load cfg.MODEL.WEIGHTS (weights only) and start at iteration 0."""
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.ema is not None and not self.ema.restored:
            self.ema.reset(self.unwrapped_model)  # from the loaded weights, not the random initialisation
        self._data_start = 0
        if resume and "iteration" in extra:
            self.start_iter = int(extra["iteration"]) + 1
            # checkpoints from before gradient accumulation existed: one micro-batch per iteration
            self._data_start = int(extra.get("data_position", self.start_iter * int(extra.get("grad_accum_steps", 1))))
            saved_steps = int(extra.get("grad_accum_steps", 1))
            if saved_steps != self.grad_accum_steps:
                logger.warning("The checkpoint was trained with SOLVER.GRAD_ACCUM_STEPS %d, this run uses %d: the "
                               "effective batch changes from here on (data continues at micro-batch %d)",
                               saved_steps, self.grad_accum_steps, self._data_start)
            if "seed" in extra and int(extra["seed"]) != self.seed:
                logger.info("Resuming with the checkpoint's seed %d (config: %d)", int(extra["seed"]), self.seed)
                self.seed = int(extra["seed"])
            self.nonfinite_skipped = int(extra.get("nonfinite_skipped", 0))
            logger.info("Resumed: continuing at iteration %d", self.start_iter)

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg = self.cfg
        self.iter = self.start_iter
        logger.info("Starting training from iteration %d to %d", self.start_iter, self.max_iter)
        self.storage = EventStorage(self.start_iter, window=max(int(cfg.LOG_PERIOD), 1))
        self.writers = []
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            import os

            self.writers = [JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), cfg.LOG_PERIOD, self.start_iter),
                            TensorboardWriter(cfg.OUTPUT_DIR, cfg.LOG_PERIOD, self.start_iter)]
        pbar = None
        if comm.is_main_process():
            from tqdm import tqdm

            pbar = tqdm(total=self.max_iter, initial=self.start_iter, desc="train", dynamic_ncols=True,
                        mininterval=1.0, smoothing=0.1)
        self.model.train()
        # the loader counts micro-batches (= iterations when SOLVER.GRAD_ACCUM_STEPS is 1)
        loader = self.build_train_loader(cfg, self._data_start) if self.start_iter < self.max_iter else None
        self._data_iter = iter(loader) if loader is not None else None
        self._loader = loader
        try:
            for it in range(self.start_iter, self.max_iter):
                self.iter = it
                self.storage.iter = it
                self.run_step()
                self._after_step(pbar)
            self.iter = self.max_iter
        except BaseException as e:
            logger.error("Training stopped at iteration %d: %s: %s", self.iter, type(e).__name__, e)
            self._flush_writers()
            for w in self.writers:
                w.close()
            raise
        finally:
            if pbar is not None:
                pbar.close()
            self._data_iter = None  # lets DataLoader workers exit
        self._flush_writers()
        if self.start_iter < self.max_iter or not self.checkpointer.has_checkpoint():
            self._save("model_final", self.max_iter - 1)
        results = {}
        if len(cfg.DATASETS.TEST):
            results = self._evaluate(self.max_iter - 1)
        for w in self.writers:
            w.close()
        return results

    def _autocast(self):
        return self.amp.autocast()

    def run_step(self) -> None:
        """One optimizer step over SOLVER.GRAD_ACCUM_STEPS micro-batches (see the module docstring)."""
        it, steps = self.iter, self.grad_accum_steps
        t0 = time.perf_counter()
        data_time = 0.0
        sums: dict[str, torch.Tensor] = {}  # loss term -> sum over micro-batches of its rank-mean
        self.optimizer.zero_grad(set_to_none=True)
        skipped = False
        for m in range(steps):
            t = time.perf_counter()
            data = next(self._data_iter)  # every micro-batch is consumed, even in a skipped step
            data_time += time.perf_counter() - t
            if skipped:
                continue
            seed_all_rng(derive_seed(self.seed, it, self.rank, _MODEL_TAG) if m == 0
                         else derive_seed(self.seed, it, self.rank, _MODEL_TAG, m))
            ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
            with self.model.no_sync() if ddp and m < steps - 1 else contextlib.nullcontext():
                skipped = not self._micro_step(data, sums, steps)
        if not skipped:
            skipped = not self._optimizer_step()
        if not skipped and self.ema is not None:
            self.ema.update(self.unwrapped_model, it)
        self.scheduler.step()
        st = self.storage
        if sums:
            names = list(sums)
            reduced = torch.stack([sums[n] for n in names])
            if steps > 1:
                reduced = reduced / steps
            st.put_scalar("total_loss", float(reduced.sum()))
            for i, n in enumerate(names):
                st.put_scalar(n, float(reduced[i]))
        st.put_scalar("lr", self.optimizer.param_groups[0]["lr"], smoothing_hint=False)
        st.put_scalar("data_time", data_time)
        st.put_scalar("time", time.perf_counter() - t0)
        if self.nonfinite_skipped:
            st.put_scalar("nonfinite_skipped", self.nonfinite_skipped, smoothing_hint=False)
        skipped_samples = getattr(self._loader, "num_skipped", 0)
        if skipped_samples:
            st.put_scalar("bad_samples_skipped", skipped_samples, smoothing_hint=False)

    def _micro_step(self, data, sums: dict, steps: int) -> bool:
        """Forward + (loss / steps) backward of one micro-batch; False when a loss term is not finite on some
        rank (NONFINITE_POLICY "skip": the step is skipped; "error" raises)."""
        with self._autocast():
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        names = list(loss_dict)
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        # one collective: sums for logging, and every rank learns if any rank saw NaN/Inf
        reduced = values.clone()
        bad_local = (~torch.isfinite(values)).float()
        if self.world_size > 1:
            both = torch.cat([reduced, bad_local]).to(self.device)
            torch.distributed.all_reduce(both)
            both = both.cpu()
            reduced, bad_any = both[: len(names)] / self.world_size, both[len(names):]
        else:
            bad_any = bad_local
        for i, n in enumerate(names):
            sums[n] = reduced[i] if n not in sums else sums[n] + reduced[i]
        if bool((bad_any > 0).any()):
            terms = ", ".join(f"{n}={values[i].item()}" for i, n in enumerate(names) if bad_any[i] > 0)
            self._nonfinite(f"loss term(s) not finite: {terms}")
            return False
        losses = sum(loss_dict.values())
        if steps > 1:
            losses = losses / steps
        self.scaler.scale(losses).backward()
        return True

    def _optimizer_step(self) -> bool:
        """Clip, check the (accumulated) gradients, step; False when the step was skipped for them."""
        if self.clipper is not None:
            self.scaler.unscale_(self.optimizer)
            self.clipper([p for g in self.optimizer.param_groups for p in g["params"]])
        if self.scaler.is_enabled():
            # the scaler skips steps with inf/nan gradients itself (and lowers the scale)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return True
        bad_params = self._nonfinite_grads()
        if bad_params:
            self._nonfinite("gradient(s) not finite (all loss terms finite) in: " + ", ".join(bad_params))
            return False
        self.optimizer.step()
        return True

    def _nonfinite_grads(self, limit: int = 5) -> list[str]:
        params = [(n, p) for n, p in self.unwrapped_model.named_parameters() if p.grad is not None]
        if not params:
            return []
        norms = torch._foreach_norm([p.grad for _, p in params])
        total = torch.stack([n.float() for n in norms]).sum()
        if bool(torch.isfinite(total)):
            return []
        return [n for (n, _), v in zip(params, norms) if not bool(torch.isfinite(v))][:limit]

    def _nonfinite(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.nonfinite_policy == "skip":
            self.nonfinite_skipped += 1
            logger.warning("iteration %d: %s; skipping this update (%d skipped so far)", self.iter, what,
                           self.nonfinite_skipped)
            return
        last = self._last_checkpoint_path
        if last is None and self.checkpointer.has_checkpoint():
            try:
                last = self.checkpointer.get_checkpoint_file()
            except CheckpointError as e:  # a bad last_checkpoint must not hide the non-finite loss
                last = f"unknown ({e})"
        raise NonFiniteLossError(
            f"iteration {self.iter}: {what}. Training stopped (SOLVER.NONFINITE_POLICY='error'); the last good "
            f"checkpoint is {last or 'none (no checkpoint saved yet)'}. Lower SOLVER.BASE_LR, enable "
            "SOLVER.CLIP_GRADIENTS, or set SOLVER.NONFINITE_POLICY skip.")

    def _after_step(self, pbar) -> None:
        cfg = self.cfg
        it, nxt = self.iter, self.iter + 1
        last = nxt == self.max_iter
        if pbar is not None:
            pbar.update(1)
            lat = self.storage.latest_with_smoothing_hint()
            post = {k: f"{v:.3g}" for k, (v, _) in lat.items() if k.startswith("loss") or k == "total_loss"}
            post["lr"] = f"{self.optimizer.param_groups[0]['lr']:.2e}"
            pbar.set_postfix(post, refresh=False)
        if cfg.LOG_PERIOD > 0 and (nxt % cfg.LOG_PERIOD == 0 or last):
            self._log(pbar)
        ev = int(cfg.TEST.EVAL_PERIOD)
        if cfg.TEST.PRECISE_BN.ENABLED and (last or (ev > 0 and nxt % ev == 0)):
            self._precise_bn(it)  # before the checkpoint of this iteration, which then holds the statistics
        period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
        if period > 0 and nxt % period == 0 and not last:
            self._save(f"model_{it:07d}", it)
        if ev > 0 and nxt % ev == 0 and not last and len(cfg.DATASETS.TEST):
            self._evaluate(it)

    def _log(self, pbar) -> None:
        st = self.storage
        t = st.history("time")
        if t.count:
            eta = t.median() * (self.max_iter - self.iter - 1)
            st.put_scalar("eta_seconds", eta, smoothing_hint=False)
        self._flush_writers()
        if comm.is_main_process():
            lat = st.latest_with_smoothing_hint()
            parts = [f"{k}: {v:.4g}" for k, (v, i) in sorted(lat.items()) if i == self.iter]
            logger.info("iter: %d  %s", self.iter, "  ".join(parts))

    def _flush_writers(self) -> None:
        for w in getattr(self, "writers", []):
            w.write(self.storage)

    def _save(self, name: str, it: int) -> None:
        # micro-batches the loader has handed out once iteration `it` is done (the resume point of the data)
        position = self._data_start + (it + 1 - self.start_iter) * self.grad_accum_steps
        path = self.checkpointer.save(name, iteration=it, seed=self.seed, nonfinite_skipped=self.nonfinite_skipped,
                                      data_position=position, grad_accum_steps=self.grad_accum_steps)
        if path:
            self._last_checkpoint_path = path
        comm.synchronize()

    def _evaluate(self, it: int) -> dict:
        # evaluation must not disturb the training RNG streams (a resumed run does not repeat it)
        import random

        import numpy as np

        py, npst = random.getstate(), np.random.get_state()
        weights = self.ema.applied_to(self.unwrapped_model) if self.ema is not None else contextlib.nullcontext()
        token = _TEST_PARTS.set(self._test_parts)  # Trainer.test keeps its loaders and evaluators here
        try:
            with torch.random.fork_rng(devices=[]), weights:  # the EMA weights only while testing
                results = self.test(self.cfg, self.unwrapped_model)
        finally:
            _TEST_PARTS.reset(token)
        random.setstate(py)
        np.random.set_state(npst)
        self.model.train()
        self.last_results = results
        if comm.is_main_process() and results:
            flat = flatten_results(results)
            if self.storage is not None:
                self.storage.iter = it
                for k, v in flat.items():
                    self.storage.put_scalar(k, v, smoothing_hint=False)
                self._flush_writers()
            metric = self.cfg.SOLVER.BEST_CHECKPOINT_METRIC
            if metric:
                self.checkpointer.maybe_save_best(results, it, metric, self.cfg.SOLVER.BEST_CHECKPOINT_MODE)
        comm.synchronize()
        return results

    def _precise_bn(self, it: int) -> None:
        """TEST.PRECISE_BN (detectron2's PreciseBN hook): the BatchNorm running statistics recomputed as the true
        average over NUM_ITER training batches, with the model in train mode and no grad. The batches come from a
        loader of their own starting at the data position after iteration `it` (the batches training reads next),
        so the training stream is not touched, and its RNG streams are restored: a resumed run repeats it."""
        import random

        import numpy as np

        from .precise_bn import get_bn_modules, update_bn_stats

        model = self.unwrapped_model
        if not get_bn_modules(model):
            if not self._precise_bn_logged:
                logger.info("TEST.PRECISE_BN.ENABLED: the model has no BatchNorm layer in training mode (FrozenBN "
                            "everywhere?): PreciseBN skipped")
                self._precise_bn_logged = True
            return
        num_iter = int(self.cfg.TEST.PRECISE_BN.NUM_ITER)
        position = self._data_start + (it + 1 - self.start_iter) * self.grad_accum_steps
        py, npst = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_all_rng(derive_seed(self.seed, it, self.rank, _PRECISE_BN_TAG))
            batches = iter(self.build_train_loader(self.cfg, position))
            with self._autocast():
                update_bn_stats(model, batches, num_iter)
            del batches  # lets DataLoader workers exit
        random.setstate(py)
        np.random.set_state(npst)
        logger.info("PreciseBN: BatchNorm statistics of iteration %d recomputed over %d batches", it, num_iter)
