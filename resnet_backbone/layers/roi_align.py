"""Multi-level RoIAlign that uses every CPU thread, in inference and in training.

torchvision's CPU `roi_align` kernel runs on one thread. For Faster R-CNN inference on CPU it is the largest
single-threaded step (1000 proposals x 256 channels x 7x7 bins x 4 samples: ~110 ms of a ~550 ms R50-FPN forward at
512x512 on the 2-core development machine). `ThreadedMultiScaleRoIAlign` computes exactly what torchvision's
`MultiScaleRoIAlign` computes (same level assignment, same kernel, same arguments), but splits the RoIs into one
contiguous share per intra-op thread and runs the shares concurrently (the kernel releases the GIL).

In training the backward kernel (single-threaded too, and ~10x the forward's cost since it recomputes the bilinear
weights per element) is shared out the same way, each thread producing the gradient of its share, summed per
level. It takes the threaded path for CPU tensors, not tracing/scripting, more than one intra-op thread and enough
RoIs to pay for the hand-off (and float32 features when training). Otherwise it is torchvision's forward,
unchanged.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torchvision
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import MultiScaleRoIAlign, roi_align

__all__ = ["ThreadedMultiScaleRoIAlign"]

_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _executor(workers: int) -> ThreadPoolExecutor:
    """One shared pool per process and size; a forked child (DataLoader worker) gets a fresh one, since the
    parent's threads do not exist there."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="roi_align"))
        return _pool[2]


def _rois_with_batch_index(boxes: list[Tensor]) -> Tensor:
    """[K, 5] rows (batch index, x1, y1, x2, y2) from per-image [N_i, 4] boxes."""
    idx = [torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(idx), torch.cat(boxes)], dim=1)


def _run_shares(threads: int, share) -> None:
    """share(t) for t in range(threads): t > 0 on the pool, t = 0 on the calling thread; re-raises errors."""
    pool = _executor(threads)
    futures = [pool.submit(share, t) for t in range(1, threads)]
    share(0)
    for f in futures:
        f.result()


class _Plan:
    """Which RoIs each thread pools: RoIs sorted by level (stable), cut into `threads` contiguous shares of
    (nearly) equal size, each share split into one segment per level it spans."""

    def __init__(self, levels: Tensor, num_levels: int, threads: int):
        num_rois = int(levels.numel())
        order = torch.argsort(levels, stable=True)
        counts = torch.bincount(levels, minlength=num_levels).tolist()
        starts = [sum(counts[:i]) for i in range(num_levels)]
        cuts = [round(num_rois * t / threads) for t in range(threads + 1)]
        self.threads = threads
        self.shares: list[list[tuple[int, Tensor]]] = []
        for t in range(threads):
            lo, hi = cuts[t], cuts[t + 1]
            segs = []
            for level, (start, n) in enumerate(zip(starts, counts)):
                a, b = max(lo, start), min(hi, start + n)
                if a < b:
                    segs.append((level, order[a:b]))
            self.shares.append(segs)


def _pool_forward(feats: list[Tensor], rois: Tensor, plan: _Plan, output_size, scales, sampling_ratio,
                  out_dtype: torch.dtype) -> Tensor:
    inference = torch.is_inference_mode_enabled()
    # every RoI belongs to exactly one level, so every row gets written: no need to zero the result
    result = torch.empty((rois.shape[0], feats[0].shape[1], *output_size), dtype=out_dtype)

    def share(t: int) -> None:
        # grad / inference mode are thread-local: run as the caller does. Each share writes its own rows
        # (disjoint), so the copies into `result` also run in parallel.
        with torch.inference_mode(inference), torch.no_grad():
            for level, idx in plan.shares[t]:
                pooled = roi_align(feats[level], rois[idx], output_size=output_size,
                                   spatial_scale=scales[level], sampling_ratio=sampling_ratio)
                result[idx] = pooled.to(out_dtype)

    _run_shares(plan.threads, share)
    return result


class _ThreadedRoIAlignFunction(torch.autograd.Function):
    """The threaded forward, and a backward that runs torchvision's `_roi_align_backward` on each thread's share
    and sums the per-thread gradients of each level (torchvision's backward kernel is single-threaded and was
    ~40% of a Faster R-CNN training step on 2 cores)."""

    @staticmethod
    def forward(ctx, rois, plan, output_size, scales, sampling_ratio, *feats):
        contiguous = [f.contiguous() for f in feats]
        ctx.rois, ctx.plan, ctx.output_size = rois, plan, output_size
        ctx.scales, ctx.sampling_ratio = scales, sampling_ratio
        ctx.shapes = [tuple(f.shape) for f in feats]
        return _pool_forward(contiguous, rois, plan, output_size, scales, sampling_ratio, feats[0].dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        plan, rois = ctx.plan, ctx.rois
        grad_out = grad_out.contiguous()
        partial: list[dict[int, Tensor]] = [{} for _ in range(plan.threads)]

        def share(t: int) -> None:
            with torch.no_grad():
                for level, idx in plan.shares[t]:
                    n, c, h, w = ctx.shapes[level]
                    partial[t][level] = torch.ops.torchvision._roi_align_backward(
                        grad_out[idx], rois[idx], ctx.scales[level], ctx.output_size[0], ctx.output_size[1],
                        n, c, h, w, ctx.sampling_ratio, False)

        _run_shares(plan.threads, share)
        grads = []
        for level, shape in enumerate(ctx.shapes):
            parts = [p[level] for p in partial if level in p]
            if not parts:
                grads.append(grad_out.new_zeros(shape))
                continue
            grads.append(sum(parts[1:], parts[0]))
        return (None, None, None, None, None, *grads)


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` with the RoIs shared out over the intra-op threads on CPU.

    Same constructor and attributes (`featmap_names`, `output_size`, `sampling_ratio`, `scales`, `map_levels`).
    Inference: the shares are pooled concurrently. Training (float32 features that require grad): the
    backward is shared out the same way. `min_rois_per_thread`: below this many RoIs per thread the serial
    (torchvision) path is used.
    """

    min_rois_per_thread = 16

    def _threads_for(self, x_filtered: list[Tensor], num_rois: int) -> int:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torchvision._is_tracing():
            return 1
        if any(f.device.type != "cpu" for f in x_filtered):
            return 1
        if torch.is_grad_enabled() and any(f.requires_grad for f in x_filtered) and any(
                f.dtype != torch.float32 for f in x_filtered):
            return 1  # mixed-precision training: torchvision's autocast handling
        return max(1, min(torch.get_num_threads(), num_rois // self.min_rois_per_thread))

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]  # torchvision's order: x's
        num_rois = sum(int(b.shape[0]) for b in boxes)
        threads = self._threads_for(x_filtered, num_rois)
        if threads < 2 or self.scales is None or self.map_levels is None:
            # (torchvision's forward also sets scales / map_levels up on first use when they are not given)
            return super().forward(x, boxes, image_shapes)

        rois = _rois_with_batch_index(boxes)
        if len(x_filtered) == 1:
            levels = torch.zeros(num_rois, dtype=torch.int64)
        else:
            levels = self.map_levels(boxes).to(torch.int64)
        plan = _Plan(levels, len(x_filtered), threads)
        if torch.is_grad_enabled() and any(f.requires_grad for f in x_filtered):
            return _ThreadedRoIAlignFunction.apply(rois.detach().to(torch.float32), plan, tuple(self.output_size),
                                                   list(self.scales), self.sampling_ratio, *x_filtered)
        out_dtype = x_filtered[0].dtype
        # The kernel wants NCHW float32 (under autocast torchvision casts to float32 and back): convert each
        # level once here, not once per share inside the kernel.
        feats = [f.to(torch.float32).contiguous() if f.dtype in (torch.float16, torch.bfloat16) else f.contiguous()
                 for f in x_filtered]
        return _pool_forward(feats, rois.to(feats[0].dtype), plan, self.output_size, self.scales,
                             self.sampling_ratio, out_dtype)
