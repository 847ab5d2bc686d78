"""From a DBNet probability map to text regions (polygons and min-area quadrilaterals).

binarize (prob > binarize_thresh) -> contours (cv2.findContours) -> keep the `max_candidates` largest ->
score each by the mean probability inside it (drop < box_thresh) -> drop regions whose min-area rectangle is
thinner than `min_size` -> unclip (dilate by D' = A * unclip_ratio / L, pyclipper) to undo the training-time
shrink -> min-area quadrilateral (cv2.minAreaRect) -> scale to the original image.

Coordinates: a contour point (column j, row i) is the pixel centre (j + 0.5, i + 0.5) in map coordinates
(the convention of targets.py); outputs are in original-image coordinates, clipped to the image.
"""
from __future__ import annotations

import cv2
import numpy as np

from .targets import offset_polygon, polygon_area, polygon_perimeter

__all__ = ["db_postprocess", "unclip", "order_quad"]


def unclip(poly: np.ndarray, ratio: float) -> np.ndarray | None:
    """Dilate `poly` by D' = A * ratio / L; returns the largest resulting polygon (None if degenerate)."""
    length = polygon_perimeter(poly)
    if length <= 0:
        return None
    distance = polygon_area(poly) * ratio / length
    out = offset_polygon(poly, distance)
    if not out:
        return None
    return max(out, key=polygon_area)


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Order 4 points clockwise on screen (y down), starting from the top-left one."""
    pts = np.asarray(pts, dtype=np.float64).reshape(4, 2)
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(angles)]  # increasing angle = clockwise on screen
    start = int(np.argmin(pts.sum(axis=1)))
    return np.roll(pts, -start, axis=0)


def _mean_inside(prob: np.ndarray, contour: np.ndarray) -> float:
    """Mean of `prob` over the pixels of the region outlined by an OpenCV contour (pixel indices)."""
    x0, y0 = contour.min(axis=0)
    x1, y1 = contour.max(axis=0)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(contour - [x0, y0]).astype(np.int32).reshape(-1, 1, 2)], 1)
    return float(cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0])


def db_postprocess(
    prob: np.ndarray,
    *,
    output_size: tuple[int, int] | None = None,
    binarize_thresh: float = 0.3,
    box_thresh: float = 0.6,
    unclip_ratio: float = 1.5,
    max_candidates: int = 1000,
    min_size: float = 3.0,
) -> dict:
    """Text regions from one probability map.

    Args:
        prob: (H, W) float probabilities, covering exactly the (resized) image, no padding.
        output_size: (height, width) of the original image; coordinates are scaled from (H, W) to it.
            None keeps map coordinates.
        binarize_thresh, box_thresh, unclip_ratio, max_candidates, min_size: see the module docstring;
            min_size is in map pixels.

    Returns:
        {"quads": list of (4, 2) float arrays, "polygons": list of (P, 2) unclipped contour polygons,
         "scores": (N,) float array}, sorted by decreasing score, all in output coordinates.
    """
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"db_postprocess: expected an (H, W) map, got shape {prob.shape}")
    h, w = prob.shape
    out_h, out_w = (h, w) if output_size is None else (int(output_size[0]), int(output_size[1]))
    scale = np.array([out_w / max(w, 1), out_h / max(h, 1)], dtype=np.float64)

    bitmap = (prob > binarize_thresh).astype(np.uint8)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c.reshape(-1, 2) for c in contours]
    # Largest regions first (by pixel extent: a one-pixel-wide contour has zero area).
    contours.sort(key=lambda c: -float(np.prod(c.max(axis=0) - c.min(axis=0) + 1)))
    contours = contours[: max(int(max_candidates), 0)]

    quads, polygons, scores = [], [], []
    for contour in contours:
        (_, (rw, rh), _) = cv2.minAreaRect(contour.astype(np.float32))
        if min(rw, rh) + 1 < min_size:  # +1: the contour runs through centres of pixels one pixel wide
            continue
        score = _mean_inside(prob, contour)
        if score < box_thresh:
            continue
        poly = contour.astype(np.float64) + 0.5
        if len(poly) < 3 or polygon_area(poly) <= 0:
            poly = cv2.boxPoints(cv2.minAreaRect(poly.astype(np.float32))).astype(np.float64)
        expanded = unclip(poly, unclip_ratio)
        if expanded is None or len(expanded) < 3:
            continue
        rect = cv2.minAreaRect(expanded.astype(np.float32))
        if min(rect[1]) < min_size:
            continue
        quad = order_quad(cv2.boxPoints(rect))
        quad = np.clip(quad * scale, 0, [out_w, out_h])
        expanded = np.clip(expanded * scale, 0, [out_w, out_h])
        quads.append(quad.astype(np.float32))
        polygons.append(expanded.astype(np.float32))
        scores.append(score)

    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return {
        "quads": [quads[i] for i in order],
        "polygons": [polygons[i] for i in order],
        "scores": np.asarray([scores[i] for i in order], dtype=np.float32),
    }
