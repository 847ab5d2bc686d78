"""ICDAR 2015 (Challenge 4, task 4.1 "text localization") text detection evaluation: precision, recall, hmean.

Our reading of the official protocol (the RRC evaluation script for Incidental Scene Text), per image:

1. Ground truth marked don't care (transcription ``###``; here ``ignore`` / ``iscrowd``) is never matched and
   never counted. Every other ground-truth polygon is a *care* ground truth, a degenerate (zero-area) one included
   (it simply cannot be matched: a miss).
2. Each detection is compared with each don't-care region **separately**: its area precision against that region
   is area(det & region) / area(det) (0 for a zero-area detection). If it is > 0.5 for at least one region the
   detection is discarded: neither a hit nor a false positive. A detection covering two don't-care regions by 30 %
   each is kept (it is not compared with their union). Every other detection is a *care* detection, a degenerate
   one included (it cannot match anything: a false positive).
3. Matching is one-to-one and greedy **in input order**, not by best IoU: ground truths are visited in order and,
   for each, detections in order; a pair matches when neither is matched yet, neither is don't care and
   IoU = area(g & d) / (area(g) + area(d) - area(g & d)) > 0.5 (strictly). The first such detection wins, even if
   a later one overlaps the ground truth better.
4. Per image: recall = matches / care gts (1 when the image has no care gt), precision = matches / care dets
   (0 when it has none; with no care gt: 0 if it has care detections, else 1).
5. Data set: matches, care gts and care dets are summed over the images; recall = matches / care gts and
   precision = matches / care dets, each 0 when its denominator is 0; hmean = 2PR / (P + R), 0 when P + R = 0.
   An image's own numbers (4.) are not averaged.

Extensions beyond the official 4-point format: polygons may have any number of points (Total-Text / CTW style),
either orientation (the official script rejects counter-clockwise points), and self-intersecting polygons are
repaired (shapely ``make_valid``, areal part kept) before any area is taken. Polygons with < 3 points or
non-finite coordinates have zero area. The detections of an image are matched in the order given (the order a
submission file would list them); the official script re-orders by confidence only in its optional confidence
mode.

`evaluate_text_polygons` is the pure function; `TextEvaluator` wraps it as a DatasetEvaluator reading the
ground truth from the dataset catalog.
"""
from __future__ import annotations

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
    """A shapely polygon with positive area, or None for a degenerate one (< 3 points, non-finite, zero area)."""
    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3 or not np.isfinite(pts).all():
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


def _image_summary(matches: int, num_gt: int, num_det: int) -> dict[str, float]:
    """One image's precision / recall / hmean by the official per-sample rule (4. in the module docstring)."""
    if num_gt == 0:
        recall, precision = 1.0, (0.0 if num_det > 0 else 1.0)
    else:
        recall = matches / num_gt
        precision = matches / num_det if num_det else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "hmean": float(hmean)}


def match_text_image(gt_polygons: Sequence, gt_ignore: Sequence[bool] | None, det_polygons: Sequence,
                     iou_thresh: float = 0.5, dont_care_thresh: float = 0.5) -> dict:
    """Match one image's detections to its ground truth by the protocol of the module docstring.

    Returns {"matches": int, "num_gt": care ground truths, "num_det": care detections,
             "pairs": [(gt_index, det_index, iou)] in match order, "dont_care_dets": [det indices discarded],
             "precision", "recall", "hmean": this image's own values (official per-sample rule)}.
    """
    if gt_ignore is None:
        gt_ignore = [False] * len(gt_polygons)
    if len(gt_ignore) != len(gt_polygons):
        raise ValueError(f"{len(gt_polygons)} ground-truth polygons but {len(gt_ignore)} ignore flags")
    gt_shapes = [_to_shape(p) for p in gt_polygons]
    care_gt = [i for i, ign in enumerate(gt_ignore) if not ign]
    dc_shapes = [s for s, ign in zip(gt_shapes, gt_ignore) if s is not None and ign]

    det_shapes = [_to_shape(p) for p in det_polygons]
    care_det, dont_care_dets = [], []
    for j, s in enumerate(det_shapes):
        # each don't-care region on its own (not their union); a zero-area detection has area precision 0
        if s is not None and any(s.intersection(dc).area > dont_care_thresh * s.area for dc in dc_shapes):
            dont_care_dets.append(j)
        else:
            care_det.append(j)

    used_det: set[int] = set()
    pairs = []
    for i in care_gt:  # official order: ground truths in order, then detections in order, first hit wins
        g = gt_shapes[i]
        if g is None:
            continue
        for j in care_det:
            d = det_shapes[j]
            if j in used_det or d is None or not g.intersects(d):
                continue
            inter = g.intersection(d).area
            iou = inter / (g.area + d.area - inter)
            if iou > iou_thresh:
                used_det.add(j)
                pairs.append((i, j, float(iou)))
                break
    out = {"matches": len(pairs), "num_gt": len(care_gt), "num_det": len(care_det), "pairs": pairs,
           "dont_care_dets": dont_care_dets}
    out.update(_image_summary(len(pairs), len(care_gt), len(care_det)))
    return out


def _summary(matches: int, num_gt: int, num_det: int) -> dict[str, float]:
    """Data-set precision / recall / hmean (5. in the module docstring): an empty denominator gives 0."""
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
