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
  5 detr_dbnet      peer rows (--only to pick some):
                    detr_infer   DETR R50 (configs/COCO-Detection/detr_R_50_500ep.yaml) on a padded batch of 2
                                 (512x480 + 448x512) vs transformers' DetrForObjectDetection (timm ResNet-50)
                                 holding our weights (modeling/detr/hf_names.py; outputs compared in fp32), on our
                                 padded tensor and mask, with its post_process_object_detection;
                    detr_train   a training step on 320x288 + 256x320 (AdamW: ours from build_optimizer, HF's
                                 Trainer default fused AdamW; the same trainable parameters);
                    dbnet_infer  DBNet R50-FPN (configs/Text/dbnet_R_50_FPN.yaml), one 512x512 image, image to
                                 probability logits, vs docTR's db_resnet50 (exportable: the logits);
                    dbnet_train  a training step, batch 2, 384x384, 8 word boxes per image, targets built on
                                 both sides; DBNet weights: random init in both (the FPNs differ), speed only.
Rows 4 and 5 run on the precision this machine runs natively (SOLVER.AMP.ENABLED auto: bf16 autocast on an
AMX / AVX512-BF16 CPU, float32 elsewhere; both sides the same; --precision fp32 to force float32), and report
each side's peak RSS measured in a fresh process of its own (--rss-child; --no-rss to skip, --rss-only for the
memory alone, --merge to put a timed run and a memory run in one table); --profile N lists each side's top
operators (share of self CPU time: proportions, comparable under load); --row-budget S caps a row's rounds.
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
    python tools/benchmark.py --rows 4,5 --no-rss --output-dir /tmp/t  # peer rows timed (quiet machine) ...
    python tools/benchmark.py --rows 4,5 --rss-only --output-dir /tmp/m   # ... their memory (any time)
    python tools/benchmark.py --merge /tmp/t/benchmark.json /tmp/m/benchmark.json --output-dir /tmp/b
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
                     progress: bool = True, desc: str = "", budget_s: float = 0.0) -> dict[str, list[float]]:
    """Run each fn `warmup` times, then `repeats` rounds in alternating order (A B, B A, ...). Seconds per call.
    `budget_s` > 0: stop after the round that passes that many seconds of timed rounds (at least 3 rounds)."""
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
    start = time.perf_counter()
    for r in rounds:
        for n in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
        if budget_s and r >= 2 and time.perf_counter() - start > budget_s:
            break
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
             extra: dict | None = None, memory: bool = True) -> dict:
    """Time `fns` interleaved; `memory`: also the in-process peak memory of one more call of each (two calls:
    RSS, then the profiler's tensor peak)."""
    times = time_interleaved(fns, args.repeats, args.warmup, args.device, progress=not args.no_progress, desc=name,
                             budget_s=getattr(args, "row_budget", 0.0) if ref == "reference" else 0.0)
    row = {"name": name, "entries": {}, **(extra or {})}
    for n, fn in fns.items():
        row["entries"][n] = summarize(times[n], items)
        if memory:
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


# ------------------------------------------------------------------------------------------ peer rows
# Row 5 and row 4: ours against an installable peer, each row on the precision this machine runs natively
# (`row_precision`), both sides under the same autocast. A row is a setup function (args, sides) -> (fns, extra)
# that builds only the sides asked for, so that `--rss-child ROW:SIDE` can rebuild one side alone in a fresh
# process and measure that process's peak RSS (see `rss_in_subprocess`).
class PeerMissing(Exception):
    """The reference side of a peer row cannot be built here (its package is not importable)."""


def row_precision(args):
    """The autocast decision of every peer row: SOLVER.AMP.ENABLED "auto"'s (bf16 where native, else float32),
    or float32 with --precision fp32."""
    from resnet_backbone.utils.precision import resolve_amp

    return resolve_amp(False if args.precision == "fp32" else "auto", args.amp_dtype, args.device, key="SOLVER.AMP")


def _train_step(model: nn.Module, opt, call: Callable[[], object], amp) -> Callable[[], float]:
    """One training step: forward (`call`, returning a loss dict or a loss) under `amp`'s autocast, backward
    and optimizer step outside it, as the trainer does."""
    def run():
        with amp.autocast():
            out = call()
        loss = sum(out.values()) if isinstance(out, dict) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return run


def _infer_call(call: Callable[[], object], amp) -> Callable[[], object]:
    def run():
        with torch.inference_mode(), amp.autocast():
            return call()
    return run


def _trainable(model: nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _import_peer(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PeerMissing(f"{package} is not importable ({e}); `make bench` installs it "
                          f"(requirements-{'dev' if package == 'transformers' else 'bench'}.txt)") from e


def _detr_cfg(args):
    """configs/COCO-Detection/detr_R_50_500ep.yaml (the paper's DETR: FrozenBN, FREEZE_AT 2, 6+6 layers, 100
    queries, auxiliary losses); --quick: ResNet-18 and a slim transformer."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "COCO-Detection",
                                     "detr_R_50_500ep.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = args.device
    _resnet_cfg(cfg, args.depth)
    if args.quick:
        d = cfg.MODEL.DETR
        d.HIDDEN_DIM, d.NHEADS, d.ENC_LAYERS, d.DEC_LAYERS = 64, 4, 2, 2
        d.DIM_FEEDFORWARD, d.NUM_OBJECT_QUERIES = 128, 10
    return cfg


def _hf_detr(cfg, depth: int):
    """transformers' DetrForObjectDetection with our DETR's sizes and loss weights, on timm's ResNet (random
    init: the weights are ours, loaded through modeling/detr/hf_names.py)."""
    transformers = _import_peer("transformers", "transformers")
    _import_peer("timm", "timm")
    d = cfg.MODEL.DETR
    return transformers.DetrForObjectDetection(transformers.DetrConfig(
        use_timm_backbone=True, backbone=f"resnet{depth}", use_pretrained_backbone=False, d_model=d.HIDDEN_DIM,
        encoder_layers=d.ENC_LAYERS, decoder_layers=d.DEC_LAYERS, encoder_attention_heads=d.NHEADS,
        decoder_attention_heads=d.NHEADS, encoder_ffn_dim=d.DIM_FEEDFORWARD, decoder_ffn_dim=d.DIM_FEEDFORWARD,
        num_queries=d.NUM_OBJECT_QUERIES, num_labels=d.NUM_CLASSES, dropout=d.DROPOUT,
        attention_dropout=d.DROPOUT, activation_dropout=d.DROPOUT, auxiliary_loss=d.DEEP_SUPERVISION,
        class_cost=_whole(d.CLASS_WEIGHT), bbox_cost=_whole(d.L1_WEIGHT), giou_cost=_whole(d.GIOU_WEIGHT),
        bbox_loss_coefficient=_whole(d.L1_WEIGHT), giou_loss_coefficient=_whole(d.GIOU_WEIGHT),
        eos_coefficient=d.NO_OBJECT_WEIGHT))


def _whole(v: float):
    """DetrConfig's cost / coefficient fields are typed int (its validation refuses 1.0): whole numbers as int."""
    return int(v) if float(v).is_integer() else v


def _random_boxes(g, n: int, h: int, w: int, min_wh=(16, 16), max_wh=(0.5, 0.5)) -> torch.Tensor:
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * max_wh[0], h * max_wh[1]]) + torch.tensor(min_wh)
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh).clamp(min=1)
    return torch.cat([xy, xy + wh], 1).clamp(max=torch.tensor([w - 1, h - 1, w - 1, h - 1]).float())


def _detr_inputs(args, num_classes: int, train: bool) -> list[dict]:
    """Two images of different sizes (so the batch is padded and the mask matters), 3 boxes each."""
    from resnet_backbone.structures import Instances

    if args.quick:
        sizes = [(128, 128), (96, 112)]
    else:  # training at 320 px: a 512 px step takes 12+ s per side on 2 cores (bf16, AMX)
        sizes = [(320, 288), (256, 320)] if train else [(512, 480), (448, 512)]
    g = torch.Generator().manual_seed(0)
    out = []
    for h, w in sizes:
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g).to(args.device)
        boxes = _random_boxes(g, 3, h, w).to(args.device)
        cls = torch.randint(0, num_classes, (3,), generator=g).to(args.device)
        out.append({"image": img, "height": h, "width": w,
                    "instances": Instances((h, w), gt_boxes=boxes, gt_classes=cls)})
    return out


def _detr_pair(args, train: bool, sides) -> tuple[nn.Module, object, dict, list[dict], object]:
    """Our DETR (seeded random init) and, when asked for, HF's holding the same weights."""
    from resnet_backbone.modeling.detr.hf_names import to_hf_state_dict
    from resnet_backbone.modeling.meta_arch import build_model

    cfg = _detr_cfg(args)
    cfg.MODEL.CHANNELS_LAST = True
    torch.manual_seed(0)
    ours = build_model(cfg).train(train)
    inputs = _detr_inputs(args, cfg.MODEL.DETR.NUM_CLASSES, train)
    with torch.no_grad():
        images = ours.preprocess_image(inputs)
    hf = None
    if "reference" in sides:
        hf = _hf_detr(cfg, args.depth)
        result = hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"our DETR weights do not fit HF's: missing {missing[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        # HF means to freeze the stem and layer1 (its DetrConvEncoder), but with a timm backbone its check reads
        # the backbone config's model_type ("timm_wrapper", no "resnet") and trains everything; freeze what
        # our FREEZE_AT 2 freezes (and HF intends), so both train the same parameters
        for pname, p in hf.model.backbone.model.named_parameters():
            if not pname.startswith(("layer2.", "layer3.", "layer4.")):
                p.requires_grad_(False)
        hf = hf.to(args.device).train(train)
    return ours, hf, cfg, inputs, images


def setup_detr_infer(args, sides=("ours", "reference")):
    """DETR inference on a padded batch of 2: ours (fast paths on: folded FrozenBN, prepacked convs,
    channels_last; normalisation, padding and post-processing inside the timed call) vs HF's
    DetrForObjectDetection on our padded, normalised tensor and mask, with its post_process_object_detection."""
    amp = row_precision(args)
    ours, hf, cfg, inputs, images = _detr_pair(args, False, sides)
    extra = {"batch": len(inputs), "padded_batch": list(images.tensor.shape), "precision": amp.reason,
             "weights": "ours (seeded random init), mapped into HF's names (modeling/detr/hf_names.py)"}
    fns = {}
    if hf is not None:
        import transformers

        pixel_mask = (~images.mask).long()
        sizes = [(x["height"], x["width"]) for x in inputs]
        processor = transformers.DetrImageProcessor()
        if "ours" in sides:  # the same function: outputs before the fast paths and after, against HF, in fp32
            with torch.inference_mode():
                a = ours.forward_outputs(images)
                b = hf(pixel_values=images.tensor, pixel_mask=pixel_mask)
            extra["logits_max_abs_diff_vs_reference_fp32"] = float((a["pred_logits"] - b.logits).abs().max())
            extra["boxes_max_abs_diff_vs_reference_fp32"] = float((a["pred_boxes"] - b.pred_boxes).abs().max())
        fns["reference"] = _infer_call(lambda: processor.post_process_object_detection(
            hf(pixel_values=images.tensor, pixel_mask=pixel_mask), threshold=0.0, target_sizes=sizes), amp)
    if "ours" in sides:
        _fast_cfg(cfg)
        fast = optimize_for_inference(ours, cfg)
        fns["ours"] = _infer_call(lambda: fast(inputs), amp)
    return {k: fns[k] for k in ("ours", "reference") if k in fns}, extra


def setup_detr_train(args, sides=("ours", "reference")):
    """DETR training step (forward with auxiliary losses, Hungarian matching, backward, AdamW step) on the
    padded batch of 2: ours (channels_last) vs HF's with labels from the same targets."""
    amp = row_precision(args)
    ours, hf, cfg, inputs, images = _detr_pair(args, True, sides)
    extra = {"batch": len(inputs), "padded_batch": list(images.tensor.shape), "precision": amp.reason,
             "optimizer": "AdamW lr 1e-4, weight decay 1e-4: ours from solver.build_optimizer (fused; backbone lr "
                          "x SOLVER.BACKBONE_MULTIPLIER), HF's Trainer default (torch AdamW fused=True)"}
    fns = {}
    if "ours" in sides:
        from resnet_backbone.solver import build_optimizer

        opt = build_optimizer(cfg, ours)
        fns["ours"] = _train_step(ours, opt, lambda: ours(inputs), amp)
        extra["trainable_params_ours"] = sum(p.numel() for p in _trainable(ours))
    if hf is not None:
        targets = ours.prepare_targets(inputs, images)
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        pixel_mask = (~images.mask).long()
        opt_hf = torch.optim.AdamW(_trainable(hf), lr=1e-4, weight_decay=1e-4, fused=True)
        fns["reference"] = _train_step(hf, opt_hf, lambda: hf(pixel_values=images.tensor, pixel_mask=pixel_mask,
                                                              labels=labels).loss, amp)
        extra["trainable_params_reference"] = sum(p.numel() for p in _trainable(hf))
    return fns, extra


def _dbnet_depth(args) -> int:
    return 34 if args.quick else 50  # docTR has db_resnet34 and db_resnet50


def _dbnet_cfg(args):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "Text", "dbnet_R_50_FPN.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.CHANNELS_LAST = True
    _resnet_cfg(cfg, _dbnet_depth(args))
    return cfg


def _text_inputs(args, batch: int, size: int) -> tuple[list[dict], list[dict]]:
    """`batch` square images with 8 word-sized boxes each: ours as instances (gt_boxes), docTR's target
    ({"words": (N, 4) float32 boxes relative to the image})."""
    from resnet_backbone.structures import Instances

    g = torch.Generator().manual_seed(0)
    ours, doctr_targets = [], []
    for _ in range(batch):
        img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g).to(args.device)
        boxes = _random_boxes(g, 8, size, size, min_wh=(12, 10), max_wh=(0.25, 0.05))
        ours.append({"image": img, "height": size, "width": size,
                     "instances": Instances((size, size), gt_boxes=boxes.to(args.device))})
        doctr_targets.append({"words": (boxes / size).clamp(0, 1).numpy().astype("float32")})
    return ours, doctr_targets


def _doctr_dbnet(args):
    models = _import_peer("doctr.models", "python-doctr")
    return getattr(models, f"db_resnet{_dbnet_depth(args)}")(pretrained=False, pretrained_backbone=False)


def _dbnet_setup(args, train: bool, sides):
    from resnet_backbone.modeling.meta_arch import build_model

    amp = row_precision(args)
    batch, size = (1, 64) if args.quick else ((2, 384) if train else (1, 512))
    torch.manual_seed(0)
    cfg = _dbnet_cfg(args)
    inputs, targets = _text_inputs(args, batch, size)
    fns = {}
    extra = {"batch": batch, "image": [size, size], "precision": amp.reason,
             "weights": "random init on both sides (the FPN layouts differ: no conversion); speed only"}
    ref = None
    if "reference" in sides:
        ref = _doctr_dbnet(args).to(args.device).train(train)
        ref.exportable = not train  # inference: the logits, no post-processing (as on our side)
    ours = build_model(cfg).train(train)
    with torch.no_grad():
        x = ours.preprocess_image(inputs).tensor  # docTR takes the normalised tensor
    return cfg, ours, ref, inputs, targets, x, fns, extra, amp


def setup_dbnet_infer(args, sides=("ours", "reference")):
    """DBNet network inference, image to probability map (post-processing excluded on both sides: with random
    weights its cost says nothing): ours (fast paths on; normalisation inside the timed call) vs docTR's
    db_resnet50 (`exportable`: the logits) on the same normalised tensor."""
    cfg, ours, ref, inputs, _, x, fns, extra, amp = _dbnet_setup(args, False, sides)
    if "ours" in sides:
        _fast_cfg(cfg)
        fast = optimize_for_inference(ours, cfg)
        fns["ours"] = _infer_call(lambda: fast.head(fast.backbone(fast.preprocess_image(inputs).tensor),
                                                    with_binary=False)["prob_logits"], amp)
    if ref is not None:
        fns["reference"] = _infer_call(lambda: ref(x)["logits"], amp)
    return fns, extra


def setup_dbnet_train(args, sides=("ours", "reference")):
    """DBNet training step (target maps from the boxes in numpy, losses, backward, SGD step), trained BN and
    the whole backbone in both: ours (configs/Text/dbnet_R_50_FPN.yaml, channels_last) vs docTR's db_resnet50."""
    cfg, ours, ref, inputs, targets, x, fns, extra, amp = _dbnet_setup(args, True, sides)
    extra["optimizer"] = "SGD lr 1e-4, momentum 0.9, both"
    if "ours" in sides:
        opt = torch.optim.SGD(_trainable(ours), lr=1e-4, momentum=0.9)
        fns["ours"] = _train_step(ours, opt, lambda: ours(inputs), amp)
        extra["trainable_params_ours"] = sum(p.numel() for p in _trainable(ours))
    if ref is not None:
        opt_ref = torch.optim.SGD(_trainable(ref), lr=1e-4, momentum=0.9)
        fns["reference"] = _train_step(ref, opt_ref, lambda: ref(x, target=targets)["loss"], amp)
        extra["trainable_params_reference"] = sum(p.numel() for p in _trainable(ref))
    return fns, extra


def setup_frcnn_train(args, sides=("ours", "reference")):
    """Row 4 (see the module docstring) on this machine's precision."""
    from resnet_backbone.modeling.meta_arch import build_model
    from resnet_backbone.structures import Instances

    dev = args.device
    amp = row_precision(args)
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
    extra = {"batch": batch, "image": [size, size], "precision": amp.reason,
             "trainable_params_ours": sum(p.numel() for p in _trainable(ours)),
             "trainable_params_reference": sum(p.numel() for p in _trainable(tv))}
    fns = {}
    if "ours" in sides:
        opt = torch.optim.SGD(_trainable(ours), lr=1e-4, momentum=0.9)
        fns["ours"] = _train_step(ours, opt, lambda: ours(ours_in), amp)
    if "reference" in sides:
        opt_tv = torch.optim.SGD(_trainable(tv), lr=1e-4, momentum=0.9)
        fns["reference"] = _train_step(tv, opt_tv, lambda: tv(tv_imgs, tv_tg), amp)
    if "ours" not in sides:
        del ours
    if "reference" not in sides:
        del tv
    gc.collect()
    return fns, extra


PEER_ROWS = {  # row name -> (setup, images per call from its extra["batch"], what the reference is)
    "frcnn_train": (setup_frcnn_train, "torchvision Faster R-CNN (fine-tuning build)"),
    "detr_infer": (setup_detr_infer, "transformers DetrForObjectDetection"),
    "detr_train": (setup_detr_train, "transformers DetrForObjectDetection"),
    "dbnet_infer": (setup_dbnet_infer, "docTR db_resnet50"),
    "dbnet_train": (setup_dbnet_train, "docTR db_resnet50"),
}


def _rss_call(fn: Callable[[], object], calls: int) -> dict:
    """In a process that holds one side only: the RSS before `calls` calls of `fn` and the high-water mark
    during them (MiB)."""
    gc.collect()
    base = _proc_status_kb("VmRSS")
    if base is None or not _reset_rss_peak():
        return {}
    for _ in range(calls):
        fn()
    peak = _proc_status_kb("VmHWM")
    return {"rss_before_mb": base / 1024, "rss_peak_mb": peak / 1024, "rss_peak_above_before_mb": (peak - base) / 1024}


def rss_child(args) -> None:
    """--rss-child ROW:SIDE: build that side of that peer row alone, run it `warmup + 1` times (at least 2: a
    training step's first call allocates the optimizer state) and print its process's RSS as one JSON line."""
    name, side = args.rss_child.split(":")
    fns, _ = PEER_ROWS[name][0](args, (side,))
    print("RSS_JSON " + json.dumps(_rss_call(fns[side], max(2, args.warmup + 1))), flush=True)


def rss_in_subprocess(name: str, side: str, args) -> dict:
    """Peak RSS of one side of a peer row, measured in its own fresh process (`rss_child`) so that neither the
    other side's model nor this process's earlier rows count: {"rss_peak_mb": the process's high-water mark
    during the calls, model and torch included, "rss_peak_above_before_mb": its rise above the RSS before the
    first call}. Empty (and a warning) when the child fails."""
    import subprocess

    argv = [sys.executable, os.path.abspath(__file__), "--rss-child", f"{name}:{side}", "--device", args.device,
            "--depth", str(args.depth), "--warmup", str(args.warmup), "--amp-dtype", args.amp_dtype,
            "--precision", args.precision, "--threads", str(torch.get_num_threads()), "--no-progress"]
    if args.quick:
        argv.append("--quick")
    if args.keep_denormals:
        argv.append("--keep-denormals")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=True)
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RSS_JSON "))
        return json.loads(line[len("RSS_JSON "):])
    except (subprocess.SubprocessError, StopIteration, ValueError) as e:
        err = getattr(e, "stderr", "") or ""
        logger.warning("%s/%s: RSS child failed (%s) %s", name, side, type(e).__name__, err[-2000:])
        return {}


def profile_top(fn: Callable[[], object], top: int) -> str:
    """One profiled call of `fn` (after the timed ones): the `top` operators by self CPU time, each as its share
    of the call's total self CPU time (proportions: comparable across machine load)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows) or 1
    rows.sort(key=lambda e: -e.self_cpu_time_total)
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in rows[:top])


def run_peer_row(name: str, args) -> dict:
    setup, reference = PEER_ROWS[name]
    if args.rss_only:  # memory only, no timing: combine with a timed run's JSON through --merge
        row = {"name": name, "entries": {}, "reference_is": reference}
        for side in ("ours", "reference"):
            mem = rss_in_subprocess(name, side, args)
            if mem:
                row["entries"][side] = {"median_ms": None, **mem}
        _rss_verdict(row)
        return row
    try:
        fns, extra = setup(args)
    except PeerMissing as e:  # only the reference is missing: time ours alone, say why
        logger.warning("%s: %s; timing ours only", name, e)
        fns, extra = setup(args, ("ours",))
        extra["reference_skipped"] = str(e)
    extra["reference_is"] = reference
    # CPU memory: the own-process RSS below (in-process figures would count the other side's model and earlier
    # rows, and cost two more calls per side); a --no-rss run gets it from an --rss-only run through --merge
    row = run_pair(name, fns, extra.get("batch", 1), args, ref="reference" if "reference" in fns else None,
                   extra=extra, memory=args.device == "cuda")
    row["target"] = TARGETS.get(name, 1.3)
    if "ratio" in row:
        row["target_met"] = bool(row["ratio"] >= row["target"])
    if args.profile:
        for side, fn in fns.items():
            row[f"profile_{side}"] = profile_top(fn, args.profile)
    del fns
    gc.collect()
    if args.rss:
        for side in [s for s in ("ours", "reference") if s in row["entries"]]:
            row["entries"][side].update(rss_in_subprocess(name, side, args))
        _rss_verdict(row)
    return row


def _rss_verdict(row: dict) -> None:
    e = row["entries"]
    if all("rss_peak_mb" in e.get(s, {}) for s in ("ours", "reference")):
        row["rss_ours_vs_reference"] = e["ours"]["rss_peak_mb"] / e["reference"]["rss_peak_mb"]
        row["rss_ours_not_higher"] = bool(e["ours"]["rss_peak_mb"] <= e["reference"]["rss_peak_mb"])


def merge_results(paths: list[str]) -> dict:
    """--merge: one result from several runs' benchmark.json (e.g. a timed --no-rss run in a quiet window and a
    --rss-only run): the first file's machine and args; rows of the same name have their entries' fields
    combined (later files add what earlier ones lack); rows of other names are appended."""
    results = [json.load(open(p)) for p in paths]
    out = copy.deepcopy(results[0])
    out["merged_from"] = paths
    by_name = {r["name"]: r for r in out["rows"]}
    for res in results[1:]:
        for row in res["rows"]:
            mine = by_name.get(row["name"])
            if mine is None:
                out["rows"].append(row)
                by_name[row["name"]] = row
                continue
            for side, e in row.get("entries", {}).items():
                dst = mine["entries"].setdefault(side, {})
                for k, v in e.items():
                    if dst.get(k) is None:
                        dst[k] = v
            for k, v in row.items():
                mine.setdefault(k, v)
            _rss_verdict(mine)
    return out


def row_frcnn_train(args) -> dict:
    return run_peer_row("frcnn_train", args)


def row_detr_dbnet(args) -> list[dict]:
    names = [n for n in ("detr_infer", "detr_train", "dbnet_infer", "dbnet_train")
             if not args.only or any(n.startswith(o) for o in args.only.split(","))]
    return [run_peer_row(n, args) for n in names]


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
        "| row | entry | median ms (IQR) | min-max ms | ms/img | img/s | peak MiB RSS / tensors | own-process peak RSS"
        " MiB (+ during calls) | ratio | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | | | | | | | |")
            continue
        first = True
        for name, e in row["entries"].items():
            iqr = f" ({_fmt(e.get('q1_ms'))}-{_fmt(e.get('q3_ms'))})" if e.get("q1_ms") is not None else ""
            label = name + (f" [{e['backend']}]" if "backend" in e else "")
            own_rss = (f"{e['rss_peak_mb']:.0f} (+{e['rss_peak_above_before_mb']:.0f})" if "rss_peak_mb" in e
                       else "-")
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
                         f"{_fmt(e.get('peak_mem_mb'))} / {_fmt(e.get('peak_tensor_mb'))} | {own_rss} | {ratio} | "
                         f"{target} |")
            first = False
    notes = []
    for row in result["rows"]:
        if row.get("skipped"):
            continue
        bits = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k not in ("name", "entries", "ratio", "target", "target_met", "paired_ratio_median",
                             "paired_ratio_min", "paired_ratio_max", "settings") and not k.startswith("profile_")]
        if "paired_ratio_min" in row:
            bits.append(f"paired ratio range {row['paired_ratio_min']:.2f}-{row['paired_ratio_max']:.2f}")
        faults = {n: e["page_faults"] for n, e in row["entries"].items() if e.get("page_faults") is not None}
        if faults:
            bits.append("page faults per call " + ", ".join(f"{n} {v}" for n, v in faults.items()))
        notes.append(f"- {row['name']}: " + "; ".join(bits))
        for k in [k for k in row if k.startswith("profile_")]:
            notes.append(f"  - {k} (share of self CPU time, one call): {row[k]}")
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
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32"],
                    help="peer rows (4, 5): 'auto' = the machine's native choice (bf16 autocast where native, "
                         "else float32; both sides the same), or fp32")
    ap.add_argument("--no-rss", dest="rss", action="store_false",
                    help="peer rows: skip the per-side peak RSS, measured in a fresh process per side")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="peer rows: after timing, profile one call per side and list its N top operators")
    ap.add_argument("--only", default="", help="row 5: only its rows starting with these (comma list), "
                                               "e.g. detr, dbnet_train")
    ap.add_argument("--row-budget", type=float, default=0.0, metavar="S",
                    help="peer rows: end a row's interleaved rounds after S seconds (at least 3 rounds; 0: all)")
    ap.add_argument("--rss-only", action="store_true",
                    help="peer rows: only the per-side RSS (own processes), no timing; combine with --merge")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="write one table from these benchmark.json files (a timed run and an --rss-only run)")
    ap.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
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
    if args.rss_child:
        rss_child(args)
        return {}
    rows = [] if args.merge else parse_rows(args.rows)
    result = {"machine": machine_info(args.device), "args": vars(args), "rows": []}
    result["machine"]["flush_denormal"] = not args.keep_denormals
    if args.merge:
        result = merge_results(args.merge)
    for name in rows:
        logger.info("row %s", name)
        t0 = time.perf_counter()
        out = ROW_FUNCTIONS[name](args)
        for r in (out if isinstance(out, list) else [out]):
            r["wall_s"] = time.perf_counter() - t0
            result["rows"].append(r)
        gc.collect()
    try:
        result["machine"].setdefault("load_average_at_end", list(os.getloadavg()))
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
