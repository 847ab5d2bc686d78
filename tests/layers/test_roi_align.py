"""ThreadedMultiScaleRoIAlign must give torchvision's MultiScaleRoIAlign results exactly, threaded or not."""
import contextlib
import math

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from resnet_backbone.layers import ThreadedMultiScaleRoIAlign
from resnet_backbone.layers import roi_align as roi_align_module

NAMES = ["p2", "p3", "p4", "p5"]
STRIDES = [4, 8, 16, 32]


@contextlib.contextmanager
def num_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _poolers(sampling_ratio=2):
    pools = []
    for cls in (MultiScaleRoIAlign, ThreadedMultiScaleRoIAlign):
        p = cls(NAMES, output_size=7, sampling_ratio=sampling_ratio)
        p.scales = [1.0 / s for s in STRIDES]
        p.map_levels = LevelMapper(2, 5, canonical_scale=224, canonical_level=4)
        pools.append(p)
    return pools


def _inputs(num_images=2, rois_per_image=(300, 157), size=512, channels=8, channels_last=True):
    g = torch.Generator().manual_seed(0)
    feats = {}
    for name, s in zip(NAMES, STRIDES):
        f = torch.randn(num_images, channels, size // s, size // s, generator=g)
        feats[name] = f.contiguous(memory_format=torch.channels_last) if channels_last else f
    feats["p6"] = torch.randn(num_images, channels, size // 64, size // 64, generator=g)  # not pooled
    boxes = []
    for n in rois_per_image[:num_images]:
        xy = torch.rand(n, 2, generator=g) * size * 0.1
        # square-ish, sides from 4 px to most of the image (log-uniform), so every level gets RoIs
        side = torch.exp(math.log(4) + torch.rand(n, 1, generator=g) * math.log(size * 0.85 / 4))
        wh = side * torch.exp((torch.rand(n, 2, generator=g) - 0.5) * 0.5)
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1))
    return feats, boxes, [(size, size)] * num_images


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_threaded_equals_torchvision(threads, mode, monkeypatch):
    ref_pool, ours = _poolers()
    feats, boxes, shapes = _inputs()
    levels = ref_pool.map_levels(boxes)
    assert len(torch.unique(levels)) == 4  # the test exercises every level
    used = []
    real = roi_align_module._executor
    monkeypatch.setattr(roi_align_module, "_executor", lambda n: used.append(n) or real(n))
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with num_threads(threads), ctx():
        ref = ref_pool(feats, boxes, shapes)
        out = ours(feats, boxes, shapes)
    assert used == [threads]  # the threaded path ran
    assert out.shape == ref.shape == (457, 8, 7, 7)
    assert torch.equal(out, ref)


def test_adaptive_sampling_ratio_and_nchw_features():
    ref_pool, ours = _poolers(sampling_ratio=0)
    feats, boxes, shapes = _inputs(channels_last=False)
    with num_threads(2), torch.inference_mode():
        assert torch.equal(ours(feats, boxes, shapes), ref_pool(feats, boxes, shapes))


def test_bf16_autocast_matches_torchvision():
    ref_pool, ours = _poolers()
    feats, boxes, shapes = _inputs()
    feats = {k: v.to(torch.bfloat16) for k, v in feats.items()}
    with num_threads(2), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = ref_pool(feats, boxes, shapes)
        out = ours(feats, boxes, shapes)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_gradients_equal_torchvision(channels_last, monkeypatch):
    """With autograd recording, the forward is threaded too and the backward is shared out over the threads:
    same output, same feature gradients (to float rounding: the per-thread gradients are summed)."""
    used = []
    real = roi_align_module._executor
    monkeypatch.setattr(roi_align_module, "_executor", lambda n: used.append(n) or real(n))
    ref_pool, ours = _poolers()
    feats, boxes, shapes = _inputs(channels_last=channels_last)
    grads = []
    with num_threads(2):
        for pool in (ref_pool, ours):
            leaf = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
            out = pool(leaf, boxes, shapes)
            g = torch.Generator().manual_seed(3)
            out.backward(torch.randn(out.shape, generator=g))
            grads.append((out.detach(), {k: v.grad for k, v in leaf.items()}))
    assert used == [2, 2]  # threaded forward and backward
    (ref_out, ref_grad), (out, grad) = grads
    assert torch.equal(out, ref_out)
    assert grad["p6"] is None and ref_grad["p6"] is None  # not pooled: no gradient
    for k in NAMES:
        assert grad[k].shape == ref_grad[k].shape
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-5, atol=1e-5)
        assert ref_grad[k].abs().sum() > 0, k


def test_serial_paths(monkeypatch):
    """One thread, too few RoIs, or mixed-precision training: torchvision's own forward."""
    def fail(n):
        raise AssertionError("threaded path taken")

    monkeypatch.setattr(roi_align_module, "_executor", fail)
    ref_pool, ours = _poolers()
    feats, boxes, shapes = _inputs()
    with num_threads(1), torch.inference_mode():
        assert torch.equal(ours(feats, boxes, shapes), ref_pool(feats, boxes, shapes))
    few = [b[:5] for b in boxes]
    with num_threads(2), torch.inference_mode():
        assert torch.equal(ours(feats, few, shapes), ref_pool(feats, few, shapes))
    low = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in feats.items()}
    with num_threads(2), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(low, boxes, shapes)
    out.float().sum().backward()
    assert low["p2"].grad is not None and low["p2"].grad.abs().sum() > 0


def test_no_rois():
    ref_pool, ours = _poolers()
    feats, _, shapes = _inputs()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    with num_threads(2), torch.inference_mode():
        assert ours(feats, empty, shapes).shape == ref_pool(feats, empty, shapes).shape == (0, 8, 7, 7)


def test_pool_is_rebuilt_in_a_forked_child():
    """A DataLoader worker forked after the pool started must not wait on threads that only the parent has."""
    import multiprocessing as mp

    pool = roi_align_module._executor(2)
    assert pool.submit(lambda: 1).result() == 1
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child(q):
        # a forked child must not use OpenMP regions the parent started (libgomp is not fork-safe; DataLoader
        # workers run with one thread for that reason), so force the threaded path with one intra-op thread
        torch.set_num_threads(1)
        ref_pool, ours = _poolers()
        ours._threads_for = lambda feats, n: 2
        feats, boxes, shapes = _inputs()
        with torch.inference_mode():
            q.put(bool(torch.equal(ours(feats, boxes, shapes), ref_pool(feats, boxes, shapes))))

    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(60)
    if p.exitcode is None:
        p.kill()
    assert p.exitcode == 0
    assert q.get(timeout=5) is True
