#!/usr/bin/env python
"""COCO box evaluation speed: faster-coco-eval against pycocotools on the same predictions.

Generates a synthetic ground truth (default 5,000 images, no pixels needed) and a set of detections that
overlap it imperfectly (jittered true positives, class confusions, false positives, crowd regions), writes both
as COCO json files in a temporary folder, then runs the full evaluation (load GT, load results, evaluate,
accumulate, summarize) with each backend, interleaved (A B B A ...) so both see the same machine load.
It checks that the 12 summary metrics agree to --tol and reports the time ratio.

    python tools/benchmark_coco_eval.py --images 5000 --repeats 2 --output-dir output/benchmark
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnet_backbone.utils.cli import run_tool  # noqa: E402

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def make_synthetic_coco(num_images: int, num_classes: int = 20, seed: int = 0,
                        width: int = 640, height: int = 480) -> tuple[dict, list[dict]]:
    """Return (ground-truth COCO dict, list of detection dicts) for `num_images` synthetic images."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    categories = [{"id": c + 1, "name": f"class_{c}"} for c in range(num_classes)]
    ann_id = 1
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.jpg", "width": width, "height": height})
        n = int(rng.poisson(7)) + 1
        # boxes spanning small / medium / large COCO area ranges
        side = np.exp(rng.uniform(np.log(8), np.log(400), size=(n, 2)))
        w = np.minimum(side[:, 0], width - 1)
        h = np.minimum(side[:, 1], height - 1)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        cls = rng.integers(1, num_classes + 1, size=n)
        crowd = rng.random(n) < 0.02
        for i in range(n):
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(cls[i]),
                "bbox": [float(x[i]), float(y[i]), float(w[i]), float(h[i])],
                "area": float(w[i] * h[i]), "iscrowd": int(crowd[i]),
            })
            ann_id += 1
        # detections: most GT found with a jitter, some with the wrong class, plus false positives
        found = rng.random(n) < 0.85
        jitter = rng.normal(0, 0.08, size=(n, 4)) * np.stack([w, h, w, h], axis=1)
        wrong = rng.random(n) < 0.1
        for i in np.nonzero(found)[0]:
            dx, dy, dw, dh = jitter[i]
            bw, bh = max(1.0, w[i] + dw), max(1.0, h[i] + dh)
            c = int(rng.integers(1, num_classes + 1)) if wrong[i] else int(cls[i])
            detections.append({"image_id": image_id, "category_id": c,
                               "bbox": [float(x[i] + dx), float(y[i] + dy), float(bw), float(bh)],
                               "score": float(rng.uniform(0.3, 1.0))})
        for _ in range(int(rng.poisson(6))):
            bw, bh = np.exp(rng.uniform(np.log(8), np.log(300), size=2))
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, num_classes + 1)),
                               "bbox": [float(rng.uniform(0, width - bw)), float(rng.uniform(0, height - bh)),
                                        float(bw), float(bh)],
                               "score": float(rng.uniform(0.0, 0.6))})
    gt = {"images": images, "annotations": annotations, "categories": categories,
          "info": {"description": "synthetic benchmark"}, "licenses": []}
    return gt, detections


def _run_pycocotools(gt_path: str, dt_path: str) -> tuple[np.ndarray, dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return _run(COCO, COCOeval, gt_path, dt_path)


def _run_faster_coco_eval(gt_path: str, dt_path: str) -> tuple[np.ndarray, dict]:
    from faster_coco_eval import COCO, COCOeval_faster

    return _run(COCO, COCOeval_faster, gt_path, dt_path)


def _run(coco_cls, eval_cls, gt_path: str, dt_path: str) -> tuple[np.ndarray, dict]:
    phases = {}
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        coco_gt = coco_cls(gt_path)
        coco_dt = coco_gt.loadRes(dt_path)
        t1 = time.perf_counter()
        ev = eval_cls(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        t2 = time.perf_counter()
        ev.accumulate()
        ev.summarize()
        t3 = time.perf_counter()
    phases.update(load_s=t1 - t0, evaluate_s=t2 - t1, accumulate_summarize_s=t3 - t2, total_s=t3 - t0)
    return np.asarray(ev.stats[:12], dtype=np.float64), phases


BACKENDS = {"pycocotools": _run_pycocotools, "faster_coco_eval": _run_faster_coco_eval}


def run_benchmark(num_images: int = 5000, repeats: int = 1, tol: float = 1e-4, seed: int = 0,
                  tmp_dir: str | None = None, progress: bool = True) -> dict:
    """Generate the data, time both backends interleaved, compare metrics. Returns a JSON-able dict."""
    gt, dets = make_synthetic_coco(num_images, seed=seed)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        gt_path, dt_path = os.path.join(d, "gt.json"), os.path.join(d, "dt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(dt_path, "w") as f:
            json.dump(dets, f)
        times: dict[str, list[dict]] = {k: [] for k in BACKENDS}
        stats: dict[str, np.ndarray] = {}
        order = []
        for r in range(max(1, repeats)):  # A B, B A, A B ... so drifting load hits both alike
            order += list(BACKENDS) if r % 2 == 0 else list(reversed(list(BACKENDS)))
        try:
            from tqdm import tqdm

            it = tqdm(order, desc="coco eval", disable=not progress, file=sys.stderr)
        except ImportError:  # pragma: no cover
            it = order
        for name in it:
            s, phases = BACKENDS[name](gt_path, dt_path)
            times[name].append(phases)
            if name in stats and not np.allclose(stats[name], s, atol=0, rtol=0):
                raise RuntimeError(f"{name} gave different metrics on repeated runs")
            stats[name] = s
    diff = np.abs(stats["pycocotools"] - stats["faster_coco_eval"])
    result = {
        "num_images": num_images, "num_gt": len(gt["annotations"]), "num_detections": len(dets),
        "repeats": max(1, repeats), "tolerance": tol,
        "metrics": {name: dict(zip(STAT_NAMES, map(float, s))) for name, s in stats.items()},
        "max_abs_metric_diff": float(diff.max()), "metrics_match": bool(diff.max() <= tol),
        "backends": {},
    }
    for name, runs in times.items():
        totals = [p["total_s"] for p in runs]
        result["backends"][name] = {
            "total_s_median": statistics.median(totals), "total_s_min": min(totals), "total_s_max": max(totals),
            "phases_median": {k: statistics.median(p[k] for p in runs) for k in runs[0]},
        }
    result["speedup"] = (result["backends"]["pycocotools"]["total_s_median"]
                         / result["backends"]["faster_coco_eval"]["total_s_median"])
    result["evaluate_speedup"] = (result["backends"]["pycocotools"]["phases_median"]["evaluate_s"]
                                  / result["backends"]["faster_coco_eval"]["phases_median"]["evaluate_s"])
    return result


def to_markdown(result: dict) -> str:
    lines = [
        f"COCO bbox evaluation of {result['num_detections']:,} detections on {result['num_images']:,} synthetic "
        f"images ({result['num_gt']:,} GT boxes), {result['repeats']} interleaved repeat(s):",
        "",
        "| backend | total s (median) | min-max s | load s | evaluate s | accumulate+summarize s | AP |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in result["backends"].items():
        p = b["phases_median"]
        lines.append(f"| {name} | {b['total_s_median']:.2f} | {b['total_s_min']:.2f}-{b['total_s_max']:.2f} | "
                     f"{p['load_s']:.2f} | {p['evaluate_s']:.2f} | {p['accumulate_summarize_s']:.2f} | "
                     f"{result['metrics'][name]['AP']:.4f} |")
    lines += ["", f"Speed-up faster-coco-eval vs pycocotools: **{result['speedup']:.2f}x** end to end, "
              f"{result['evaluate_speedup']:.2f}x in evaluate(); max |metric difference| over the 12 summary "
              f"metrics = {result['max_abs_metric_diff']:.2e} (match to {result['tolerance']:g}: "
              f"{'yes' if result['metrics_match'] else 'NO'})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default="output/benchmark")
    args = ap.parse_args(argv)
    result = run_benchmark(args.images, args.repeats, args.tol, args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "coco_eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = to_markdown(result)
    with open(os.path.join(args.output_dir, "coco_eval.md"), "w") as f:
        f.write(md)
    print(md)
    return 0 if result["metrics_match"] else 1


if __name__ == "__main__":
    sys.exit(run_tool(main))
