"""ICDAR-2015-style text detection evaluation: precision, recall and hmean at polygon IoU 0.5.

Protocol (per image, then summed over the data set):

* a detection that lies mostly inside don't-care ground truth (area of its intersection with the union of
  don't-care polygons > `dont_care_thresh` x its own area) is dropped: neither a hit nor a false positive;
* the remaining detections and the care ground truths are matched one-to-one, greedily by decreasing IoU,
  a pair matching when their IoU is > `iou_thresh` (polygon IoU with shapely);
* precision = matches / care detections, recall = matches / care ground truths, hmean = their harmonic mean.
  With no care ground truth and no care detection anywhere all three are 1; otherwise an empty denominator
  gives 0.

`evaluate_text_polygons` is the pure function; `TextEvaluator` wraps it as a DatasetEvaluator reading the
ground truth from the dataset catalog.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
from shapely.geometry import Polygon
from shapely.ops import unary_union
from shapely.validation import make_valid

from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["polygon_iou", "match_text_image", "evaluate_text_polygons", "TextEvaluator"]

logger = logging.getLogger(__name__)


def _to_shape(poly) -> Polygon | None:
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return None
    shape = Polygon(pts)
    if not shape.is_valid:
        fixed = make_valid(shape)
        # keep only the areal part (make_valid may return lines or points mixed in)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in ("Polygon", "MultiPolygon")]
        shape = unary_union(parts) if parts else None
    if shape is None or shape.is_empty or shape.area <= 0:
        return None
    return shape


def polygon_iou(a, b) -> float:
    """IoU of two polygons given as (P, 2) point arrays (self-intersecting ones are repaired first)."""
    sa, sb = _to_shape(a), _to_shape(b)
    if sa is None or sb is None:
        return 0.0
    inter = sa.intersection(sb).area
    union = sa.area + sb.area - inter
    return float(inter / union) if union > 0 else 0.0


def match_text_image(gt_polygons: Sequence, gt_ignore: Sequence[bool] | None, det_polygons: Sequence,
                     iou_thresh: float = 0.5, dont_care_thresh: float = 0.5) -> dict:
    """Match one image's detections to its ground truth.

    Returns {"matches": int, "num_gt": care ground truths, "num_det": care detections,
             "pairs": [(gt_index, det_index, iou)], "dont_care_dets": [det indices dropped]}.
    """
    if gt_ignore is None:
        gt_ignore = [False] * len(gt_polygons)
    if len(gt_ignore) != len(gt_polygons):
        raise ValueError(f"{len(gt_polygons)} ground-truth polygons but {len(gt_ignore)} ignore flags")
    gt_shapes = [_to_shape(p) for p in gt_polygons]
    care_gt = [i for i, (s, ign) in enumerate(zip(gt_shapes, gt_ignore)) if s is not None and not ign]
    dc_shapes = [s for s, ign in zip(gt_shapes, gt_ignore) if s is not None and ign]
    dc_union = unary_union(dc_shapes) if dc_shapes else None

    det_shapes = [_to_shape(p) for p in det_polygons]
    care_det, dont_care_dets = [], []
    for j, s in enumerate(det_shapes):
        if s is None:
            continue  # a degenerate detection covers nothing: it can neither hit nor hurt
        if dc_union is not None and s.intersection(dc_union).area > dont_care_thresh * s.area:
            dont_care_dets.append(j)
        else:
            care_det.append(j)

    candidates = []
    for i, j in itertools.product(care_gt, care_det):
        g, d = gt_shapes[i], det_shapes[j]
        if not g.intersects(d):
            continue
        inter = g.intersection(d).area
        iou = inter / (g.area + d.area - inter)
        if iou > iou_thresh:
            candidates.append((iou, i, j))
    candidates.sort(key=lambda t: (-t[0], t[1], t[2]))
    used_gt, used_det, pairs = set(), set(), []
    for iou, i, j in candidates:
        if i in used_gt or j in used_det:
            continue
        used_gt.add(i)
        used_det.add(j)
        pairs.append((i, j, float(iou)))
    return {"matches": len(pairs), "num_gt": len(care_gt), "num_det": len(care_det), "pairs": pairs,
            "dont_care_dets": dont_care_dets}


def _summary(matches: int, num_gt: int, num_det: int) -> dict[str, float]:
    if num_gt == 0 and num_det == 0:
        return {"precision": 1.0, "recall": 1.0, "hmean": 1.0}
    precision = matches / num_det if num_det else 0.0
    recall = matches / num_gt if num_gt else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "hmean": float(hmean)}


def evaluate_text_polygons(gt_polygons: Sequence[Sequence], gt_ignore: Sequence[Sequence[bool]] | None,
                           det_polygons: Sequence[Sequence], iou_thresh: float = 0.5,
                           dont_care_thresh: float = 0.5) -> dict[str, float]:
    """Data-set precision/recall/hmean; each argument has one entry (a list of polygons / flags) per image."""
    if len(gt_polygons) != len(det_polygons):
        raise ValueError(f"{len(gt_polygons)} images of ground truth but {len(det_polygons)} of detections")
    if gt_ignore is None:
        gt_ignore = [None] * len(gt_polygons)
    m = g = d = 0
    for gts, ign, dets in zip(gt_polygons, gt_ignore, det_polygons):
        r = match_text_image(gts, ign, dets, iou_thresh, dont_care_thresh)
        m, g, d = m + r["matches"], g + r["num_gt"], d + r["num_det"]
    out = _summary(m, g, d)
    out.update({"matches": m, "num_gt": g, "num_det": d})
    return out


def _record_ground_truth(record: dict) -> tuple[list[np.ndarray], list[bool]]:
    polys, ignore = [], []
    for ann in record.get("annotations", []):
        segm = ann.get("segmentation")
        flag = bool(ann.get("ignore", False)) or bool(ann.get("iscrowd", 0))
        if segm:
            for flat in segm:
                polys.append(np.asarray(flat, dtype=np.float64).reshape(-1, 2))
                ignore.append(flag)
        elif "bbox" in ann:  # a box-only annotation counts as its rectangle
            x, y, w, h = ann["bbox"]
            polys.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64))
            ignore.append(flag)
    return polys, ignore


class TextEvaluator(DatasetEvaluator):
    """DatasetEvaluator for text detection: {"text": {"precision", "recall", "hmean"}}.

    Ground truth comes from `DatasetCatalog.get(dataset_name)` (standard records with "segmentation" and
    "ignore"), detections from each output's "polygons" (original image coordinates). With `output_dir` the
    detections are also written to `text_predictions.json` there.
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None, iou_thresh: float = 0.5,
                 dont_care_thresh: float = 0.5, distributed: bool = True):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.iou_thresh = iou_thresh
        self.dont_care_thresh = dont_care_thresh
        self.distributed = distributed
        self._predictions: dict = {}

    def reset(self) -> None:
        self._predictions = {}

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in out.get("polygons", [])]
            scores = out.get("scores")
            scores = [] if scores is None else [float(s) for s in scores]
            self._predictions[inp["image_id"]] = {"polygons": polys, "scores": scores}

    def _ground_truth(self) -> dict:
        from ..data.catalog import DatasetCatalog

        return {r["image_id"]: _record_ground_truth(r) for r in DatasetCatalog.get(self.dataset_name)}

    def evaluate(self) -> dict:
        predictions = self._predictions
        if self.distributed and comm.get_world_size() > 1:
            merged: dict = {}
            for part in comm.gather(predictions, dst=0):
                merged.update(part)
            if not comm.is_main_process():
                return {}
            predictions = merged
        if not predictions:
            logger.warning("TextEvaluator(%s): no predictions were processed", self.dataset_name)
            return {}
        gt = self._ground_truth()
        missing = [i for i in predictions if i not in gt]
        if missing:
            raise KeyError(f"TextEvaluator({self.dataset_name}): predictions for image_id(s) {missing[:5]} "
                           f"that the dataset does not have")
        ids = list(predictions)
        result = evaluate_text_polygons([gt[i][0] for i in ids], [gt[i][1] for i in ids],
                                        [predictions[i]["polygons"] for i in ids],
                                        self.iou_thresh, self.dont_care_thresh)
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            dump = [{"image_id": i, "polygons": [p.tolist() for p in predictions[i]["polygons"]],
                     "scores": predictions[i]["scores"]} for i in ids]
            with open(os.path.join(self.output_dir, "text_predictions.json"), "w") as f:
                json.dump(dump, f)
        logger.info("Text detection on %s (%d images): precision %.4f recall %.4f hmean %.4f",
                    self.dataset_name, len(ids), result["precision"], result["recall"], result["hmean"])
        return {"text": {k: result[k] for k in ("precision", "recall", "hmean")}}
