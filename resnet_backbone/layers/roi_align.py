"""Multi-level RoIAlign that uses every CPU thread for inference.

torchvision's CPU `roi_align` kernel runs on one thread. For Faster R-CNN inference on CPU it is the largest
single-threaded step (1000 proposals x 256 channels x 7x7 bins x 4 samples: ~110 ms of a ~550 ms R50-FPN forward at
512x512 on the 2-core development machine). `ThreadedMultiScaleRoIAlign` computes exactly what torchvision's
`MultiScaleRoIAlign` computes (same level assignment, same kernel, same arguments), but splits the RoIs into one
contiguous share per intra-op thread and runs the shares concurrently (the kernel releases the GIL).

It takes the threaded path only where nothing can go wrong with it: CPU tensors, no autograd recording, not
tracing/scripting, more than one intra-op thread and enough RoIs to pay for the hand-off. Otherwise it is
torchvision's forward, unchanged (training uses that path).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torchvision
from torch import Tensor
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


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` with the RoIs shared out over the intra-op threads at inference.

    Same constructor and attributes (`featmap_names`, `output_size`, `sampling_ratio`, `scales`, `map_levels`).
    `min_rois_per_thread`: below this many RoIs per thread the serial path is used.
    """

    min_rois_per_thread = 16

    def _threads_for(self, x_filtered: list[Tensor], num_rois: int) -> int:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torchvision._is_tracing():
            return 1
        if any(f.device.type != "cpu" for f in x_filtered):
            return 1
        if torch.is_grad_enabled() and any(f.requires_grad for f in x_filtered):
            return 1
        return max(1, min(torch.get_num_threads(), num_rois // self.min_rois_per_thread))

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        x_filtered = [v for k, v in x.items() if k in self.featmap_names]  # torchvision's order: x's
        num_rois = sum(int(b.shape[0]) for b in boxes)
        threads = self._threads_for(x_filtered, num_rois)
        if threads < 2:
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            return super().forward(x, boxes, image_shapes)  # sets them up on first use (torchvision's guess)

        rois = _rois_with_batch_index(boxes)
        if len(x_filtered) == 1:
            levels = torch.zeros(num_rois, dtype=torch.int64)
        else:
            levels = self.map_levels(boxes).to(torch.int64)
        out_dtype = x_filtered[0].dtype
        # The kernel wants NCHW float32 (under autocast torchvision casts to float32 and back): convert each
        # level once here, not once per share inside the kernel.
        feats = [f.to(torch.float32).contiguous() if f.dtype in (torch.float16, torch.bfloat16) else f.contiguous()
                 for f in x_filtered]
        rois = rois.to(feats[0].dtype)
        order = torch.argsort(levels, stable=True)
        counts = torch.bincount(levels, minlength=len(feats)).tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        cuts = [round(num_rois * t / threads) for t in range(threads + 1)]

        def segments(lo: int, hi: int) -> list[tuple[int, Tensor]]:
            """(level, RoI indices) pieces of order[lo:hi], one per level it spans."""
            out = []
            for level, (start, n) in enumerate(zip(starts, counts)):
                a, b = max(lo, start), min(hi, start + n)
                if a < b:
                    out.append((level, order[a:b]))
            return out

        inference = torch.is_inference_mode_enabled()
        # every RoI belongs to exactly one level, so every row gets written: no need to zero the result
        result = torch.empty((num_rois, feats[0].shape[1], *self.output_size), dtype=out_dtype)

        def share(lo: int, hi: int) -> None:
            # grad / inference mode are thread-local: run as the caller does. Each share writes its own rows
            # (disjoint), so the copies into `result` also run in parallel.
            with torch.inference_mode(inference), torch.no_grad():
                for level, idx in segments(lo, hi):
                    pooled = roi_align(feats[level], rois[idx], output_size=self.output_size,
                                       spatial_scale=self.scales[level], sampling_ratio=self.sampling_ratio)
                    result[idx] = pooled.to(out_dtype)

        pool = _executor(threads)
        futures = [pool.submit(share, cuts[t], cuts[t + 1]) for t in range(1, threads)]
        share(cuts[0], cuts[1])  # the calling thread takes the first share
        for f in futures:
            f.result()
        return result
