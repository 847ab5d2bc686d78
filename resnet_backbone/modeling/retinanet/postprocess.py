"""RetinaNet's detections: per level, sigmoid scores above SCORE_THRESH_TEST, the TOPK_CANDIDATES_TEST best
(anchor, class) pairs, their boxes decoded; then per-class NMS over all levels (NMS_THRESH_TEST) and the
TEST.DETECTIONS_PER_IMAGE best. Both libraries do exactly this; they differ in where boxes are clipped
(MODEL.RCNN_EDGE_RULES):

    "detectron2"   no clipping before NMS; after rescaling to the output size ("height" x "width") boxes are
                   clipped and the empty ones dropped (detectron2's detector_postprocess)
    "torchvision"  boxes clipped to the (resized) input image before NMS; after rescaling clipped again, none
                   dropped

Both drop candidates with a non-finite box or score before NMS (detectron2 and torchvision do not check; a
non-finite box would otherwise reach the output).
"""
from __future__ import annotations

import torch
from torchvision.ops import boxes as box_ops

from ...structures import rescale_boxes

__all__ = ["decode_detections", "rescale_detections"]


def decode_detections(cls_logits: torch.Tensor, deltas: torch.Tensor, anchors: list[torch.Tensor],
                      num_anchors_per_level: list[int], image_sizes, box_coder, *, score_thresh: float,
                      topk_candidates: int, nms_thresh: float, detections_per_image: int,
                      clip_before_nms: bool) -> list[dict[str, torch.Tensor]]:
    """cls_logits (N, R, K), deltas (N, R, 4), anchors N x (R, 4), R = sum(num_anchors_per_level) -> per image
    {"boxes" (D, 4) in input pixels, "scores" (D,), "labels" (D,) in 0..K-1}, best first."""
    results = []
    for logits, pred, anc, size in zip(cls_logits.float(), deltas.float(), anchors, image_sizes):
        boxes_all, scores_all, labels_all = [], [], []
        for lv_logits, lv_pred, lv_anchors in zip(logits.split(num_anchors_per_level),
                                                  pred.split(num_anchors_per_level),
                                                  anc.split(num_anchors_per_level)):
            num_classes = lv_logits.shape[-1]
            scores = torch.sigmoid(lv_logits).flatten()
            keep = scores > score_thresh
            scores, idx = scores[keep], torch.where(keep)[0]
            scores, order = scores.topk(min(int(topk_candidates), int(idx.numel())))
            idx = idx[order]
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            boxes = box_coder.decode_single(lv_pred[anchor_idx], lv_anchors[anchor_idx])
            if clip_before_nms:
                boxes = box_ops.clip_boxes_to_image(boxes, tuple(size))
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(idx % num_classes)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def rescale_detections(detections: list[dict], batched_inputs: list[dict], image_sizes,
                       drop_empty: bool) -> list[dict]:
    """Boxes from the (h, w) input to each input's "height" x "width" (default: unchanged), clipped to it; with
    `drop_empty`, boxes without area after clipping are left out (detectron2)."""
    results = []
    for det, x, size in zip(detections, batched_inputs, image_sizes):
        boxes, _ = rescale_boxes(det["boxes"], size, x)
        out = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"]}
        if drop_empty:
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out = {k: v[keep] for k, v in out.items()}
        results.append(out)
    return results
