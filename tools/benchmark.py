#!/usr/bin/env python
"""Speed of our models against the references, measured side by side in one process and one run.

Rows (select with --rows, by name or number):
  1 backbone_fp32   ResNet-50 C2-C5, batch 8, 224x224, eval: ours (fast paths on: folded FrozenBN, channels_last,
                    prepacked oneDNN convs on CPU) vs torchvision resnet50 up to layer4; same weights (torchvision's
                    random init loaded into ours), C5 relative difference reported.
  2 backbone_bf16   the same under bf16 autocast (CPU: bf16; CUDA: --amp-dtype) vs torchvision fp32 (and bf16);
                    C5 relative error vs our fp32 output.
  3 frcnn_infer     Faster R-CNN R50-FPN inference, one image, 512x512 and 800x1333, vs torchvision
                    fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None): 1000 pre/post-NMS proposals,
                    score threshold 0.05, NMS 0.5, 100 detections, 91 classes (incl. background) in both;
                    torchvision's transform min/max size set to the image size so it does not resize. "ours" is
                    faster_rcnn_R_50_FPN_torchvision.yaml holding torchvision's weights (whole-detector
                    converter): the same function; "ours_detectron2_mode" is faster_rcnn_R_50_FPN_1x.yaml's
                    semantics (ROIAlignV2 with adaptive sampling, ...) on the same weights.
  4 frcnn_train     Faster R-CNN training step (forward + backward + SGD step), batch 4, 256x256, vs the same
                    torchvision model built as for fine-tuning (FrozenBN, 3 trainable backbone stages = our
                    FREEZE_AT 2), transform sizes set to 256; ours in torchvision's convention (same losses).
  5 detr_dbnet      DETR R50 and DBNet R50-FPN inference, one 512x512 image, ours only.
  6 gemm            fp32 (and bf16) GEMM throughput of this machine (n x n matmul), interleaved with row 1's
                    backbone; the backbone's achieved GFLOP/s (fvcore conv MACs x 2) as a fraction of GEMM.
  7 coco_eval       faster-coco-eval vs pycocotools on 5,000 synthetic images (tools/benchmark_coco_eval.py).
  8 fast_paths      (not in the default run) the backbone of row 1 with each inference fast path on its own and
                    together, vs torchvision: the A/B behind the per-CPU-kind defaults (docs/MACHINES.md).
  9 onnx            (not in the default run; CPU) the exported ONNX model run by onnxruntime (tools/export_model.py,
                    docs/EXPORT.md) vs our eager model with its fast paths vs torchvision eager, one image at
                    512x512 and 800x1333: the ResNet-50 backbone (C2-C5, row 1's weights; the graph's in-graph
                    normalisation is the identity here) and row 3's Faster R-CNN (torchvision's weights, its
                    convention). Exporting takes minutes (traced once, H and W dynamic); detections compared.

Every timed pair runs interleaved (A B, B A, A B, ...) after warm-up, so both see the same machine load; the ratio
is reported both as median(ref) / median(ours) and as the median of the per-repeat paired ratios. Peak memory is
the RSS high-water mark above the pre-call RSS on CPU (from /proc/self/status after resetting it through
/proc/self/clear_refs) and torch.cuda.max_memory_allocated above the pre-call allocation on CUDA.

    python tools/benchmark.py --output-dir output/benchmark            # rows 1-7 (under 10 minutes on 2 cores)
    python tools/benchmark.py --rows fast_paths                        # row 8: each fast path alone, both CPU kinds
    python tools/benchmark.py --rows onnx                              # row 9: onnxruntime vs eager (CPU)
    python tools/benchmark.py --rows 1,2,6 --repeats 15
    python tools/benchmark.py --quick --output-dir /tmp/b              # tiny inputs, seconds: for tests
    python tools/benchmark.py --update-docs docs/BENCHMARKS.md         # also refresh the table in the docs
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.util
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.config import get_cfg  # noqa: E402
from resnet_backbone.modeling.backbone import build_backbone  # noqa: E402
from resnet_backbone.modeling.fast_paths import (  # noqa: E402
    autocast_dtype,
    inference_autocast,
    optimize_for_inference,
)

logger = logging.getLogger("benchmark")

ROWS = ["backbone_fp32", "backbone_bf16", "frcnn_infer", "frcnn_train", "detr_dbnet", "gemm", "coco_eval",
        "fast_paths", "onnx"]
DEFAULT_ROWS = ROWS[:7]  # `--rows all` adds the fast-path A/B and onnxruntime
TARGETS = {  # row/entry -> minimum ratio (reference time / our time), from issue 8
    "backbone_fp32": 1.25, "backbone_bf16": 2.2, "frcnn_infer_512x512": 1.3, "frcnn_infer_800x1333": 1.3,
    "frcnn_train": 1.3, "gemm": 0.75, "coco_eval": 3.0,  # frcnn_train 1.3: issue 13 (on every CPU kind)
}
DOC_BEGIN, DOC_END = "<!-- benchmark:begin {kind} -->", "<!-- benchmark:end {kind} -->"  # one table per CPU kind


# ------------------------------------------------------------------------------------------ machine / memory
def machine_info(device: str) -> dict:
    from resnet_backbone.utils.machine import machine

    m = machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1] for ln in f if ln.startswith("flags")), "")
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f} " in f" {flags} "]
    caps = isa_caps()
    info = {
        "cpu": m.cpu_name, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "isa": isa,
        "cpu_capability": m.cpu_capability, "bf16_native": m.cpu_bf16_native, "amx": m.cpu_amx,
        "fp16_native": m.cpu_fp16_native, "isa_caps": caps, "cpu_kind": cpu_kind(m, caps),
        "machine": m.describe(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "mkldnn": torch.backends.mkldnn.is_available(), "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def isa_caps() -> dict:
    """The environment variables that cap the ISA of oneDNN, ATen and MKL (set: an emulated smaller CPU)."""
    return {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
            if os.environ.get(k)}


def cpu_kind(m, caps: dict) -> str:
    """The CPU kind a table is filed under: ATen's vector level, '+AMX' where AMX runs bf16, and whether the
    ISA was capped by environment variables (an emulation of a smaller CPU on this one)."""
    kind = m.cpu_capability + ("+AMX" if m.cpu_amx else "+AVX512-BF16" if m.cpu_bf16_native else "")
    return kind + (" (emulated: " + " ".join(f"{k}={v}" for k, v in caps.items()) + ")" if caps else "")


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the VmHWM high-water mark to the current RSS
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], object], device: str) -> dict:
    """Peak memory that one call of `fn` adds above what was in use before it, in MiB.

    CUDA: {"peak_mem_mb": max_memory_allocated above the pre-call allocation}. CPU: {"peak_mem_mb": the RSS
    high-water mark above the pre-call RSS (0 when the allocator reuses memory it already holds),
    "peak_tensor_mb": the peak of live tensor bytes allocated during the call (torch profiler memory events),
    "page_faults": minor page faults during that call (first touches of fresh memory)}.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"peak_mem_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    out = {"peak_mem_mb": None, "peak_tensor_mb": None, "page_faults": None}
    base = _proc_status_kb("VmRSS")
    if base is not None and _reset_rss_peak():
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        out["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        peak = _proc_status_kb("VmHWM")
        out["peak_mem_mb"] = None if peak is None else max(0.0, (peak - base) / 1024)
    out["peak_tensor_mb"] = _peak_tensor_mb(fn)
    return out


def _peak_tensor_mb(fn: Callable[[], object]) -> float | None:
    """Largest sum of live CPU tensor bytes allocated during `fn` (allocation/free events, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.events() if e.self_cpu_memory_usage]
        events.sort(key=lambda e: e.time_range.start)
        live = peak = 0
        for e in events:
            live += e.self_cpu_memory_usage
            peak = max(peak, live)
        return peak / 2**20
    except Exception:  # profiler unavailable or changed: the RSS figure still stands
        return None


# ------------------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str,
                     progress: bool = True, desc: str = "") -> dict[str, list[float]]:
    """Run each fn `warmup` times, then `repeats` rounds in alternating order (A B, B A, ...). Seconds per call."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = range(repeats)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=desc, leave=False, file=sys.stderr)
    for r in rounds:
        for n in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def summarize(ts: list[float], items: int) -> dict:
    ts_sorted = sorted(ts)
    q = statistics.quantiles(ts_sorted, n=4) if len(ts_sorted) >= 2 else [ts_sorted[0]] * 3
    med = statistics.median(ts_sorted)
    return {
        "median_ms": med * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3, "min_ms": ts_sorted[0] * 1e3,
        "max_ms": ts_sorted[-1] * 1e3, "items": items, "ms_per_item": med * 1e3 / items, "items_per_s": items / med,
        "repeats": len(ts),
    }


def compare(times: dict[str, list[float]], ours: str, ref: str) -> dict:
    paired = [r / o for o, r in zip(times[ours], times[ref])]
    return {"ratio": statistics.median(times[ref]) / statistics.median(times[ours]),
            "paired_ratio_median": statistics.median(paired), "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired)}


def run_pair(name: str, fns: dict, items: int, args, ours: str = "ours", ref: str | None = "reference",
             extra: dict | None = None) -> dict:
    times = time_interleaved(fns, args.repeats, args.warmup, args.device, progress=not args.no_progress, desc=name)
    row = {"name": name, "entries": {}, **(extra or {})}
    for n, fn in fns.items():
        row["entries"][n] = summarize(times[n], items)
        row["entries"][n].update(peak_memory_mb(fn, args.device))
    if ref is not None and ref in fns:
        row.update(compare(times, ours, ref))
        row["ratio_of"] = f"{ref} / {ours}"
    target = TARGETS.get(name)
    if target is not None and "ratio" in row:
        row["target"] = target
        row["target_met"] = bool(row["ratio"] >= target)
    return row


def stage_times_ms(model: nn.Module, stages: list[str], fn: Callable[[], object], calls: int) -> dict:
    """Median milliseconds spent in each named child of `model` (forward hooks) over `calls` calls of `fn`."""
    spent: dict[str, list[float]] = {n: [] for n in stages}
    handles = []
    for n in stages:
        mod = getattr(model, n)
        handles.append(mod.register_forward_pre_hook(lambda m, a: setattr(m, "_bench_t0", time.perf_counter())))
        handles.append(mod.register_forward_hook(
            lambda m, a, o, n=n: spent[n].append(time.perf_counter() - m._bench_t0)))
    try:
        for _ in range(calls):
            fn()
    finally:
        for h in handles:
            h.remove()
    return {n: statistics.median(v) * 1e3 for n, v in spent.items() if v}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------ models
def _fast_cfg(cfg):
    """Every fast path for cfg.MODEL.DEVICE: folded norms, channels_last and, on the CPU, prepacked oneDNN convs."""
    cfg.MODEL.FUSE_FROZEN_BN = True
    cfg.MODEL.MKLDNN_PREPACK = torch.device(cfg.MODEL.DEVICE).type == "cpu"
    cfg.MODEL.CHANNELS_LAST = True
    return cfg


def _resnet_cfg(cfg, depth: int):
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision's layout: the stride sits on the 3x3 conv
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    return cfg


def build_backbone_pair(device: str, depth: int = 50):
    """Our ResNet (C2-C5) holding torchvision resnet{depth}'s weights, and the torchvision trunk (conv1 ..
    layer4), both in eval mode: the same function, so their outputs are compared too."""
    from resnet_backbone.checkpoint.converters import load_backbone_weights

    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    cfg = _resnet_cfg(get_cfg(), depth)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    ours = build_backbone(cfg).eval()
    load_backbone_weights(ours, tv.state_dict(), source="torchvision")
    trunk = nn.Sequential(*list(tv.children())[:-2]).eval()
    return ours.to(device), trunk.to(device)


FRCNN_CONFIGS = {"torchvision": "faster_rcnn_R_50_FPN_torchvision.yaml", "detectron2": "faster_rcnn_R_50_FPN_1x.yaml"}


def frcnn_cfg(depth: int = 50, num_classes: int = 90, convention: str = "torchvision"):
    """Our Faster R-CNN config in one of its two conventions (configs/COCO-Detection/), with torchvision's class
    count (+ background = 91) and pixel convention, so torchvision's weights load into either. "torchvision" is
    the function of torchvision's model (the same detections); "detectron2" is detectron2's (ROIAlignV2 with
    adaptive sampling, unrounded anchors, ...) on the same weights: what that mode costs."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "COCO-Detection",
                                     FRCNN_CONFIGS[convention]))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000  # _tv_frcnn's value, for both conventions
    _resnet_cfg(cfg, depth)
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    return cfg


def copy_torchvision_detector_weights(ours: nn.Module, tv: nn.Module) -> int:
    """Load a torchvision Faster R-CNN's weights into ours through the whole-detector converter (every tensor;
    raises if one does not fit). Returns the number of tensors loaded."""
    from resnet_backbone.checkpoint.detector_converters import convert_detector

    converted = convert_detector(tv.state_dict(), source="torchvision", num_classes=ours.num_classes,
                                 name="torchvision Faster R-CNN")
    result = ours.load_state_dict(converted["model"], strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"torchvision weights that do not fit our Faster R-CNN: missing {missing[:10]}, "
                           f"unexpected {result.unexpected_keys[:10]}")
    return len(converted["model"])


def _inference(fn, amp: str | None = None, device: str = "cpu", force: bool = False):
    def run():
        with torch.inference_mode(), (inference_autocast(device, amp, force=force) if amp
                                      else contextlib.nullcontext()):
            return fn()
    return run


# ------------------------------------------------------------------------------------------ rows
def row_backbone(args, bf16: bool) -> dict:
    dev = args.device
    batch, size = (2, 64) if args.quick else (8, 224)
    ours_plain, trunk = build_backbone_pair(dev, args.depth)
    ours = optimize_for_inference(copy.deepcopy(ours_plain), fuse_bn=True, channels_last=True,
                                  mkldnn=torch.device(dev).type == "cpu")
    x = torch.randn(batch, 3, size, size, device=dev)
    with torch.inference_mode():
        ref_out = trunk(x)
        our_out = ours(x)["res5"]
        plain_out = ours_plain(x)["res5"]
    extra = {"batch": batch, "input": [3, size, size],
             "c5_rel_diff_ours_fast_vs_torchvision": rel_err(our_out, ref_out),
             "c5_rel_diff_ours_plain_vs_torchvision": rel_err(plain_out, ref_out)}
    if not bf16:
        fns = {"ours": _inference(lambda: ours(x), device=dev),
               "reference": _inference(lambda: trunk(x), device=dev),
               "ours_no_fast_paths": _inference(lambda: ours_plain(x), device=dev)}
        return run_pair("backbone_fp32", fns, batch, args, extra=extra)
    amp = args.amp_dtype
    not_native = low_precision_not_native(args)
    if not_native:
        # full repeats would take many minutes; one small call of each says what this precision costs here
        xs = x[:1]
        fns = {"ours_fp32": _inference(lambda: ours(xs), device=dev),
               f"ours_{amp}_forced": _inference(lambda: ours(xs), amp, dev, force=True)}
        return cost_of_not_native("backbone_bf16", fns, not_native, args, extra={**extra, "batch": 1})
    with torch.inference_mode(), inference_autocast(dev, amp):
        low = ours(x)["res5"]
        tv_low = trunk(x)
    extra.update(amp_dtype=amp, c5_rel_err_bf16_vs_fp32=rel_err(low, our_out),
                 c5_rel_err_torchvision_bf16_vs_fp32=rel_err(tv_low, ref_out))
    fns = {"ours": _inference(lambda: ours(x), amp, dev),
           "reference": _inference(lambda: trunk(x), device=dev),
           "reference_amp": _inference(lambda: trunk(x), amp, dev)}
    return run_pair("backbone_bf16", fns, batch, args, extra=extra)


def low_precision_not_native(args) -> str:
    """Why --amp-dtype does not run natively on this device ("" when it does): the reason of an "auto" request
    that fell back to float32."""
    from resnet_backbone.utils.precision import resolve_amp

    decision = resolve_amp("auto", args.amp_dtype, args.device, key=None)
    return "" if decision.enabled else decision.reason


def cost_of_not_native(name: str, fns: dict, reason: str, args, extra: dict | None = None) -> dict:
    """A row whose precision is not native here: one warm-up and one timed call of each entry (the forced
    low-precision one and its float32 twin), reported as the cost of forcing it, not as a speed row."""
    times = time_interleaved(fns, 1, 1, args.device, progress=False)
    row = {"name": name, "entries": {n: summarize(t, 1) for n, t in times.items()}, **(extra or {}),
           "not_native": reason}
    fp32, low = list(times)  # the float32 entry first, the forced one second
    row["forced_cost_vs_fp32"] = times[low][0] / times[fp32][0]
    logger.warning("%s: %s; forcing it costs %.1fx float32 here (one call each), so the row is not timed",
                   name, reason, row["forced_cost_vs_fp32"])
    return row


def _tv_frcnn(min_size: int, max_size: int, train: bool, depth: int = 50):
    """torchvision's Faster R-CNN. Inference: `fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`
    (depth 50). Training: built the way that function builds it for fine-tuning (FrozenBatchNorm2d, layer2..4
    trainable), which is what our FREEZE_AT=2 / FrozenBN default trains, without loading weights."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc

    kw = dict(min_size=min_size, max_size=max_size, rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
              rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000, box_score_thresh=0.05,
              box_nms_thresh=0.5, box_detections_per_img=100)
    if not train and depth == 50:
        return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kw).eval()
    norm = misc.FrozenBatchNorm2d if train else nn.BatchNorm2d
    trunk = getattr(torchvision.models, f"resnet{depth}")(norm_layer=norm)
    model = FasterRCNN(_resnet_fpn_extractor(trunk, 3 if train else 5), num_classes=91, **kw)
    return model.train(train)


def _matching_detections(ours: dict, ref: dict, tol: float = 0.5) -> int:
    """How many of our detections the reference also made: same class (ours are ids 0..89 for its 1..90) and
    every box side within `tol` px. Counted as a set: with random weights many scores saturate and tie, and
    ties may come out of NMS in another order."""
    if not len(ours["boxes"]) or not len(ref["boxes"]):
        return 0
    close = (ours["boxes"][:, None, :] - ref["boxes"][None, :, :]).abs().amax(-1) <= tol
    same = ours["labels"][:, None] + 1 == ref["labels"][None, :]
    return int((close & same).any(dim=1).sum())


def row_frcnn_infer(args) -> list[dict]:
    from resnet_backbone.modeling.meta_arch import build_model

    dev = args.device
    sizes = [(128, 128)] if args.quick else [(512, 512), (800, 1333)]
    tv = _tv_frcnn(min(sizes[0]), max(sizes[0]), train=False, depth=args.depth).to(dev)
    models = {}
    for convention in ("torchvision", "detectron2"):
        cfg = frcnn_cfg(args.depth, convention=convention)
        cfg.MODEL.DEVICE = dev
        _fast_cfg(cfg)
        model = build_model(cfg).eval()
        copy_torchvision_detector_weights(model, tv)  # torchvision convention: the same function as tv
        models[convention] = optimize_for_inference(model, cfg)
    ours, ours_d2 = models["torchvision"], models["detectron2"]
    rows = []
    for h, w in sizes:
        # torchvision resizes so that the short side is min_size unless the long side would pass max_size:
        # with (min, max) = the image's own sides the scale is exactly 1
        tv.transform.min_size, tv.transform.max_size = (min(h, w),), max(h, w)
        g = torch.Generator().manual_seed(0)
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(dev)
        ours_in = [{"image": img, "height": h, "width": w}]
        tv_in = [img.float() / 255.0]
        with torch.inference_mode():
            o, r = ours(ours_in)[0], tv(tv_in)[0]
            # what the RPN hands to the box head, in both: the same count by construction
            tv_images, _ = tv.transform(tv_in)
        extra = {"image": [h, w], "tv_transform_size": list(tv_images.tensors.shape[-2:]),
                 "detections_ours": int(o["boxes"].shape[0]), "detections_reference": int(r["boxes"].shape[0]),
                 "detections_matching_reference": _matching_detections(o, r),
                 "ours": "configs/COCO-Detection/faster_rcnn_R_50_FPN_torchvision.yaml (torchvision's function)",
                 "ours_detectron2_mode": "faster_rcnn_R_50_FPN_1x.yaml's semantics, same weights",
                 "settings": {"pre_nms_topk_test_per_level": 1000, "post_nms_topk_test": 1000, "score_thresh": 0.05,
                              "nms": 0.5, "detections_per_image": 100, "classes_with_background": 91}}
        fns = {"ours": _inference(lambda i=ours_in: ours(i), device=dev),
               "reference": _inference(lambda i=tv_in: tv(i), device=dev),
               "ours_detectron2_mode": _inference(lambda i=ours_in: ours_d2(i), device=dev)}
        row = run_pair(f"frcnn_infer_{h}x{w}", fns, 1, args, extra=extra)
        entries = row["entries"]
        row["ratio_reference_vs_ours_detectron2_mode"] = (entries["reference"]["median_ms"]
                                                          / entries["ours_detectron2_mode"]["median_ms"])
        # where the time goes, per stage (sequential calls after the timed ones; same stage names in both)
        stages = ["backbone", "rpn", "roi_heads"]
        per = {k: stage_times_ms(m, stages, fns[k], max(1, min(3, args.repeats)))
               for k, m in (("ours", ours), ("reference", tv))}
        row["stages_ms"] = "; ".join(f"{k} " + " / ".join(f"{n} {v:.0f}" for n, v in per[k].items()) for k in per)
        rows.append(row)
    return rows


def row_frcnn_train(args) -> dict:
    from resnet_backbone.modeling.meta_arch import build_model
    from resnet_backbone.structures import Instances

    dev = args.device
    batch, size = (2, 128) if args.quick else (4, 256)
    cfg = frcnn_cfg(args.depth)
    cfg.MODEL.DEVICE = dev
    cfg.MODEL.CHANNELS_LAST = True
    ours = build_model(cfg).train()
    tv = _tv_frcnn(size, max(size, 1333), train=True, depth=args.depth).to(dev)
    copy_torchvision_detector_weights(ours, tv)
    g = torch.Generator().manual_seed(0)
    ours_in, tv_imgs, tv_tg = [], [], []
    for _ in range(batch):
        img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g).to(dev)
        n = 3
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = torch.rand(n, 2, generator=g) * size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1).to(dev)
        cls = torch.randint(0, 90, (n,), generator=g).to(dev)
        ours_in.append({"image": img, "height": size, "width": size,
                        "instances": Instances((size, size), gt_boxes=boxes, gt_classes=cls)})
        tv_imgs.append(img.float() / 255.0)
        tv_tg.append({"boxes": boxes, "labels": cls + 1})
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step(model, opt, *inp):
        def run():
            losses = model(*inp)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())
        return run

    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_tv = sum(p.numel() for p in tv.parameters() if p.requires_grad)
    extra = {"batch": batch, "image": [size, size], "trainable_params_ours": n_ours, "trainable_params_reference": n_tv}
    fns = {"ours": step(ours, opt_ours, ours_in), "reference": step(tv, opt_tv, tv_imgs, tv_tg)}
    return run_pair("frcnn_train", fns, batch, args, extra=extra)


def row_detr_dbnet(args) -> list[dict]:
    from resnet_backbone.modeling.meta_arch import META_ARCH_REGISTRY, build_model

    dev = args.device
    size = 128 if args.quick else 512
    rows = []
    for arch in ("DETR", "DBNet"):
        name = f"{arch.lower()}_infer_{size}x{size}"
        try:
            META_ARCH_REGISTRY.get(arch)
        except KeyError:
            rows.append({"name": name, "skipped": f"{arch} is not registered yet"})
            continue
        try:
            cfg = get_cfg()
            _resnet_cfg(cfg, args.depth)
            if arch == "DETR":
                cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
                cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
            else:
                cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "Base-RCNN-FPN.yaml"))
            cfg.MODEL.META_ARCHITECTURE = arch
            cfg.MODEL.DEVICE = dev
            _fast_cfg(cfg)
            model = optimize_for_inference(build_model(cfg), cfg)
            img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8).to(dev)
            inp = [{"image": img, "height": size, "width": size}]
            with torch.inference_mode():
                model(inp)
            fns = {"ours": _inference(lambda m=model, i=inp: m(i), device=dev)}
            rows.append(run_pair(name, fns, 1, args, ref=None, extra={"image": [size, size]}))
        except Exception as e:  # a row that cannot run is reported, not fatal
            logger.exception("%s row failed", arch)
            rows.append({"name": name, "skipped": f"{type(e).__name__}: {e}"})
    return rows


def row_gemm(args) -> dict:
    from fvcore.nn import FlopCountAnalysis

    dev = args.device
    n = 512 if args.quick else 4096
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    a16, b16 = a.to(autocast_dtype(args.amp_dtype)), b.to(autocast_dtype(args.amp_dtype))
    batch, size = (2, 64) if args.quick else (8, 224)
    ours_plain, _ = build_backbone_pair(dev, args.depth)
    x = torch.randn(batch, 3, size, size, device=dev)
    flops = FlopCountAnalysis(ours_plain, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    conv_macs = flops.by_operator().get("conv", 0)
    ours = optimize_for_inference(ours_plain, fuse_bn=True, channels_last=True, mkldnn=torch.device(dev).type == "cpu")
    not_native = low_precision_not_native(args)
    fns = {"ours": _inference(lambda: ours(x), device=dev),
           "gemm_fp32": _inference(lambda: torch.mm(a, b), device=dev)}
    if not not_native:
        fns.update(gemm_bf16=_inference(lambda: torch.mm(a16, b16), device=dev),
                   ours_bf16=_inference(lambda: ours(x), args.amp_dtype, dev))
    row = run_pair("gemm", fns, 1, args, ref=None, extra={"n": n, "batch": batch, "input": [3, size, size]})
    gemm_flop = 2 * n ** 3
    bb_flop = 2 * conv_macs  # fvcore counts one multiply-add as one flop
    e = row["entries"]
    for k in fns:
        e[k]["gflops"] = (gemm_flop if k.startswith("gemm") else bb_flop) / e[k]["median_ms"] * 1e-6
        if k.startswith("ours"):
            e[k]["items"], e[k]["ms_per_item"], e[k]["items_per_s"] = (
                batch, e[k]["median_ms"] / batch, batch / e[k]["median_ms"] * 1e3)
    row.update(backbone_gflop_per_batch=bb_flop / 1e9, flop_note="fvcore conv multiply-adds x 2",
               ratio=e["ours"]["gflops"] / e["gemm_fp32"]["gflops"],
               ratio_of="backbone fp32 GFLOP/s / GEMM fp32 GFLOP/s")
    if not not_native:
        row["ratio_bf16"] = e["ours_bf16"]["gflops"] / e["gemm_bf16"]["gflops"]
    else:
        # what a forced low-precision GEMM costs here, on a small one (a 4096 one would take minutes)
        m_ = 1024 if not args.quick else 256
        a_s, b_s = a[:m_, :m_].contiguous(), b[:m_, :m_].contiguous()
        low = autocast_dtype(args.amp_dtype)
        cost = cost_of_not_native("gemm", {"fp32": lambda: torch.mm(a_s, b_s),
                                           "low": lambda: torch.mm(a_s.to(low), b_s.to(low))}, not_native, args)
        row.update(not_native=not_native, forced_gemm_n=m_, forced_gemm_cost_vs_fp32=cost["forced_cost_vs_fp32"])
    row["target"] = TARGETS["gemm"]
    row["target_met"] = bool(row["ratio"] >= row["target"])
    return row


def row_fast_paths(args) -> dict:
    """Row 1's backbone with each fast path alone and together (the A/B that decides the defaults per CPU kind)."""
    dev = args.device
    batch, size = (2, 64) if args.quick else (8, 224)
    ours, trunk = build_backbone_pair(dev, args.depth)
    on_cpu = dev == "cpu"
    variants = {
        "plain": ours,
        "channels_last": optimize_for_inference(copy.deepcopy(ours), fuse_bn=False, channels_last=True, mkldnn=False),
        "folded_bn_channels_last": optimize_for_inference(copy.deepcopy(ours), fuse_bn=True, channels_last=True,
                                                          mkldnn=False),
    }
    if on_cpu:
        variants["folded_bn_prepacked"] = optimize_for_inference(copy.deepcopy(ours), fuse_bn=True,
                                                                 channels_last=False, mkldnn=True)
        variants["folded_bn_prepacked_channels_last"] = optimize_for_inference(
            copy.deepcopy(ours), fuse_bn=True, channels_last=True, mkldnn=True)
    variants["torchvision"] = trunk
    x = torch.randn(batch, 3, size, size, device=dev)
    best = "folded_bn_prepacked_channels_last" if on_cpu else "folded_bn_channels_last"
    order = [best] + [k for k in variants if k != best]  # the ratio is printed on the first entry: ours
    fns = {k: _inference(lambda m=variants[k]: m(x), device=dev) for k in order}
    return run_pair("fast_paths", fns, batch, args, ours=best, ref="torchvision",
                    extra={"batch": batch, "input": [3, size, size], "ratio_entry": best})


def _onnx_pair_rows(name: str, ours, reference, session, inputs: dict, args, compare) -> list[dict]:
    """One row per image size: onnxruntime vs our eager model (fast paths on) vs torchvision eager, interleaved.
    `inputs[(h, w)]` = (our input, the reference's input, the ONNX input); `compare(ours_out, onnx_out)` -> extra."""
    from resnet_backbone.export import run_onnx

    rows = []
    for (h, w), (ours_in, ref_in, onnx_in) in inputs.items():
        with torch.inference_mode():
            extra = {"image": [h, w], **compare(ours(ours_in), run_onnx(session, onnx_in))}
        fns = {"ours": _inference(lambda i=ours_in: ours(i)), "reference": _inference(lambda i=ref_in: reference(i)),
               "onnxruntime": lambda x=onnx_in: run_onnx(session, x)}
        row = run_pair(f"{name}_{h}x{w}", fns, 1, args, extra=extra)
        e = row["entries"]
        row["ratio_ours_vs_onnxruntime"] = e["ours"]["median_ms"] / e["onnxruntime"]["median_ms"]
        row["ratio_reference_vs_onnxruntime"] = e["reference"]["median_ms"] / e["onnxruntime"]["median_ms"]
        rows.append(row)
    return rows


def row_onnx(args) -> list[dict]:
    """Row 9 (see the module docstring). The exported files go to a temporary folder."""
    import tempfile

    from resnet_backbone.checkpoint.checkpointer import Checkpointer
    from resnet_backbone.export import export_model, onnx_session
    from resnet_backbone.modeling.meta_arch import build_model

    if args.device != "cpu":
        return [{"name": "onnx", "skipped": "onnxruntime runs on the CPU here (--device cpu)"}]
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return [{"name": "onnx", "skipped": f"onnxruntime is not installed ({e})"}]
    sizes = [(128, 128)] if args.quick else [(512, 512), (800, 1333)]
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rb_onnx_") as tmp:
        # the backbone: row 1's weights; PIXEL_MEAN 0 / STD 1 make the graph's normalisation the identity
        plain, trunk = build_backbone_pair("cpu", args.depth)
        ours = optimize_for_inference(copy.deepcopy(plain), fuse_bn=True, channels_last=True, mkldnn=True)
        cfg = _resnet_cfg(get_cfg(), args.depth)
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        cfg.MODEL.FUSE_FROZEN_BN = True
        weights = os.path.join(tmp, "backbone.pth")
        torch.save(plain.state_dict(), weights)
        t0 = time.perf_counter()
        paths = export_model(cfg, weights, "onnx", os.path.join(tmp, "backbone"), part="backbone")
        export_s = time.perf_counter() - t0
        session = onnx_session(paths["model"], threads)
        g = torch.Generator().manual_seed(0)
        inputs = {}
        for h, w in sizes:
            x = torch.rand(1, 3, h, w, generator=g) * 255
            inputs[(h, w)] = (x, x, x)

        def c5(o, r):
            return {"c5_rel_diff_onnx_vs_ours": rel_err(torch.from_numpy(r["res5"]), o["res5"])}

        for row in _onnx_pair_rows("onnx_backbone", ours, trunk, session, inputs, args, c5):
            row["export_s"] = export_s
            rows.append(row)
        del session, ours, plain, trunk
        gc.collect()
        # Faster R-CNN: row 3's "ours" (torchvision's weights and function) exported whole
        tv = _tv_frcnn(min(sizes[0]), max(sizes[0]), train=False, depth=args.depth)
        cfg = frcnn_cfg(args.depth, convention="torchvision")
        if args.quick:  # random weights on a 128 px image score below 0.05: keep detections to compare
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        model = build_model(cfg).eval()
        copy_torchvision_detector_weights(model, tv)
        Checkpointer(model, tmp).save("frcnn")
        cfg.MODEL.FUSE_FROZEN_BN = True
        t0 = time.perf_counter()
        paths = export_model(cfg, os.path.join(tmp, "frcnn.pth"), "onnx", os.path.join(tmp, "frcnn"))
        export_s = time.perf_counter() - t0
        session = onnx_session(paths["model"], threads)
        _fast_cfg(cfg)
        ours = optimize_for_inference(model, cfg)
        inputs = {}
        for h, w in sizes:
            img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
            inputs[(h, w)] = ([{"image": img, "height": h, "width": w}], [img.float() / 255.0], img.float())

        def detections(o, r):
            o = o[0]
            r = {"boxes": torch.from_numpy(r["boxes"]), "labels": torch.from_numpy(r["labels"])}
            return {"detections_ours": int(len(o["boxes"])), "detections_onnx": int(len(r["boxes"])),
                    "detections_matching_onnx": _matching_detections(o, {**r, "labels": r["labels"] + 1})}

        for h, w in sizes:  # torchvision does not resize: (min, max) = the image's own sides, as row 3
            tv.transform.min_size, tv.transform.max_size = (min(h, w),), max(h, w)
            for row in _onnx_pair_rows("onnx_frcnn", ours, tv, session, {(h, w): inputs[(h, w)]}, args, detections):
                row["export_s"] = export_s
                rows.append(row)
    return rows


def row_coco_eval(args) -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_coco_eval.py")
    spec = importlib.util.spec_from_file_location("benchmark_coco_eval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    images = 50 if args.quick else args.coco_images
    res = mod.run_benchmark(images, repeats=max(1, min(args.repeats, 2)), progress=not args.no_progress)
    b = res["backends"]
    row = {"name": "coco_eval", "entries": {}, "ratio_of": "pycocotools / faster_coco_eval"}
    for key, name in (("ours", "faster_coco_eval"), ("reference", "pycocotools")):
        med = b[name]["total_s_median"]
        row["entries"][key] = {"backend": name, "median_ms": med * 1e3, "min_ms": b[name]["total_s_min"] * 1e3,
                               "max_ms": b[name]["total_s_max"] * 1e3, "items": images,
                               "ms_per_item": med * 1e3 / images, "items_per_s": images / med, "peak_mem_mb": None}
    row.update(ratio=res["speedup"], evaluate_ratio=res["evaluate_speedup"], metrics_match=res["metrics_match"],
               max_abs_metric_diff=res["max_abs_metric_diff"], num_detections=res["num_detections"],
               target=TARGETS["coco_eval"], target_met=bool(res["speedup"] >= TARGETS["coco_eval"]))
    return row


# ------------------------------------------------------------------------------------------ report
def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
        f"CPU kind {m['cpu_kind']} (bf16 {'native' if m['bf16_native'] else 'NOT native'}), "
        f"cpuinfo flags {'/'.join(m['isa']) or '-'}; torch {m['torch']}, torchvision {m['torchvision']}; device "
        f"{m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}; {m['date']}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average_at_start', []))}; "
        f"{result['args']['repeats']} interleaved repeats after {result['args']['warmup']} warm-up calls"
        f"{'; denormals flushed (FTZ/DAZ) for both sides' if m.get('flush_denormal') else ''}"
        f"{' (QUICK: tiny inputs, not meaningful)' if result['args']['quick'] else ''}.",
        "",
        "| row | entry | median ms (IQR) | min-max ms | ms/img | img/s | peak MiB RSS / tensors | ratio | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | | | |")
            continue
        first = True
        for name, e in row["entries"].items():
            iqr = f" ({_fmt(e.get('q1_ms'))}-{_fmt(e.get('q3_ms'))})" if e.get("q1_ms") is not None else ""
            label = name + (f" [{e['backend']}]" if "backend" in e else "")
            if "gflops" in e:
                label += f" {e['gflops']:.0f} GFLOP/s"
            ratio = target = ""
            if first and row.get("not_native") and "ratio" not in row:
                ratio, target = f"forced: **{row['forced_cost_vs_fp32']:.1f}x** the fp32 time", "not native here"
            elif first and "ratio" in row:
                ratio = f"**{row['ratio']:.2f}x**"
                if "paired_ratio_median" in row:
                    ratio += f" (paired {row['paired_ratio_median']:.2f}x)"
                if "target" in row:
                    target = f">= {row['target']:g} {'met' if row['target_met'] else 'MISSED'}"
            lines.append(f"| {row['name'] if first else ''} | {label} | {_fmt(e['median_ms'])}{iqr} | "
                         f"{_fmt(e.get('min_ms'))}-{_fmt(e.get('max_ms'))} | {_fmt(e.get('ms_per_item'), '.2f')} | "
                         f"{_fmt(e.get('items_per_s'), '.2f')} | "
                         f"{_fmt(e.get('peak_mem_mb'))} / {_fmt(e.get('peak_tensor_mb'))} | {ratio} | {target} |")
            first = False
    notes = []
    for row in result["rows"]:
        if row.get("skipped"):
            continue
        bits = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("name", "entries", "ratio", "target", "target_met", "paired_ratio_median",
                             "paired_ratio_min", "paired_ratio_max", "settings")]
        if "paired_ratio_min" in row:
            bits.append(f"paired ratio range {row['paired_ratio_min']:.2f}-{row['paired_ratio_max']:.2f}")
        faults = {n: e["page_faults"] for n, e in row["entries"].items() if e.get("page_faults") is not None}
        if faults:
            bits.append("page faults per call " + ", ".join(f"{n} {v}" for n, v in faults.items()))
        notes.append(f"- {row['name']}: " + "; ".join(bits))
    return "\n".join(lines + ["", "Row details:", ""] + notes) + "\n"


def update_docs(path: str, markdown: str, kind: str) -> None:
    """Replace the generated table of this CPU kind in `path` (between its markers), or append one. Tables of
    other CPU kinds stay."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    begin, end = DOC_BEGIN.format(kind=kind), DOC_END.format(kind=kind)
    block = f"{begin}\n### CPU kind: {kind}\n\n{markdown}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


ROW_FUNCTIONS = {
    "backbone_fp32": lambda args: row_backbone(args, bf16=False),
    "backbone_bf16": lambda args: row_backbone(args, bf16=True),
    "frcnn_infer": row_frcnn_infer, "frcnn_train": row_frcnn_train, "detr_dbnet": row_detr_dbnet, "gemm": row_gemm,
    "coco_eval": row_coco_eval, "fast_paths": row_fast_paths, "onnx": row_onnx,
}
assert list(ROW_FUNCTIONS) == ROWS


def parse_rows(spec: str) -> list[str]:
    if spec in ("", "default"):
        return list(DEFAULT_ROWS)
    if spec == "all":
        return list(ROWS)
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok.isdigit() and 1 <= int(tok) <= len(ROWS):
            out.append(ROWS[int(tok) - 1])
        elif tok in ROWS:
            out.append(tok)
        else:
            raise SystemExit(f"--rows: unknown row {tok!r}; choose from 1-{len(ROWS)} or {', '.join(ROWS)}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rows", default="default",
                    help="comma list of row numbers or names; 'default' = rows 1-7, 'all' adds row 8")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per entry first (default 2, quick 1)")
    ap.add_argument("--quick", action="store_true", help="tiny inputs and few repeats (for tests)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp-dtype", default=None, help="autocast dtype for row 2 (CPU: bfloat16; CUDA default float16)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all logical CPUs)")
    ap.add_argument("--depth", type=int, default=None, help="ResNet depth in every row (default 50; quick 18)")
    ap.add_argument("--coco-images", type=int, default=5000)
    ap.add_argument("--output-dir", default="output/benchmark")
    ap.add_argument("--update-docs", default="", help="also write the table into this Markdown file")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not set flush-denormal (FTZ/DAZ) at start; it applies to ours and the reference alike")
    args = ap.parse_args(argv)
    if not args.keep_denormals:
        # before any parallel op, so every intra-op thread inherits it (engine.flush_denormal). The training row
        # otherwise measures denormal arithmetic: after a few SGD steps the box head's matmuls run 3-50x slower,
        # in ours and the reference alike, and the step time swings from 4 s to 25 s.
        from resnet_backbone.engine import flush_denormal

        flush_denormal()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.depth = args.depth or (18 if args.quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.amp_dtype = args.amp_dtype or ("float16" if args.device == "cuda" else "bfloat16")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    rows = parse_rows(args.rows)
    result = {"machine": machine_info(args.device), "args": vars(args), "rows": []}
    result["machine"]["flush_denormal"] = not args.keep_denormals
    for name in rows:
        logger.info("row %s", name)
        t0 = time.perf_counter()
        out = ROW_FUNCTIONS[name](args)
        for r in (out if isinstance(out, list) else [out]):
            r["wall_s"] = time.perf_counter() - t0
            result["rows"].append(r)
        gc.collect()
    try:
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = to_markdown(result)
    with open(os.path.join(args.output_dir, "benchmark.md"), "w") as f:
        f.write(md)
    if args.update_docs:
        update_docs(args.update_docs, md, result["machine"]["cpu_kind"])
    print(md)
    return result


if __name__ == "__main__":
    from resnet_backbone.utils.cli import run_tool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    sys.exit(run_tool(main))
