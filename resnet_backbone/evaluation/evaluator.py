"""DatasetEvaluator interface (detectron2's) and `inference_on_dataset`, the evaluation loop."""
from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from contextlib import ExitStack, contextmanager

import torch
from tqdm import tqdm

from ..utils import comm

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates (inputs, outputs) pairs over a dataset and turns them into metrics.

    `reset()` before a pass, `process(inputs, outputs)` for every batch, `evaluate()` at the end -> a dict such as
    {"bbox": {"AP": ...}}. In distributed runs `evaluate()` gathers from all ranks; ranks other than the main one
    may return {} (or None).
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        pass

    def evaluate(self):
        pass


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one; their result dicts are merged (a key reported twice is an error)."""

    def __init__(self, evaluators):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self):
        for e in self._evaluators:
            e.reset()

    def process(self, inputs, outputs):
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self):
        results = OrderedDict()
        for e in self._evaluators:
            res = e.evaluate()
            if comm.is_main_process() and res is not None:
                for k, v in res.items():
                    if k in results:
                        raise KeyError(f"two evaluators both report '{k}'")
                    results[k] = v
        return results


@contextmanager
def _eval_mode(model):
    training = model.training if isinstance(model, torch.nn.Module) else None
    if training is not None:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


def inference_on_dataset(model, data_loader, evaluator, show_progress: bool = True):
    """Run `model` (in eval mode, under torch.inference_mode) on every batch of `data_loader` and feed the
    evaluator. Returns `evaluator.evaluate()` (a dict; {} on non-main ranks or with no evaluator).

    In distributed runs use a loader with `InferenceSampler` (`build_detection_test_loader` does): each image
    is seen by exactly one rank and the evaluator gathers across ranks. Empty batches (samples skipped under
    DATALOADER.ON_BAD_SAMPLE='skip') are passed over. The model's train/eval mode is restored afterwards.
    """
    world = comm.get_world_size()
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info("start inference on %s batches (%d process(es))", total if total is not None else "?", world)
    num_warmup = min(5, total - 1) if total else 0
    start = time.perf_counter()
    compute_time = 0.0
    n_images = 0
    n_batches = 0
    with ExitStack() as stack:
        stack.enter_context(_eval_mode(model))
        stack.enter_context(torch.inference_mode())
        bar = tqdm(data_loader, total=total, desc="inference", unit="batch",
                   disable=not (show_progress and comm.is_main_process()))
        for idx, inputs in enumerate(bar):
            if idx == num_warmup:
                start = time.perf_counter()
                compute_time = 0.0
                n_images = 0
            if not inputs:
                continue
            t0 = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - t0
            evaluator.process(inputs, outputs)
            n_images += len(inputs)
            n_batches += 1
    total_time = time.perf_counter() - start
    if n_images:
        logger.info("inference done: %d images in %s (%.4f s/img, model %.4f s/img) per process", n_images,
                    str(datetime.timedelta(seconds=int(total_time))), total_time / n_images,
                    compute_time / n_images)
    results = evaluator.evaluate()
    return {} if results is None else results
