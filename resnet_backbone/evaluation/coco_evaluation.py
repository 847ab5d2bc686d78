"""COCOEvaluator: COCO box AP, and mask AP when the predictions carry masks, with pycocotools or faster-coco-eval.

Numbers are in percent (0-100), as detectron2 reports them: perfect predictions give AP = 100.
"""
from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os

import numpy as np
import torch

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["COCOEvaluator", "instances_to_coco_json", "coco_gt_from_dataset_dicts", "summarize_coco_eval"]

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
TASKS = ("bbox", "segm")
SUMMARY_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def masks_to_rle(masks) -> list[dict]:
    """(N, H, W) masks (bool or 0/1) -> N COCO RLE dicts {"size": [H, W], "counts": str} (pycocotools.mask.encode
    on a Fortran-ordered uint8 (H, W, N) array; counts decoded to str so that the dicts go into json)."""
    from pycocotools import mask as mask_util

    m = _as_numpy(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
    if len(m) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def instances_to_coco_json(output: dict, image_id, contiguous_to_dataset_id: dict[int, int] | None) -> list[dict]:
    """One image's output {"boxes" (N,4) XYXY, "scores", "labels" contiguous[, "masks" (N, H, W) bool]} -> COCO
    result dicts (XYWH, dataset category ids; "segmentation" RLE when there are masks). A detectron2-style
    {"instances": Instances(pred_boxes, scores, pred_classes[, pred_masks])} also works."""
    masks = None
    if "instances" in output and "boxes" not in output:
        inst = output["instances"]
        boxes = inst.pred_boxes.tensor if hasattr(inst.pred_boxes, "tensor") else inst.pred_boxes
        scores, labels = inst.scores, inst.pred_classes
        if inst.has("pred_masks"):
            masks = inst.pred_masks
    else:
        boxes, scores, labels = output["boxes"], output["scores"], output["labels"]
        masks = output.get("masks")
    boxes = _as_numpy(boxes).astype(np.float64).reshape(-1, 4)
    scores = _as_numpy(scores).astype(np.float64).reshape(-1)
    labels = _as_numpy(labels).astype(np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    rles = None
    if masks is not None:
        if len(masks) != len(boxes):
            raise ValueError(f"image {image_id}: {len(masks)} masks for {len(boxes)} boxes")
        rles = masks_to_rle(masks)
    results = []
    for k, ((x0, y0, x1, y1), s, c) in enumerate(zip(boxes.tolist(), scores.tolist(), labels.tolist())):
        if contiguous_to_dataset_id is not None:
            if c not in contiguous_to_dataset_id:
                raise ValueError(f"image {image_id}: predicted label {c} is not a contiguous class id of this dataset "
                                 f"(0..{len(contiguous_to_dataset_id) - 1}); check MODEL.*.NUM_CLASSES")
            c = contiguous_to_dataset_id[c]
        results.append({"image_id": image_id, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(s)})
        if rles is not None:
            results[-1]["segmentation"] = rles[k]
    return results


def coco_gt_from_dataset_dicts(dicts: list[dict], thing_classes: list[str] | None,
                               contiguous_to_dataset_id: dict[int, int] | None) -> dict:
    """Standard dataset dicts (contiguous ids) -> a COCO ground-truth json dict (dataset ids). An annotation's
    "segmentation" (polygons or RLE) is kept; its "area", when the dict has none, is the segmentation's pixel count
    (pycocotools, as COCO's own areas) or else the box's."""
    c2d = contiguous_to_dataset_id or {}
    num = len(thing_classes) if thing_classes else 1 + max(
        (a["category_id"] for d in dicts for a in d.get("annotations", [])), default=-1)
    names = thing_classes or [str(i) for i in range(num)]
    cats = [{"id": int(c2d.get(i, i)), "name": names[i]} for i in range(num)]
    images, anns = [], []
    next_id = 1
    for d in dicts:
        images.append({"id": d["image_id"], "width": d["width"], "height": d["height"],
                       "file_name": d.get("file_name", "")})
        for a in d.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            seg = a.get("segmentation")
            area = a.get("area")
            if area is None:
                area = _segmentation_area(seg, d["height"], d["width"]) if seg else w * h
            anns.append({"id": a.get("id", next_id), "image_id": d["image_id"], "bbox": [x, y, w, h],
                         "area": float(area), "iscrowd": int(a.get("iscrowd", 0)),
                         "category_id": int(c2d.get(a["category_id"], a["category_id"]))})
            if seg:
                anns[-1]["segmentation"] = copy.deepcopy(seg)
            next_id += 1
    ids = [a["id"] for a in anns]
    if len(set(ids)) != len(ids):  # records without unique ids: renumber
        for i, a in enumerate(anns, 1):
            a["id"] = i
    return {"images": images, "annotations": anns, "categories": cats}


def _segmentation_area(seg, height: int, width: int) -> float:
    """The pixel count of a polygons / RLE segmentation (pycocotools' rasterisation, data/masks.py)."""
    from ..data.masks import segmentation_to_mask

    return float(segmentation_to_mask(seg, height, width).sum())


def _has_segmentation(gt: dict, img_ids) -> tuple[bool, object]:
    """(every annotation of these images has a segmentation, the id of the first one without)."""
    ids = set(img_ids)
    for a in gt["annotations"]:
        if a["image_id"] in ids and not a.get("segmentation"):
            return False, a.get("id")
    return True, None


def _load_gt_json(json_file: str) -> dict:
    with open(json_file) as f:
        data = json.load(f)
    data.setdefault("annotations", [])
    for a in data["annotations"]:  # fields COCOeval needs
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
    return data


def _make_coco(backend: str, gt: dict):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO

        return COCO(copy.deepcopy(gt))
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _run_cocoeval(backend: str, coco_gt, results: list[dict], img_ids, task: str = "bbox"):
    """COCOeval of `task` ("bbox" or "segm"). Each task sees only its own field of the results (detectron2 does
    the same): loadRes takes a result's area and box from its mask only when it has no "bbox", and a box eval
    must not see masks."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.cocoeval import COCOeval
    other = "segmentation" if task == "bbox" else "bbox"
    results = [{k: v for k, v in r.items() if k != other} for r in results]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, task)
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.info("COCOeval %s (%s) summary:\n%s", task, backend, buf.getvalue())
    return ev


def summarize_coco_eval(ev, class_names_by_cat_id: dict[int, str]) -> dict[str, float]:
    """COCOeval after accumulate/summarize -> {"AP", "AP50", ..., "AP-<class>"} in percent (NaN where undefined)."""
    stats = ev.stats
    res = {k: float(stats[i] * 100) if stats[i] >= 0 else float("nan") for i, k in enumerate(SUMMARY_KEYS)}
    precision = ev.eval["precision"]  # (iou thresholds, recall, categories, areas, max dets)
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        res[f"AP-{class_names_by_cat_id.get(cat_id, str(cat_id))}"] = float(np.mean(p) * 100) if p.size else float(
            "nan")
    return res


def _table(per_cat: dict[str, float], cols: int = 3) -> str:
    items = [(k[3:], f"{v:.3f}") for k, v in per_cat.items()]
    w1 = max([len("category")] + [len(a) for a, _ in items])
    w2 = max([len("AP")] + [len(b) for _, b in items])
    header = " | ".join(f"{'category':<{w1}} | {'AP':>{w2}}" for _ in range(min(cols, len(items)) or 1))
    rows = [header, "-" * len(header)]
    for i in range(0, len(items), cols):
        rows.append(" | ".join(f"{a:<{w1}} | {b:>{w2}}" for a, b in items[i:i + cols]))
    return "\n".join(rows)


class COCOEvaluator(DatasetEvaluator):
    """Collect predictions, map contiguous labels back to dataset category ids, write
    `<output_dir>/coco_instances_results.json`, run COCOeval on the images that were processed and return
    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>", ...}} in percent, plus {"segm": {...}}
    (mask AP, the same keys) when the predictions carry "masks" ((N, H, W) bool in the original image, one per
    box; encoded to RLE as each batch is processed, so full-size masks are never kept) and every ground-truth
    annotation of the evaluated images has a segmentation. The results json then carries each detection's
    "segmentation" (RLE, counts as str) beside its "bbox".

    `tasks`: None (the default) = "bbox", and "segm" as above; ("bbox",) never runs segm; a tuple naming "segm"
    requires it (an error when the predictions have no masks or the ground truth no segmentation).
    Ground truth: the dataset's `json_file` metadata (the raw file, as COCO's own evaluation uses it) or, when the
    dataset has none, its dataset dicts converted to COCO format (segmentations kept). With `distributed`,
    predictions from all ranks are gathered on the main rank (duplicates of an image id, e.g. from padded
    samplers, counted once); other ranks return {}. No predictions at all gives AP 0 (the model found nothing),
    not an error.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, backend: str = "pycocotools",
                 distributed: bool = True, tasks=None):
        if backend not in BACKENDS:
            raise ValueError(f"COCOEvaluator backend must be one of {BACKENDS} (TEST.EVALUATOR_BACKEND), "
                             f"got {backend!r}")
        if tasks is not None:
            tasks = tuple(tasks)
            if "bbox" not in tasks or not set(tasks) <= set(TASKS):
                raise ValueError(f"COCOEvaluator tasks must be 'bbox' or 'bbox' and 'segm', got {tasks}")
        self.tasks = tasks
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.backend = backend
        self.distributed = distributed
        self._metadata = MetadataCatalog.get(dataset_name)
        if self._metadata.get("thing_dataset_id_to_contiguous_id") is None and dataset_name in DatasetCatalog:
            DatasetCatalog.get(dataset_name)  # loading a COCO json stores the id mapping in the metadata
        d2c = self._metadata.get("thing_dataset_id_to_contiguous_id")
        self._c2d = {int(c): int(d) for d, c in d2c.items()} if d2c else None
        self._coco_gt = None
        self.reset()

    def reset(self):
        self._predictions: list[dict] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if self.tasks == ("bbox",) and "masks" in out:  # box AP only: the masks are not even encoded
                out = {k: v for k, v in out.items() if k != "masks"}
            inst = instances_to_coco_json(out, image_id, self._c2d)
            has_masks = "masks" in out or ("instances" in out and out["instances"].has("pred_masks"))
            self._predictions.append({"image_id": image_id, "masks": has_masks, "instances": inst})

    def _gt(self) -> dict:
        json_file = self._metadata.get("json_file")
        if json_file and os.path.exists(json_file):
            return _load_gt_json(json_file)
        dicts = DatasetCatalog.get(self.dataset_name)
        return coco_gt_from_dataset_dicts(dicts, self._metadata.get("thing_classes"), self._c2d)

    def _want_segm(self, by_masks: dict, gt: dict, img_ids) -> bool:
        """Whether to run segm COCOeval (see the class docstring)."""
        if self.tasks == ("bbox",):
            return False
        required = self.tasks is not None
        if not by_masks or not all(by_masks.values()):
            if required:
                raise ValueError(f"COCOEvaluator: tasks {self.tasks} ask for 'segm' but the predictions of "
                                 f"'{self.dataset_name}' carry no \"masks\" (for every image)")
            return False
        ok, missing = _has_segmentation(gt, img_ids)
        if not ok:
            msg = (f"the ground truth of '{self.dataset_name}' has no segmentation for annotation id={missing}: "
                   "no mask AP")
            if required:
                raise ValueError(f"COCOEvaluator: tasks {self.tasks} ask for 'segm' but {msg}")
            logger.warning("COCOEvaluator: the predictions carry masks but %s (bbox AP only)", msg)
        return ok

    def evaluate(self, img_ids=None):
        if self.distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = self._predictions
        by_image: dict = {}
        by_masks: dict = {}
        for p in predictions:
            by_image.setdefault(p["image_id"], p["instances"])  # each image counted once
            by_masks.setdefault(p["image_id"], p.get("masks", False))
        results = [r for inst in by_image.values() for r in inst]
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, "coco_instances_results.json")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f)
            os.replace(tmp, path)
            logger.info("wrote %d detections to %s", len(results), path)
        if not by_image:
            logger.warning("COCOEvaluator: no images were processed")
            return {"bbox": {}}
        img_ids = sorted(by_image) if img_ids is None else sorted(img_ids)
        if self._coco_gt is None:  # built once per evaluator (periodic evaluation reuses it)
            gt = self._gt()
            self._coco_gt = (gt, _make_coco(self.backend, gt))
        gt, coco_gt = self._coco_gt
        names = {c["id"]: c["name"] for c in gt["categories"]}
        if self._c2d is not None and self._metadata.get("thing_classes"):
            names.update({self._c2d[i]: n for i, n in enumerate(self._metadata.thing_classes) if i in self._c2d})
        unknown = set(img_ids) - set(coco_gt.getImgIds())
        if unknown:
            raise ValueError(f"predictions for image ids {sorted(unknown)[:10]} that are not in the ground truth of "
                             f"'{self.dataset_name}'")
        tasks = ["bbox"] + (["segm"] if self._want_segm(by_masks, gt, img_ids) else [])
        return {task: self._evaluate_task(task, gt, coco_gt, results, img_ids, names) for task in tasks}

    def _evaluate_task(self, task, gt, coco_gt, results, img_ids, names) -> dict[str, float]:
        if not results:
            logger.warning("COCOEvaluator: the model made no detection on %d images; %s AP = 0", len(img_ids), task)
            res = {k: 0.0 for k in SUMMARY_KEYS}
            with_gt = {a["category_id"] for a in gt["annotations"] if a["image_id"] in set(img_ids)}
            for c in sorted(names):
                res[f"AP-{names[c]}"] = 0.0 if c in with_gt else float("nan")
        else:
            ev = _run_cocoeval(self.backend, coco_gt, results, img_ids, task)
            res = summarize_coco_eval(ev, names)
        per_cat = {k: v for k, v in res.items() if k.startswith("AP-")}
        logger.info("%s AP (%s): %s\nper-category %s AP:\n%s", task, self.backend,
                    ", ".join(f"{k}={res[k]:.3f}" for k in SUMMARY_KEYS), task, _table(per_cat))
        if any(math.isnan(v) for v in per_cat.values()):
            logger.info("NaN AP: the category has no ground truth in the evaluated images")
        return res
