"""ThreadedMultiScaleRoIAlign must give torchvision's MultiScaleRoIAlign results exactly, threaded or not."""
import math

import pytest
import torch
import torchvision
from _threads import num_threads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from resnet_backbone.layers import ThreadedMultiScaleRoIAlign
from resnet_backbone.layers import roi_align as roi_align_module

NAMES = ["p2", "p3", "p4", "p5"]
STRIDES = [4, 8, 16, 32]


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


def _count_sparse_backward(monkeypatch) -> list:
    """Record each call of the sparse backward (the list grows by one per call)."""
    calls = []
    real = roi_align_module.roi_align_backward
    monkeypatch.setattr(roi_align_module, "roi_align_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _train_both(pools, feats, boxes, shapes, threads):
    """Forward + backward of a seeded gradient through each pooler: [(output, {level: feature grad})]."""
    results = []
    with num_threads(threads):
        for pool in pools:
            leaf = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
            out = pool(leaf, boxes, shapes)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
            results.append((out.detach(), {k: v.grad for k, v in leaf.items()}))
    return results


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_gradients_equal_torchvision(channels_last, monkeypatch):
    """With autograd recording, the forward is threaded too and the backward is the sparse product: same
    output, same feature gradients (to float rounding: the sums run in another order), in the features' layout."""
    used = []
    real = roi_align_module._executor
    monkeypatch.setattr(roi_align_module, "_executor", lambda n: used.append(n) or real(n))
    backward = _count_sparse_backward(monkeypatch)
    feats, boxes, shapes = _inputs(channels_last=channels_last)
    (ref_out, ref_grad), (out, grad) = _train_both(_poolers(), feats, boxes, shapes, threads=2)
    assert used == [2] and backward == [1]  # threaded forward, sparse backward
    assert torch.equal(out, ref_out)
    assert grad["p6"] is None and ref_grad["p6"] is None  # not pooled: no gradient
    for k in NAMES:
        assert grad[k].shape == ref_grad[k].shape
        assert grad[k].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-5, atol=1e-5)
        assert ref_grad[k].abs().sum() > 0, k


def test_one_thread_training_takes_the_sparse_backward(monkeypatch):
    """On one intra-op thread the forward is serial (no pool), and the backward is still the sparse product."""
    def fail(n):
        raise AssertionError("thread pool used on one thread")

    monkeypatch.setattr(roi_align_module, "_executor", fail)
    backward = _count_sparse_backward(monkeypatch)
    feats, boxes, shapes = _inputs(channels_last=False)
    (ref_out, ref_grad), (out, grad) = _train_both(_poolers(), feats, boxes, shapes, threads=1)
    assert backward == [1]
    assert torch.equal(out, ref_out)
    for k in NAMES:
        torch.testing.assert_close(grad[k], ref_grad[k], rtol=1e-5, atol=1e-5)


def test_serial_paths(monkeypatch):
    """Inference on one thread or with too few RoIs: torchvision's own forward."""
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


def test_bf16_autocast_training_is_threaded_and_matches_torchvision(monkeypatch):
    """Mixed-precision training (bf16 features under CPU autocast) takes the threaded forward and the sparse
    backward, pooled in float32 and cast back as torchvision's autocast wrapper does: the same bf16 output,
    gradients equal to torchvision's to bf16 rounding."""
    backward = []
    real = roi_align_module.roi_align_backward
    monkeypatch.setattr(roi_align_module, "roi_align_backward", lambda *a: backward.append(1) or real(*a))
    ref_pool, ours = _poolers()
    feats, boxes, shapes = _inputs()
    results = []
    for pool in (ref_pool, ours):
        low = {k: v.to(torch.bfloat16).requires_grad_(True) for k, v in feats.items()}
        with num_threads(2), torch.autocast("cpu", dtype=torch.bfloat16):
            out = pool(low, boxes, shapes)
        (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, {k: v.grad for k, v in low.items()}))
    (ref_out, ref_grad), (out, grad) = results
    assert backward == [1] and out.dtype == ref_out.dtype == torch.bfloat16
    assert torch.equal(out, ref_out)
    for k in NAMES:
        assert grad[k].dtype == torch.bfloat16 and grad[k].abs().sum() > 0
        torch.testing.assert_close(grad[k].float(), ref_grad[k].float(), rtol=2e-2, atol=1e-3)


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


def _hard_rois(size=64, per_image=(40, 25), generator=None):
    """RoIs that meet every rule of the kernel: inside, across the border, beyond -1 and past the far side,
    thinner than a pixel, zero-size, and exactly on the last pixel."""
    g = generator or torch.Generator().manual_seed(1)
    rows = []
    for b, n in enumerate(per_image):
        x1y1 = torch.rand(n, 2, generator=g) * size * 1.1 - size * 0.1
        wh = torch.rand(n, 2, generator=g) * size * 0.8
        wh[: n // 5] *= 0.01  # thinner than a pixel
        boxes = torch.cat([x1y1, x1y1 + wh], 1)
        boxes[0] = torch.tensor([size - 1.0, size - 1.0, size - 1.0, size - 1.0])  # zero-size, on the last pixel
        boxes[1] = torch.tensor([-8.0, -8.0, -2.0, size + 6.0])  # mostly beyond -1
        boxes[2] = torch.tensor([size * 0.5, size * 0.5, size + 9.0, size + 9.0])  # past the far side
        rows.append(torch.cat([torch.full((n, 1), float(b)), boxes], 1))
    return torch.cat(rows)


@pytest.mark.parametrize("sampling_ratio", [2, 3, 0])
@pytest.mark.parametrize("aligned", [False, True])
def test_sparse_backward_equals_torchvision_kernel(sampling_ratio, aligned):
    """`roi_align_backward` against torchvision's own backward kernel, level by level, on RoIs that hit every
    boundary rule, with one level left without RoIs; and the adjoint is a valid CSR matrix (sorted, no
    duplicate entries), and its transpose applied to the features is torchvision's forward."""
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 5, 16, 16), (2, 5, 8, 8), (2, 5, 4, 4)]
    scales = [0.25, 0.125, 0.0625]
    rois = _hard_rois(generator=g)
    levels = torch.randint(0, 2, (rois.shape[0],), generator=g)  # level 2 gets none
    by_level = [torch.nonzero(levels == lvl).flatten() for lvl in range(3)]
    grad = torch.randn(rois.shape[0], 5, 7, 7, generator=g)
    ours = roi_align_module.roi_align_backward(grad, rois, by_level, shapes, scales, sampling_ratio, aligned)
    for lvl, (n, c, h, w) in enumerate(shapes):
        idx = by_level[lvl]
        ref = torch.ops.torchvision._roi_align_backward(grad[idx].contiguous(), rois[idx], scales[lvl], 7, 7,
                                                          n, c, h, w, sampling_ratio, aligned)
        assert ours[lvl].shape == ref.shape
        torch.testing.assert_close(ours[lvl], ref, rtol=1e-5, atol=1e-5)
    assert ours[2].abs().sum() == 0
    assert ours[0].abs().sum() > 0 and ours[1].abs().sum() > 0

    adjoint, offsets = roi_align_module.roi_align_adjoint(rois, by_level, shapes, scales, (7, 7), sampling_ratio,
                                                          aligned)
    torch._validate_sparse_csr_tensor_args(adjoint.crow_indices(), adjoint.col_indices(), adjoint.values(),
                                           adjoint.shape)
    feats = [torch.randn(s, generator=g) for s in shapes]
    flat = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feats])
    pooled = (adjoint.to_dense().t() @ flat).view(rois.shape[0], 7, 7, 5).permute(0, 3, 1, 2)
    for lvl in range(2):
        idx = by_level[lvl]
        ref = torchvision.ops.roi_align(feats[lvl], rois[idx], 7, scales[lvl], sampling_ratio, aligned)
        torch.testing.assert_close(pooled[idx], ref, rtol=1e-5, atol=1e-5)


def test_sparse_backward_without_rois():
    shapes = [(1, 3, 8, 8)]
    out = roi_align_module.roi_align_backward(torch.zeros(0, 3, 7, 7), torch.zeros(0, 5),
                                              [torch.zeros(0, dtype=torch.int64)], shapes, [0.25], 2)
    assert out[0].shape == (1, 3, 8, 8) and out[0].abs().sum() == 0
